"""Loading the Qwen3-Omni Thinker for fine-tuning."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import bitsandbytes as bnb
import torch
from transformers import AutoConfig, BitsAndBytesConfig, PreTrainedModel, Qwen3OmniMoeThinkerForConditionalGeneration
from transformers.utils import logging

from .expert_offload import ExpertOffloader
from .lora_targets import TOWER_PREFIXES
from .quantized_experts import ExpertQuantizationConfig, quantize_experts_on_load


logger = logging.get_logger(__name__)

# `model_type` of a full checkpoint (thinker + talker + code2wav) and of a thinker-only one.
FULL_MODEL_TYPE = "qwen3_omni_moe"
THINKER_MODEL_TYPE = "qwen3_omni_moe_thinker"


def resolve_experts_implementation(requested: str | None = None) -> str:
    """The experts implementation to load the MoE layers with.

    Args:
        requested (`str`, *optional*):
            `"eager"`, `"grouped_mm"`, `"batched_mm"`, ... is returned as given. `None` or `"auto"` picks
            `"grouped_mm"` on a CUDA GPU that has its kernels (SM80+), and `"eager"` elsewhere, with a log line.
    """
    if requested not in (None, "auto"):
        return requested
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        return "grouped_mm"
    logger.warning("No SM80+ CUDA GPU for the grouped_mm experts kernels: loading the MoE experts with `eager`.")
    return "eager"


def load_thinker(
    model_name_or_path: str,
    *,
    dtype: str | torch.dtype = "auto",
    experts_implementation: str | None = None,
    attn_implementation: str | None = None,
    load_in_4bit: bool = False,
    quantize_experts: bool | None = None,
    quantize_towers: bool = True,
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_use_double_quant: bool = True,
    offload_experts: bool = False,
    quantization_config: BitsAndBytesConfig | None = None,
    device_map: str | dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Qwen3OmniMoeThinkerForConditionalGeneration:
    """Load the Thinker out of a full Qwen3-Omni checkpoint or a thinker-only one.

    From a full checkpoint only the `thinker.*` tensors are read: the talker and code2wav weights are unexpected keys
    that the lazy safetensors loader never materialises.

    Args:
        model_name_or_path (`str`):
            Hub id or local folder of a `qwen3_omni_moe` or `qwen3_omni_moe_thinker` checkpoint.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`):
            Dtype of the weights (`"auto"` keeps the checkpoint's).
        experts_implementation (`str`, *optional*):
            See [`resolve_experts_implementation`].
        attn_implementation (`str`, *optional*):
            `"sdpa"`, `"eager"`, `"flash_attention_2"`, ...; transformers' default when `None`.
        load_in_4bit (`bool`, *optional*, defaults to `False`):
            Load a 4-bit base (QLoRA): every `nn.Linear` layer but the LM head through bitsandbytes' `Linear4bit`
            (the audio and vision encoders' too, unless `quantize_towers=False`), and, unless
            `quantize_experts=False`, the fused experts as well (see `quantized_experts.py`). Works on a CPU and on
            CUDA.
        quantize_experts (`bool`, *optional*):
            Store the fused experts in 4 bits, quantized layer by layer while the checkpoint loads. Defaults to
            `load_in_4bit`; `True` without `load_in_4bit` quantizes the experts only.
        quantize_towers (`bool`, *optional*, defaults to `True`):
            With `load_in_4bit`, store the audio and vision encoders' `nn.Linear` layers in 4 bits as well, as
            transformers' and TRL's own QLoRA config does; `False` keeps them in `dtype` (about 1.7 GB more on
            30B-A3B).
        bnb_4bit_quant_type (`str`, *optional*, defaults to `"nf4"`):
            4-bit data type of the `Linear4bit` layers and the experts (`"nf4"` or `"fp4"`).
        bnb_4bit_use_double_quant (`bool`, *optional*, defaults to `True`):
            Double quantization (8-bit block scales) for the `Linear4bit` layers and the experts.
        offload_experts (`bool`, *optional*, defaults to `False`):
            Keep the 4-bit experts in pinned host memory and copy each layer's to the GPU one layer ahead of use (see
            `expert_offload.py`). Needs 4-bit experts; on a machine without CUDA it is accepted and does nothing.
        quantization_config (`BitsAndBytesConfig`, *optional*):
            A ready quantization config for the `nn.Linear` layers (overrides `load_in_4bit` for them).
        device_map (`str` or `dict`, *optional*):
            Passed to `from_pretrained`; a quantized base defaults to the current CUDA device (the CPU without one).
        revision (`str`, *optional*):
            Hub revision.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
    """
    check_qwen3_omni_checkpoint(model_name_or_path, revision, trust_remote_code)
    quantize_experts = load_in_4bit if quantize_experts is None else quantize_experts
    if offload_experts and not quantize_experts:
        raise ValueError(
            "offload_experts=True streams the 4-bit experts from host memory; it needs quantize_experts (on by default "
            "with --load_in_4bit). Add --load_in_4bit or --quantize_experts."
        )
    if load_in_4bit and quantization_config is None:
        quantization_config = linear_4bit_config(
            dtype, bnb_4bit_quant_type, bnb_4bit_use_double_quant, quantize_towers=quantize_towers
        )
    model = from_pretrained_quantized(
        Qwen3OmniMoeThinkerForConditionalGeneration,
        model_name_or_path,
        quantization_config=quantization_config,
        expert_quantization=(
            ExpertQuantizationConfig(quant_type=bnb_4bit_quant_type, double_quant=bnb_4bit_use_double_quant)
            if quantize_experts
            else None
        ),
        dtype=dtype,
        experts_implementation=resolve_experts_implementation(experts_implementation),
        attn_implementation=attn_implementation,
        device_map=device_map,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    if offload_experts:
        offload_experts_to_host(model)
    return model


def check_qwen3_omni_checkpoint(model_name_or_path: str, revision: str | None, trust_remote_code: bool) -> None:
    """Refuse a checkpoint that is neither a full Qwen3-Omni one nor a Thinker-only one, naming its model type."""
    config = AutoConfig.from_pretrained(model_name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if config.model_type not in (FULL_MODEL_TYPE, THINKER_MODEL_TYPE):
        raise ValueError(
            f"{model_name_or_path!r} has model_type={config.model_type!r}, not a Qwen3-Omni checkpoint "
            f"({FULL_MODEL_TYPE!r} or {THINKER_MODEL_TYPE!r}). Pass a Qwen3-Omni model such as "
            "Qwen/Qwen3-Omni-30B-A3B-Instruct."
        )


def offload_experts_to_host(model: PreTrainedModel) -> None:
    """Keep the model's 4-bit experts in pinned host memory, each layer's copied to the GPU one layer ahead of use;
    without CUDA they already live in host memory and nothing is done."""
    if torch.cuda.is_available():
        model._expert_offloader = ExpertOffloader(model, device=torch.device("cuda", torch.cuda.current_device()))
    else:
        logger.info("offload_experts: no CUDA device, the 4-bit experts already live in host memory (no-op).")


def from_pretrained_quantized(
    model_class: type[PreTrainedModel],
    model_name_or_path: str,
    *,
    quantization_config: BitsAndBytesConfig | None = None,
    expert_quantization: ExpertQuantizationConfig | None = None,
    device_map: str | dict | None = None,
    **kwargs,
) -> PreTrainedModel:
    """`model_class.from_pretrained` for training on a 4-bit base: the `nn.Linear` layers under `quantization_config`
    (bitsandbytes) and, with `expert_quantization`, every fused expert tensor stored in NF4 as it loads
    (`quantized_experts.quantize_experts_on_load`). A quantized base defaults to the current CUDA device (the CPU
    without one)."""
    if quantization_config is not None or expert_quantization is not None:
        device_map = device_map or ({"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu")
    loading = quantize_experts_on_load(expert_quantization) if expert_quantization else contextlib.nullcontext()
    with loading:
        model = model_class.from_pretrained(
            model_name_or_path, quantization_config=quantization_config, device_map=device_map, **kwargs
        )
    if quantization_config is not None:
        _keep_4bit_layers_off_the_cpu_inference_kernel(model)
    return model


def _keep_4bit_layers_off_the_cpu_inference_kernel(model: torch.nn.Module) -> None:
    """bitsandbytes 0.50 repacks a `Linear4bit` weight for its AVX512-BF16 CPU kernel at the first forward in eval mode
    without gradients. The repacking is one-way (a training forward after an evaluation then fails on the bias add) and
    fails outright unless `out_features` is a multiple of 32 and `in_features` of the block size (Qwen3-Omni's vision
    MLP is 1152 -> 4304 -> 1152). A model loaded for training keeps bitsandbytes' generic 4-bit path on the CPU."""
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def linear_4bit_config(
    dtype: str | torch.dtype = "auto",
    quant_type: str = "nf4",
    double_quant: bool = True,
    quantize_towers: bool = True,
    thinker_prefix: str = "",
    keep_unquantized: Sequence[str] = (),
) -> BitsAndBytesConfig:
    """The `BitsAndBytesConfig` for the `nn.Linear` layers of a QLoRA Thinker: all but the LM head (as transformers
    keeps the output embedding), and without the audio and vision encoders' when `quantize_towers=False`. The towers'
    convolutions are not `Linear` and stay in `dtype` either way. For a full model, `thinker_prefix` is where the
    Thinker sits (`"thinker."`) and `keep_unquantized` names further modules to keep in `dtype`."""
    compute_dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype), torch.bfloat16)
    # transformers matches the skipped names as module-name prefixes (or suffixes, which "lm_head" relies on)
    skipped_towers = [] if quantize_towers else [thinker_prefix + p.rstrip(".") for p in TOWER_PREFIXES.values()]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=["lm_head", *skipped_towers, *keep_unquantized],
    )
