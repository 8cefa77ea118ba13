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

import os

from peft import get_peft_model
from transformers import AutoConfig, AutoProcessor
from trl import ScriptArguments, TrlParser

from qwen_omni.common.clips import load_audio_text_rows, read_clips
from qwen_omni.common.hub import defer_hub_push, push_after_training
from qwen_omni.common.launching import (
    DistributedRunCallback,
    check_launch,
    check_output_dir,
    resolve_resume_checkpoint,
)
from qwen_omni.qwen3_omni.arguments import Qwen3OmniModelConfig, Qwen3OmniSFTConfig
from qwen_omni.qwen3_omni.expert_lora import apply_expert_lora, check_moe_lora_impl
from qwen_omni.qwen3_omni.loading import resolve_experts_implementation
from qwen_omni.qwen3_omni.peft_lora import silence_false_expert_rank_warning
from qwen_omni.qwen3_omni.talker_voice import (
    TalkerVoiceArguments,
    TalkerVoiceTrainer,
    add_speaker,
    build_examples,
    build_preserve_examples,
    build_talker_lora_config,
    cache_thinker_outputs,
    check_has_talker,
    load_talker_model,
    read_preserve_texts,
    resolve_preserved_speakers,
    resolve_speaker,
)
from qwen_omni.qwen3_omni.talker_voice.data import MimiCodec, encode_clips


def main(script_args, training_args, model_args, voice_args):
    check_output_dir(
        training_args.output_dir,
        {
            "--model_name_or_path": model_args.model_name_or_path,
            "--dataset_name": script_args.dataset_name,
            "--codec_name_or_path": voice_args.codec_name_or_path,
        },
    )
    launch = check_launch(training_args)
    if launch.fsdp_version is not None or launch.deepspeed:
        raise ValueError(
            "The Talker voice recipe runs in one process or as DDP (`torchrun --nproc_per_node N`, "
            "train/accelerate/multi_gpu.yaml, or train/accelerate/cpu_2proc.yaml with --use_cpu true): the Talker is "
            "small next to the frozen Thinker, and it is not sharded. Launch it without the FSDP / DeepSpeed config."
        )
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
    if model_args.load_in_8bit or model_args.offload_experts:
        raise ValueError(
            "The Talker voice recipe does not take --load_in_8bit or --offload_experts. For a smaller base use "
            "--load_in_4bit (4-bit experts and Linear layers of the Thinker and the Talker)."
        )
    if not model_args.use_peft:
        raise ValueError("The Talker voice recipe trains a LoRA adapter: drop --use_peft false.")
    check_moe_lora_impl(voice_args.moe_lora_impl)
    if training_args.ddp_find_unused_parameters is None:
        # every trainable tensor (LoRA factors, the speaker's row) takes part in every step: DDP need not search
        training_args.ddp_find_unused_parameters = False
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

    clips = read_clips(
        script_args.dataset_name,
        speaker=speaker,
        audio_column=voice_args.audio_column,
        text_column=voice_args.text_column,
        speaker_column=None,
        split=script_args.dataset_train_split,
        dataset_config=script_args.dataset_config,
    )
    prompts = None
    if voice_args.prompt_column:
        rows = load_audio_text_rows(
            script_args.dataset_name,
            voice_args.audio_column,
            voice_args.prompt_column,
            None,
            split=script_args.dataset_train_split,
            dataset_config=script_args.dataset_config,
            allow_missing_text=True,
        )
        prompts = [row["text"] or None for row in rows]
    codec = MimiCodec.from_pretrained(voice_args.codec_name_or_path, model.config)
    # the main process encodes and caches the clips; the other processes then read its cache
    with training_args.main_process_first(desc="Mimi codes of the clips"):
        encoded, _ = encode_clips(
            clips,
            codec,
            voice_args.codes_cache_dir or os.path.join(training_args.output_dir, "mimi_codes"),
            prompts=prompts,
            max_duration=voice_args.max_duration,
            silence_threshold=voice_args.silence_threshold,
            allow_mixed_sampling_rates=voice_args.allow_mixed_sampling_rates,
        )
    examples = build_examples(encoded, processor, voice_args.user_prompt_template, voice_args.system_prompt)
    if voice_args.cache_thinker_outputs:
        cache_thinker_outputs(model, examples)
    # the base Talker's own speech for the preserved speakers, generated before the adapter exists
    preserve_max_frames = voice_args.preserve_max_frames or 2 * max(len(clip.codes) for clip in encoded)
    preserve_examples = (
        build_preserve_examples(
            model,
            processor,
            examples,
            preserve_texts,
            preserved,
            preserve_max_frames,
            voice_args.user_prompt_template,
            voice_args.system_prompt,
        )
        if preserved
        else []
    )
    preserve_batch_size = voice_args.preserve_batch_size or training_args.per_device_train_batch_size * len(preserved)
    voice_preservation = {
        "speaker_name": speaker,
        "preserved_speakers": preserved,
        "replaced_speakers": sorted(set(config.talker_config.speaker_id) - set(preserved) - {speaker}),
        "preserve_weight": voice_args.preserve_weight,
        "preserve_loss": voice_args.preserve_loss,
        "preserve_batch_size": preserve_batch_size if preserved else 0,
        "preserve_max_frames": preserve_max_frames if preserved else 0,
        "num_preserve_texts": len(preserve_texts),
        "num_preserve_examples": len(preserve_examples),
    }

    add_speaker(model, speaker, codec_id, init_id)
    model.requires_grad_(False)
    lora_config = build_talker_lora_config(
        model,
        [codec_id],
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        expert_r=voice_args.lora_expert_r,
        target_router=voice_args.lora_target_router,
        target_experts=voice_args.lora_target_experts,
        target_code_predictor=voice_args.lora_target_code_predictor,
        target_code_predictor_mlp=voice_args.lora_target_code_predictor_mlp,
        use_rslora=model_args.use_rslora,
    )
    with silence_false_expert_rank_warning():
        peft_model = get_peft_model(model, lora_config)
    apply_expert_lora(peft_model, voice_args.moe_lora_impl)
    peft_model.print_trainable_parameters()

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
