"""Loading the Qwen3-Omni Thinker for fine-tuning."""

from __future__ import annotations

import torch
from transformers import AutoConfig, BitsAndBytesConfig, Qwen3OmniMoeThinkerForConditionalGeneration
from transformers.utils import is_bitsandbytes_available, logging


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
            Load a 4-bit NF4 base through bitsandbytes (QLoRA). Needs a CUDA GPU. The fused experts are
            `nn.Parameter`s, which bitsandbytes leaves in `dtype`; only the `nn.Linear` layers are quantized.
        quantization_config (`BitsAndBytesConfig`, *optional*):
            A ready quantization config (overrides `load_in_4bit`).
        device_map (`str` or `dict`, *optional*):
            Passed to `from_pretrained`; a quantized base defaults to the current CUDA device.
        revision (`str`, *optional*):
            Hub revision.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
    """
    config = AutoConfig.from_pretrained(model_name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if config.model_type not in (FULL_MODEL_TYPE, THINKER_MODEL_TYPE):
        raise ValueError(
            f"{model_name_or_path!r} has model_type={config.model_type!r}, not a Qwen3-Omni checkpoint "
            f"({FULL_MODEL_TYPE!r} or {THINKER_MODEL_TYPE!r}). Pass a Qwen3-Omni model such as "
            "Qwen/Qwen3-Omni-30B-A3B-Instruct."
        )
    if load_in_4bit and quantization_config is None:
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            # The towers stay frozen and unquantized: they are small and their convolutions are not Linear anyway.
            llm_int8_skip_modules=["lm_head", "audio_tower", "visual"],
        )
    if quantization_config is not None:
        if not torch.cuda.is_available():
            raise ValueError(
                "load_in_4bit=True (QLoRA) needs a CUDA GPU for the bitsandbytes 4-bit kernels, and none is visible. "
                "Drop --load_in_4bit to fine-tune the bf16/fp32 base on this machine."
            )
        if not is_bitsandbytes_available():
            raise ImportError("load_in_4bit=True needs bitsandbytes: `pip install bitsandbytes` (or `.[gpu]`).")
        device_map = device_map or {"": torch.cuda.current_device()}
    return Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(
        model_name_or_path,
        dtype=dtype,
        experts_implementation=resolve_experts_implementation(experts_implementation),
        attn_implementation=attn_implementation,
        quantization_config=quantization_config,
        device_map=device_map,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
