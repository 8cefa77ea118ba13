# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Load a Qwen3-Omni checkpoint with its Talker for the voice recipe (bf16, or a 4-bit base)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig, Qwen3OmniMoeForConditionalGeneration

from ..loading import from_pretrained_quantized, linear_4bit_config
from ..quantized_experts import ExpertQuantizationConfig
from .lora import make_talker_experts_routable


def check_has_talker(config: PretrainedConfig, name: str = "the checkpoint") -> None:
    """Refuse a checkpoint without a Talker (thinker-only, or `enable_audio_output: false` such as the Thinking and
    Captioner variants)."""
    if config.model_type != "qwen3_omni_moe" or not getattr(config, "enable_audio_output", False):
        raise ValueError(
            f"{name} (model_type={config.model_type!r}, enable_audio_output="
            f"{getattr(config, 'enable_audio_output', None)}) has no Talker, so it cannot learn a voice: the Thinking "
            "and Captioner variants of Qwen3-Omni answer in text only. Use a checkpoint that speaks, such as "
            "Qwen/Qwen3-Omni-30B-A3B-Instruct (train the text of the others with train/sft.py)."
        )


# Kept in the compute dtype on a 4-bit base: the Talker's codec head, the code predictor (small, and its MLP weights
# can be LoRA parameter targets, which a bitsandbytes weight cannot be) and the vocoder.
UNQUANTIZED_MODULES = ("talker.codec_head", "talker.code_predictor", "code2wav")


def load_talker_model(
    model_name_or_path: str,
    *,
    load_in_4bit: bool = False,
    quantize_experts: bool | None = None,
    quantize_towers: bool = True,
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_use_double_quant: bool = True,
    **kwargs,
) -> Qwen3OmniMoeForConditionalGeneration:
    """Load a full Qwen3-Omni (Thinker, Talker, code2wav) after checking it has a Talker, with the Talker's experts
    made routable ([`make_talker_experts_routable`]).

    With `load_in_4bit` the base is a QLoRA one: every fused expert tensor (the Thinker's and the Talker's) in NF4 as
    it loads, unless `quantize_experts=False` (`quantize_experts=True` alone quantizes the experts only), and the
    `nn.Linear` layers through bitsandbytes, except the Thinker's LM head, the Talker's codec head, the code
    predictor, code2wav and, with `quantize_towers=False`, the Thinker's encoders. Other keyword arguments go
    to `from_pretrained`.
    """
    config = AutoConfig.from_pretrained(model_name_or_path, revision=kwargs.get("revision"))
    check_has_talker(config, model_name_or_path)
    quantize_experts = load_in_4bit if quantize_experts is None else quantize_experts
    model = from_pretrained_quantized(
        Qwen3OmniMoeForConditionalGeneration,
        model_name_or_path,
        quantization_config=linear_4bit_config(
            kwargs.get("dtype", "auto"),
            bnb_4bit_quant_type,
            bnb_4bit_use_double_quant,
            quantize_towers=quantize_towers,
            thinker_prefix="thinker.",
            keep_unquantized=UNQUANTIZED_MODULES,
        )
        if load_in_4bit
        else None,
        expert_quantization=ExpertQuantizationConfig(
            quant_type=bnb_4bit_quant_type, double_quant=bnb_4bit_use_double_quant
        )
        if quantize_experts
        else None,
        **kwargs,
    )
    make_talker_experts_routable(model)
    return model
