# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The Talker voice recipe's own arguments (`TalkerVoiceArguments`), checked when parsed."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...common.lora_arguments import check_lora_rank


PRESERVE_LOSSES = ("kl", "codes")


# Written next to the adapter and copied into the merge: the existing speakers the run kept (read_voice_preservation).
VOICE_PRESERVATION_NAME = "voice_preservation.json"


@dataclass
class TalkerVoiceArguments:
    """The Talker voice recipe's own options (TRL's `ScriptArguments` / `SFTConfig` / `ModelConfig` hold the rest)."""

    speaker_name: str | None = field(
        default=None,
        metadata={
            "help": "Name of the new voice: talker_config.speaker_id gains it and a trained codec-embedding "
            "row, so that generate(..., speaker=NAME) speaks with it."
        },
    )
    init_speaker: str = field(
        default="Ethan", metadata={"help": "Existing speaker whose codec-embedding row the new one starts from."}
    )
    adapt_speaker: str | None = field(
        default=None, metadata={"help": "Fine-tune this existing voice (its row trains) instead of adding one."}
    )
    preserve_speakers: str = field(
        default="all",
        metadata={
            "help": "Existing speakers kept speaking as the base does: 'all' (every speaker but the trained "
            "one), 'none' (the new voice may replace them), or comma-separated names. Each step also trains on "
            "the base Talker's own greedy codes for them (see docs/qwen3_omni.md)."
        },
    )
    preserve_weight: float = field(
        default=1.0, metadata={"help": "Weight of the preserved speakers' loss next to the new voice's (> 0)."}
    )
    preserve_loss: str = field(
        default="codes",
        metadata={
            "help": "Loss on the preserved speakers' base codes: 'codes' (cross-entropy on them) or 'kl' (to "
            "the frozen base's distributions, the adapter disabled: one more forward without gradients)."
        },
    )
    preserve_texts: str | None = field(
        default=None,
        metadata={
            "help": "Text file, one sentence a line, that the preserved speakers speak besides the clips' "
            "transcripts (default: the built-in PRESERVE_TEXTS, English and Chinese)."
        },
    )
    preserve_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Preserved-speaker examples added to every step's batch (default per_device_train_batch_size "
            "times the number of preserved speakers: each clip is balanced by one conversation spoken by every "
            "kept speaker)."
        },
    )
    preserve_max_frames: int | None = field(
        default=None,
        metadata={
            "help": "Longest base speech generated per preserved example, in codec frames (default twice the "
            "longest clip's); longer speech is cut there and its rest not trained."
        },
    )
    codec_name_or_path: str = field(
        default="kyutai/mimi", metadata={"help": "Mimi codec (Hub id or folder) the clips are encoded with."}
    )
    codes_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder of the cached Mimi codes (default OUTPUT_DIR/mimi_codes)."}
    )
    audio_column: str = field(default="audio", metadata={"help": "Column holding the audio (path or Audio)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the transcript."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Column holding a user prompt per clip (default: user_prompt_template)."}
    )
    user_prompt_template: str = field(
        default="Read this aloud: {text}",
        metadata={"help": "User turn of clips without a prompt; {text} is the transcript the assistant speaks."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System turn of every conversation."})
    max_duration: float = field(default=30.0, metadata={"help": "Clips longer than this (seconds) are skipped."})
    silence_threshold: float = field(
        default=1e-3, metadata={"help": "Clips whose peak amplitude is below this are skipped as silent."}
    )
    allow_mixed_sampling_rates: bool = field(
        default=False, metadata={"help": "Accept clips at several sampling rates (all are resampled to Mimi's)."}
    )
    cache_thinker_outputs: bool = field(
        default=True,
        metadata={
            "help": "Run the frozen Thinker once per clip before training and keep its outputs (False: run "
            "it, without gradients, at every step)."
        },
    )
    experts_implementation: str | None = field(
        default=None, metadata={"help": "MoE experts kernel of the Thinker: eager, grouped_mm, ..."}
    )
    lora_target_router: bool = field(default=True, metadata={"help": "LoRA on the Talker's routers."})
    lora_target_experts: bool = field(default=True, metadata={"help": "LoRA on the Talker's fused experts."})
    lora_target_code_predictor: bool = field(
        default=True, metadata={"help": "LoRA on the code predictor's attention projections."}
    )
    lora_target_code_predictor_mlp: bool = field(
        default=False,
        metadata={
            "help": "Also LoRA on the code predictor's MLP weights (W + dW: ~0.25x slower steps, more capacity)."
        },
    )
    lora_expert_r: int | None = field(default=None, metadata={"help": "LoRA rank of each expert (default lora_r)."})
    moe_lora_impl: str = field(
        default="routed",
        metadata={"help": "Forward of the expert LoRA: 'routed' (routed tokens only) or 'peft' (PEFT's wrapper)."},
    )

    def __post_init__(self):
        check_lora_rank("--lora_expert_r", self.lora_expert_r)
        for option in ("preserve_batch_size", "preserve_max_frames"):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise ValueError(f"--{option} must be at least 1, got {value}; leave it out for the default.")
        if self.preserve_loss not in PRESERVE_LOSSES:
            raise ValueError(f"--preserve_loss must be one of {PRESERVE_LOSSES}, got {self.preserve_loss!r}.")
        if not self.preserve_weight > 0:
            raise ValueError(
                f"--preserve_weight must be > 0, got {self.preserve_weight}; to let the new voice replace the "
                "existing speakers pass --preserve_speakers none instead."
            )
