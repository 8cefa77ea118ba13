# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The one choice of the router / expert LoRA forward (`--moe_lora_impl`), for the Thinker and the Talker recipes:
`"routed"` gives PEFT's wrappers the routed-token forward ([`apply_routed_lora`]), `"peft"` keeps PEFT's own forward
made safe on 4-bit experts ([`apply_peft_lora`]). Both keep PEFT's parameters and adapter files."""

from __future__ import annotations

from torch import nn
from transformers.utils import logging

from .peft_lora import apply_peft_lora
from .routed_lora import apply_routed_lora


logger = logging.get_logger(__name__)

MOE_LORA_IMPLEMENTATIONS = ("routed", "peft")


def check_moe_lora_impl(implementation: str) -> str:
    """`implementation` if it names one of [`MOE_LORA_IMPLEMENTATIONS`], else a `ValueError` naming the choices."""
    if implementation not in MOE_LORA_IMPLEMENTATIONS:
        raise ValueError(
            f"moe_lora_impl={implementation!r} is not one of {MOE_LORA_IMPLEMENTATIONS}: pass --moe_lora_impl routed "
            "(the routed-token forward, the default) or --moe_lora_impl peft (PEFT's own wrapper forward)."
        )
    return implementation


def apply_expert_lora(model: nn.Module, implementation: str) -> int:
    """Give the router / expert LoRA wrappers of a PEFT model the chosen forward; returns how many were converted."""
    if check_moe_lora_impl(implementation) == "routed":
        converted = apply_routed_lora(model)
        logger.info(f"Routed-token LoRA forward on {converted} router/expert parameter wrappers.")
    else:
        converted = apply_peft_lora(model)
        logger.info(f"PEFT's LoRA forward on {converted} router/expert parameter wrappers.")
    return converted
