# Copyright 2025 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Training memory of a Qwen3-Omni Thinker LoRA / QLoRA run, from the checkpoint's config alone.

The Thinker is built on the meta device (no weight is read or allocated), the same `build_lora_config` is applied with
PEFT (also on the meta device), and every tensor is priced the way training stores it:

- weights: the checkpoint dtype; under `quantize_experts` the fused experts at [`nf4_storage_bytes`] (the exact bytes
  `quantized_experts.py` keeps); under `load_in_4bit` every `nn.Linear` layer but the LM head (bitsandbytes'
  `Linear4bit`; the towers' only with `quantize_towers`) at the same NF4 price; with `offload_experts` the experts leave the device except for two layers' worth
  (the layer computing and the one being prefetched), and are reported as host memory;
- adapter: the LoRA parameters in fp32 (PEFT's `autocast_adapter_dtype`, TRL's default);
- gradients: one fp32 gradient per adapter parameter;
- optimizer state: AdamW's two fp32 moments and its fp32 `step` tensor per parameter, or bitsandbytes' 8-bit AdamW
  (uint8 moments plus one fp32 scale per 256 values, 32-bit moments for tensors under 4096 values);
- activations, per sequence length (an estimate, not part of the static total): with gradient checkpointing the
  decoder layers' inputs plus one layer's forward and backward working set, and the LM head's fp32 logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from peft import get_peft_model
from torch import nn
from transformers import PretrainedConfig, Qwen3OmniMoeThinkerForConditionalGeneration

from .lora_targets import TEXT_MODEL_PREFIX, TOWER_PREFIXES, build_lora_config
from .peft_lora import silence_false_expert_rank_warning
from .quantized_experts import EXPERT_PARAMETER_NAMES, ExpertQuantizationConfig, is_fused_experts, nf4_storage_bytes


GB = 1e9
# bitsandbytes' 8-bit optimizers: blockwise scales of 256 values, and 32-bit state below this many values
BNB_8BIT_BLOCKSIZE = 256
BNB_8BIT_MIN_SIZE = 4096
# bitsandbytes' `Linear4bit` keeps a 16-value fp32 code book of its own in each layer's quantization state
LINEAR_4BIT_CODE_BYTES = 16 * 4
EIGHT_BIT_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adamw_torch_8bit")
# Sizes and counts of the Thinker's parts that must be at least 1 for the model to exist; any other integer of these
# configs must not be negative (0 is meaningful for some: no shared expert, no feed-forward chunking)
REQUIRED_SIZES = {
    "text_config": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "decoder_sparse_step",
    ),
    "audio_config": (
        "num_mel_bins",
        "d_model",
        "encoder_layers",
        "encoder_attention_heads",
        "encoder_ffn_dim",
        "output_dim",
        "downsample_hidden_size",
    ),
    "vision_config": (
        "depth",
        "hidden_size",
        "num_heads",
        "intermediate_size",
        "out_hidden_size",
        "in_channels",
        "patch_size",
        "temporal_patch_size",
        "spatial_merge_size",
    ),
}


@dataclass
class MemoryEstimate:
    """Bytes of each part of a training run on one device (see the module docstring for what each counts)."""

    weights: int
    adapter: int
    gradients: int
    optimizer: int
    host_offloaded: int = 0
    activations: dict[int, int] = field(default_factory=dict)
    parameters: int = 0
    trainable_parameters: int = 0

    @property
    def static_total(self) -> int:
        """Weights + adapter + gradients + optimizer state on the device (no activations)."""
        return self.weights + self.adapter + self.gradients + self.optimizer

    def format(self) -> str:
        """The report `train/sft.py --estimate_memory` prints, in GB (1e9 bytes), ending with `static total: N GB`."""
        lines = [
            f"parameters: {self.parameters / 1e9:.2f}B, trainable (LoRA): {self.trainable_parameters / 1e6:.1f}M",
            f"weights: {self.weights / GB:.2f} GB",
        ]
        if self.host_offloaded:
            lines.append(f"experts offloaded to host memory: {self.host_offloaded / GB:.2f} GB")
        lines += [
            f"adapter: {self.adapter / GB:.2f} GB",
            f"gradients: {self.gradients / GB:.2f} GB",
            f"optimizer state: {self.optimizer / GB:.2f} GB",
        ]
        lines += [
            f"activations at sequence length {length} (estimate): {size / GB:.2f} GB"
            for length, size in sorted(self.activations.items())
        ]
        lines.append(f"static total: {self.static_total / GB:.2f} GB")
        return "\n".join(lines)


