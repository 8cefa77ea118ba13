# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The steps of `train/talker_voice_sft.py`, each one call: check the run, encode the clips, build the preserved
speakers' examples and their record, and wrap the model in the voice LoRA."""

from __future__ import annotations

import os

from peft import PeftModel, get_peft_model
from transformers import Qwen3OmniMoeForConditionalGeneration

from ...common.clips import load_audio_text_rows, read_clips
from ...common.launching import check_launch
from ..expert_lora import apply_expert_lora, check_moe_lora_impl
from ..peft_lora import silence_false_expert_rank_warning
from .arguments import TalkerVoiceArguments
from .data import EncodedClip, MimiCodec, encode_clips
from .examples import TalkerVoiceExample
from .lora import build_talker_lora_config
from .preservation import build_preserve_examples, default_preserve_batch_size
from .speakers import add_speaker


def check_voice_run(training_args, model_args, voice_args: TalkerVoiceArguments) -> None:
    """Refuse, before any work, what the recipe cannot honour: a sharded launch, 8-bit or offloaded experts, a full
    fine-tune, an unknown expert-LoRA implementation. DDP is told every trainable tensor takes part in every step."""
    launch = check_launch(training_args)
    if launch.fsdp_version is not None or launch.deepspeed:
        raise ValueError(
            "The Talker voice recipe runs in one process or as DDP (`torchrun --nproc_per_node N`, "
            "train/accelerate/multi_gpu.yaml, or train/accelerate/cpu_2proc.yaml with --use_cpu true): the Talker is "
            "small next to the frozen Thinker, and it is not sharded. Launch it without the FSDP / DeepSpeed config."
        )
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


def encode_voice_clips(script_args, training_args, voice_args: TalkerVoiceArguments, speaker: str, config):
    """The speaker's clips (with their prompts when `--prompt_column` names them) as Mimi codes, encoded by the main
    process into the cache (`--codes_cache_dir`, default OUTPUT_DIR/mimi_codes) and read from it by the others."""
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
    codec = MimiCodec.from_pretrained(voice_args.codec_name_or_path, config)
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
    return encoded


def prepare_preservation(
    model: Qwen3OmniMoeForConditionalGeneration,
    processor,
    examples: list[TalkerVoiceExample],
    encoded: list[EncodedClip],
    speaker: str,
    preserved: dict[str, int],
    preserve_texts: list[str],
    voice_args: TalkerVoiceArguments,
    per_device_batch_size: int,
) -> tuple[list[TalkerVoiceExample], int, dict]:
    """The preserved speakers' examples (the base Talker's own greedy speech, generated before the adapter exists),
    how many join each step (`--preserve_batch_size`, default the batch times the kept speakers) and the record
    written as `voice_preservation.json`."""
    max_frames = voice_args.preserve_max_frames or 2 * max(len(clip.codes) for clip in encoded)
    preserve_examples = []
    if preserved:
        preserve_examples = build_preserve_examples(
            model,
            processor,
            examples,
            preserve_texts,
            preserved,
            max_frames,
            voice_args.user_prompt_template,
            voice_args.system_prompt,
        )
    batch_size = voice_args.preserve_batch_size or default_preserve_batch_size(per_device_batch_size, len(preserved))
    record = {
        "speaker_name": speaker,
        "preserved_speakers": preserved,
        "replaced_speakers": sorted(set(model.config.talker_config.speaker_id) - set(preserved) - {speaker}),
        "preserve_weight": voice_args.preserve_weight,
        "preserve_loss": voice_args.preserve_loss,
        "preserve_batch_size": batch_size if preserved else 0,
        "preserve_max_frames": max_frames if preserved else 0,
        "num_preserve_texts": len(preserve_texts),
        "num_preserve_examples": len(preserve_examples),
    }
    return preserve_examples, batch_size, record


def build_voice_peft_model(
    model: Qwen3OmniMoeForConditionalGeneration,
    speaker: str,
    codec_id: int,
    init_id: int | None,
    model_args,
    voice_args: TalkerVoiceArguments,
) -> PeftModel:
    """Add the speaker's row, freeze the model and wrap it in the voice LoRA ([`build_talker_lora_config`], the
    experts' LoRA by `--moe_lora_impl`)."""
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
    return peft_model
