# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""LoRA arguments of the recipes, checked where the command line is parsed: a rank or alpha that cannot train is
refused with the flag, the value and the fix, not met later as a `ZeroDivisionError` or an adapter that learns
nothing."""

from __future__ import annotations

from dataclasses import dataclass

from trl import ModelConfig


def check_lora_rank(flag: str, value: int | None) -> None:
    """Refuse a LoRA rank below 1 (`None` is "the default" and passes).

    Raises:
        ValueError: naming the flag, the value and the fix.
    """
    if value is not None and value < 1:
        raise ValueError(
            f"{flag} {value}: a LoRA rank is the number of dimensions of the update and must be at least 1 "
            f"(e.g. {flag} 16)."
        )


def check_lora_alpha(flag: str, value: float | None, rank_flag: str = "--lora_r") -> None:
    """Refuse a LoRA alpha of 0 or below: the update is scaled by alpha / rank, so 0 trains nothing."""
    if value is not None and value <= 0:
        raise ValueError(
            f"{flag} {value}: the LoRA update is scaled by {flag} / {rank_flag}, so it must be positive (commonly "
            f"twice the rank, e.g. {flag} 32 with {rank_flag} 16)."
        )


@dataclass
class LoraModelConfig(ModelConfig):
    """TRL's `ModelConfig` whose LoRA rank and alpha are checked when parsed (when `use_peft` is on)."""

    def __post_init__(self):
        super().__post_init__()
        if self.use_peft:
            check_lora_rank("--lora_r", self.lora_r)
            check_lora_alpha("--lora_alpha", self.lora_alpha)
