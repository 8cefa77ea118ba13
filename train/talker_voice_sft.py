"""Teach Qwen3-Omni a voice: LoRA on the Talker (attention, MoE router and experts) and its code predictor, from one
speaker's clips and transcripts, teacher-forced as `generate` runs the Talker.

    accelerate launch train/talker_voice_sft.py --config train/configs/talker_voice.yaml \
        --model_name_or_path Qwen/Qwen3-Omni-30B-A3B-Instruct --dataset_name DIR --speaker_name nova --output_dir out
    python train/merge.py --adapter out --output_dir out-merged
    # then: model.generate(**inputs, speaker="nova") on out-merged

The clips are read in every form the Omni voice recipe reads (metadata folder, JSONL/CSV, LibriTTS tree, `datasets`
folder or Hub id) and encoded once with Mimi (`--codec_name_or_path kyutai/mimi`) into OUTPUT_DIR/mimi_codes (or
`--codes_cache_dir`). Every TRL/Trainer flag works (`TrlParser` over `ScriptArguments`, `SFTConfig`, `ModelConfig`,
plus `TalkerVoiceArguments`); `talker_loss` and `code_predictor_loss` are logged separately
(`--report_to tensorboard`).

The existing speakers keep speaking as the base (`--preserve_speakers all`, the default; `none` lets the new voice
replace them): before training the base Talker speaks each clip's conversation and `--preserve_texts` as each of them
(greedy), and every step trains on those codes next to the clips (`preserve_talker_loss`,
`preserve_code_predictor_loss`, weight `--preserve_weight`). See docs/qwen3_omni.md.
"""

from transformers import AutoConfig, AutoProcessor, set_seed
from trl import ScriptArguments, TrlParser

from qwen_omni.common.hub import defer_hub_push, push_after_training
from qwen_omni.common.launching import DistributedRunCallback, check_output_dir, resolve_resume_checkpoint
from qwen_omni.qwen3_omni.arguments import Qwen3OmniModelConfig, Qwen3OmniSFTConfig
from qwen_omni.qwen3_omni.loading import resolve_experts_implementation
from qwen_omni.qwen3_omni.talker_voice import (
    TalkerVoiceArguments,
    TalkerVoiceTrainer,
    build_examples,
    cache_thinker_outputs,
    check_has_talker,
    load_talker_model,
    read_preserve_texts,
    resolve_preserved_speakers,
    resolve_speaker,
)
from qwen_omni.qwen3_omni.talker_voice.recipe import (
    build_voice_peft_model,
    check_voice_run,
    encode_voice_clips,
    prepare_preservation,
)


def main(script_args, training_args, model_args, voice_args):
    inputs = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--dataset_name": script_args.dataset_name,
        "--codec_name_or_path": voice_args.codec_name_or_path,
    }
    check_output_dir(training_args.output_dir, inputs)
    check_voice_run(training_args, model_args, voice_args)
    resume_checkpoint = resolve_resume_checkpoint(training_args)  # before the clips and the model are loaded
    name_or_path, revision = model_args.model_name_or_path, model_args.model_revision
    config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    check_has_talker(config, name_or_path)
    # the speakers and the preservation texts are checked before any work
    speaker, codec_id, init_id = resolve_speaker(
        config, voice_args.speaker_name, voice_args.init_speaker, voice_args.adapt_speaker
    )
    preserved = resolve_preserved_speakers(config, voice_args.preserve_speakers, speaker)
    preserve_texts = read_preserve_texts(voice_args.preserve_texts) if preserved else []
    repo_id = defer_hub_push(training_args)  # checked before training, published after it

    model = load_talker_model(
        name_or_path,
        **model_args.quantization_kwargs(),
        revision=revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        experts_implementation=resolve_experts_implementation(voice_args.experts_implementation),
    )
    processor = AutoProcessor.from_pretrained(name_or_path, revision=revision)
    encoded = encode_voice_clips(script_args, training_args, voice_args, speaker, model.config)
    examples = build_examples(encoded, processor, voice_args.user_prompt_template, voice_args.system_prompt)
    if voice_args.cache_thinker_outputs:
        cache_thinker_outputs(model, examples)
    preserve_examples, preserve_batch_size, voice_preservation = prepare_preservation(
        model,
        processor,
        examples,
        encoded,
        speaker,
        preserved,
        preserve_texts,
        voice_args,
        training_args.per_device_train_batch_size,
    )
    set_seed(training_args.seed)  # PEFT draws the LoRA factors' init: --seed makes the run reproducible
    peft_model = build_voice_peft_model(model, speaker, codec_id, init_id, model_args, voice_args)

    trainer = TalkerVoiceTrainer(
        model=peft_model,
        args=training_args,
        train_dataset=examples,
        processing_class=processor,
        speaker_codec_id=codec_id,
        talker_voice_config={"name": speaker, "codec_id": codec_id, "init_id": init_id},
        preserve_examples=preserve_examples,
        preserve_batch_size=preserve_batch_size,
        preserve_weight=voice_args.preserve_weight,
        preserve_loss=voice_args.preserve_loss,
        voice_preservation=voice_preservation,
    )
    trainer.add_callback(DistributedRunCallback())
    trainer.train(resume_from_checkpoint=resume_checkpoint)
    trainer.save_model(training_args.output_dir)
    push_after_training(
        training_args.output_dir,
        repo_id,
        training_args,
        base_model=name_or_path,
        verify=False,
        datasets=[script_args.dataset_name],
        commit_message=f"Talker voice adapter: speaker {speaker!r}",
    )
    return trainer


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, Qwen3OmniSFTConfig, Qwen3OmniModelConfig, TalkerVoiceArguments))
    main(*parser.parse_args_and_config())