def check_thinker_config(config: PretrainedConfig) -> None:
    """Refuse a config no Thinker can be built from: a size or count of [`REQUIRED_SIZES`] below 1, any other integer
    of the text, audio or vision config below 0, or more experts per token than experts.

    Raises:
        ValueError: naming the config entry, its value and the fix.
    """
    thinker_config = getattr(config, "thinker_config", config)
    prefix = "thinker_config." if thinker_config is not config else ""
    for part, required in REQUIRED_SIZES.items():
        sub_config = getattr(thinker_config, part, None)
        if sub_config is None:
            continue
        for name, value in sub_config.to_dict().items():
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            least = 1 if name in required else 0
            if value < least:
                raise ValueError(
                    f"{prefix}{part}.{name} = {value} in the checkpoint's config: a Qwen3-Omni Thinker needs at least "
                    f"{least}, so there is no model to estimate. Correct it in config.json."
                )
    text_config = thinker_config.text_config
    if text_config.num_experts_per_tok > text_config.num_experts:
        raise ValueError(
            f"{prefix}text_config.num_experts_per_tok = {text_config.num_experts_per_tok} in the checkpoint's config, "
            f"more than its num_experts = {text_config.num_experts}: each token is routed to that many of the "
            "experts. Correct it in config.json."
        )


def thinker_on_meta(config: PretrainedConfig, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The Thinker of a full (`qwen3_omni_moe`) or thinker-only config, built on the meta device in `dtype`."""
    thinker_config = getattr(config, "thinker_config", config)
    with torch.device("meta"):
        return Qwen3OmniMoeThinkerForConditionalGeneration._from_config(thinker_config, dtype=dtype)


def _is_expert_tensor(module: nn.Module, name: str) -> bool:
    return name in EXPERT_PARAMETER_NAMES and is_fused_experts(module)


def optimizer_state_bytes(parameters: list[torch.Tensor], optim: str = "adamw_torch") -> int:
    """Bytes of AdamW's state for `parameters` (`optim` as in `TrainingArguments.optim`)."""
    total = 0
    for parameter in parameters:
        numel = parameter.numel()
        if optim in EIGHT_BIT_OPTIMIZERS and numel >= BNB_8BIT_MIN_SIZE:
            total += 2 * numel + 2 * 4 * math.ceil(numel / BNB_8BIT_BLOCKSIZE)
        elif optim in EIGHT_BIT_OPTIMIZERS:
            total += 2 * 4 * numel
        elif optim.startswith("adamw"):
            total += 2 * numel * parameter.element_size() + 4  # exp_avg, exp_avg_sq, and the fp32 `step` tensor
        else:
            raise ValueError(f"optim={optim!r}: the memory estimate knows AdamW (torch) and the 8-bit AdamW variants.")
    return total


def activation_bytes(
    text_config: PretrainedConfig,
    sequence_length: int,
    batch_size: int = 1,
    gradient_checkpointing: bool = True,
    dtype_bytes: int = 2,
    expert_rank: int = 0,
) -> int:
    """An estimate of the activations of one training micro-batch of the Thinker's text model (text tokens only)."""
    tokens = sequence_length * batch_size
    hidden, layers = text_config.hidden_size, text_config.num_hidden_layers
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    top_k, intermediate = text_config.num_experts_per_tok, text_config.moe_intermediate_size
    attention = tokens * (
        (2 * heads + 2 * kv_heads) * head_dim + 4 * hidden
    )  # q, k, v, attention out, norms, residual
    routed = tokens * top_k * (2 * hidden + 4 * intermediate + 2 * expert_rank)  # gathered rows, gate_up, act, down
    router = tokens * text_config.num_experts * 4 // dtype_bytes  # fp32 router softmax
    per_layer = (attention + routed + router) * dtype_bytes
    logits = tokens * text_config.vocab_size * 4  # fp32 log-probabilities of the LM head
    if gradient_checkpointing:
        # every layer's input is kept; one layer is recomputed at a time and holds its forward and its gradients
        return layers * tokens * hidden * dtype_bytes + 2 * per_layer + logits
    return layers * per_layer + logits


def estimate_training_memory(
    config: PretrainedConfig,
    *,
    dtype: torch.dtype = torch.bfloat16,
    load_in_4bit: bool = False,
    quantize_experts: bool | None = None,
    quantize_towers: bool = True,
    expert_quantization: ExpertQuantizationConfig | None = None,
    offload_experts: bool = False,
    use_peft: bool = True,
    lora_kwargs: dict | None = None,
    optim: str = "adamw_torch",
    sequence_lengths: tuple[int, ...] = (1024, 4096, 16384),
    batch_size: int = 1,
    gradient_checkpointing: bool = True,
) -> MemoryEstimate:
    """Price a LoRA / QLoRA run of the Thinker of `config` on one device (see the module docstring). A config no
    Thinker can be built from is refused ([`check_thinker_config`]).

    Args:
        config (`PretrainedConfig`): a `qwen3_omni_moe` config or a thinker-only one.
        dtype (`torch.dtype`): dtype of the unquantized weights.
        load_in_4bit (`bool`): bitsandbytes `Linear4bit` for every `nn.Linear` layer but the LM head.
        quantize_experts (`bool`, *optional*): 4-bit fused experts (default: `load_in_4bit`).
        quantize_towers (`bool`): with `load_in_4bit`, the audio and vision encoders' `nn.Linear` layers too.
        expert_quantization (`ExpertQuantizationConfig`, *optional*): block size and double quantization.
        offload_experts (`bool`): 4-bit experts in host memory, two layers' worth on the device.
        use_peft (`bool`): LoRA (otherwise full fine-tuning: every parameter trains).
        lora_kwargs (`dict`, *optional*): keyword arguments of [`build_lora_config`] (`r`, `lora_alpha`, `expert_r`,
            `target_router`, `target_experts`, `towers`, ...).
        optim (`str`): `TrainingArguments.optim`.
        sequence_lengths (`tuple[int, ...]`): lengths to estimate the activations at.
        batch_size (`int`): micro-batch size per device.
        gradient_checkpointing (`bool`): whether the decoder layers are checkpointed.
    """
    quantize_experts = load_in_4bit if quantize_experts is None else quantize_experts
    expert_quantization = expert_quantization or ExpertQuantizationConfig()
    lora_kwargs = lora_kwargs or {}
    if offload_experts and not quantize_experts:
        raise ValueError("offload_experts needs quantize_experts (4-bit experts), as in load_thinker.")
    check_thinker_config(config)
    model = thinker_on_meta(config, dtype)
    weights, experts, largest_layer_experts = stored_weight_bytes(
        model, load_in_4bit, quantize_experts, quantize_towers, expert_quantization
    )
    parameters = sum(parameter.numel() for parameter in model.parameters())
    trainable = trainable_tensors(model, lora_kwargs) if use_peft else list(model.parameters())
    adapter = sum(p.numel() * p.element_size() for p in trainable) if use_peft else 0
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    host = 0
    if offload_experts:
        host = experts
        weights -= experts - 2 * largest_layer_experts
    text_config = getattr(config, "thinker_config", config).text_config
    expert_rank = (lora_kwargs.get("expert_r") or lora_kwargs.get("r", 0)) if use_peft else 0
    return MemoryEstimate(
        weights=weights,
        adapter=adapter,
        gradients=gradients,
        optimizer=optimizer_state_bytes(trainable, optim),
        host_offloaded=host,
        activations={
            length: activation_bytes(
                text_config, length, batch_size, gradient_checkpointing, torch.finfo(dtype).bits // 8, expert_rank
            )
            for length in sequence_lengths
        },
        parameters=parameters,
        trainable_parameters=sum(p.numel() for p in trainable),
    )


def stored_weight_bytes(
    model: nn.Module,
    load_in_4bit: bool,
    quantize_experts: bool,
    quantize_towers: bool,
    expert_quantization: ExpertQuantizationConfig,
) -> tuple[int, int, int]:
    """`(weights and buffers, 4-bit experts, the largest layer's 4-bit experts)` in bytes, as the model is stored."""
    quantized_prefixes = (TEXT_MODEL_PREFIX, *(TOWER_PREFIXES.values() if quantize_towers else ()))
    weights = experts = largest_layer_experts = 0
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        quantize_linear = load_in_4bit and isinstance(module, nn.Linear) and prefix.startswith(quantized_prefixes)
        layer_experts = 0
        for name, parameter in module.named_parameters(recurse=False):
            if quantize_experts and _is_expert_tensor(module, name):
                size = nf4_storage_bytes(parameter.numel(), expert_quantization)
                experts += size
                layer_experts += size
            elif quantize_linear and name == "weight":
                size = nf4_storage_bytes(parameter.numel(), expert_quantization) + LINEAR_4BIT_CODE_BYTES
            else:
                size = parameter.numel() * parameter.element_size()
            weights += size
        largest_layer_experts = max(largest_layer_experts, layer_experts)
    for buffer in model.buffers():
        weights += buffer.numel() * buffer.element_size()
    return weights, experts, largest_layer_experts


def trainable_tensors(model: nn.Module, lora_kwargs: dict) -> list[torch.Tensor]:
    """The LoRA adapter's tensors on the meta device, in fp32: PEFT keeps the adapter in fp32 on a bf16 base
    (autocast_adapter_dtype), as TRL's SFTTrainer leaves it."""
    with torch.device("meta"), silence_false_expert_rank_warning():
        peft_model = get_peft_model(model, build_lora_config(model, **lora_kwargs))
    return [
        torch.empty(p.shape, dtype=torch.float32, device="meta") for p in peft_model.parameters() if p.requires_grad
    ]


def estimate_for_run(model_args, training_args, omni_args) -> MemoryEstimate:
    """[`estimate_training_memory`] for the options `train/sft.py` parsed (`Qwen3OmniModelConfig`,
    `Qwen3OmniSFTConfig`, `Qwen3OmniArguments`), from the checkpoint's config only."""
    from transformers import AutoConfig

    from .lora_targets import lora_config_kwargs

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "bfloat16"
    max_length = training_args.max_length or 4096
    return estimate_training_memory(
        config,
        dtype=getattr(torch, dtype),
        load_in_4bit=model_args.load_in_4bit,
        quantize_experts=model_args.quantize_experts,
        quantize_towers=model_args.quantize_towers,
        expert_quantization=ExpertQuantizationConfig(
            quant_type=model_args.bnb_4bit_quant_type, double_quant=model_args.use_bnb_nested_quant
        ),
        offload_experts=model_args.offload_experts,
        use_peft=model_args.use_peft,
        lora_kwargs=lora_config_kwargs(model_args, omni_args),
        optim=str(getattr(training_args.optim, "value", training_args.optim)),
        sequence_lengths=tuple(sorted({1024, max_length, 4 * max_length})),
        batch_size=training_args.per_device_train_batch_size,
        gradient_checkpointing=training_args.gradient_checkpointing,
    )
