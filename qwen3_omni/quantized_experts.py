# Copyright 2025 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""4-bit (NF4) storage for fused MoE experts, dequantized per expert inside the forward.

transformers 5 stores the experts of a MoE layer as two fused 3-D parameters (`gate_up_proj` (E, 2I, H) and
`down_proj` (E, H, I)), which bitsandbytes' `Linear4bit` replacement never sees: with `BitsAndBytesConfig` alone the
experts, ~80% of Qwen3-Omni-30B-A3B's weights, stay in bf16. Here each fused expert tensor is quantized with
`bitsandbytes.functional.quantize_4bit` (NF4 or FP4, blocks of `blocksize` values, optional double quantization of
the block scales) and kept as a `torch.nn.utils.parametrize` parametrization of the experts module, as bitsandbytes'
own `replace_parameter_4bit` does:

- `experts.gate_up_proj` still reads as the full (E, out, in) tensor (dequantized on access, cached during one forward
  of the module), so transformers' own experts forwards and PEFT's `ParamWrapper` (which stacks its `W + dW`
  parametrization on top) work unchanged on 4-bit experts;
- the routed-token LoRA forward (`routed_lora.py`) never builds the stack: it dequantizes only the experts a batch hits,
  one at a time, through [`nf4_expert_linear`], whose backward dequantizes again instead of keeping the bf16 weight in
  the autograd graph, so a layer's graph holds 4-bit bytes only.

The blocks of one expert never straddle the next (every expert's element count must be a multiple of `blocksize`),
so expert `e` is the contiguous slice `e` of the packed data and of the block scales.

Loading: [`quantize_experts_on_load`] quantizes each fused tensor the moment transformers assigns it to its module
(a parameter-registration hook), so while a checkpoint loads, host memory holds the quantized model plus about one
layer's bf16 experts. [`quantize_experts`] does the same on a model already in memory. Both work on any transformers
module built with `@use_experts_implementation` and gated, fused experts (the Thinker's text model, the Talker).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import bitsandbytes.functional as bnb_functional
import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers.integrations import moe as hf_moe
from transformers.utils import logging


logger = logging.get_logger(__name__)

# The fused expert tensors of a gated transformers MoE experts module.
EXPERT_PARAMETER_NAMES = ("gate_up_proj", "down_proj")
# bitsandbytes' blockwise 8-bit quantization of the 4-bit block scales ("double quantization") uses blocks of 256.
NESTED_BLOCKSIZE = 256
NESTED_CODE_SIZE = 256


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers `@use_experts_implementation` experts module with fused, gated projections."""
    return getattr(module, "has_gate", False) and hasattr(module, "gate_up_proj") and hasattr(module, "config")


@dataclass(frozen=True)
class ExpertQuantizationConfig:
    """How the fused experts are stored in 4 bits.

    Args:
        quant_type (`str`, *optional*, defaults to `"nf4"`): `"nf4"` or `"fp4"` (bitsandbytes' 4-bit data types).
        blocksize (`int`, *optional*, defaults to 64): values per block scale (bitsandbytes accepts 32 ... 4096).
        double_quant (`bool`, *optional*, defaults to `True`): store the block scales in 8 bits (blocks of 256) as
            QLoRA's double quantization does, 0.5 bit per weight less than fp32 scales.
    """

    quant_type: str = "nf4"
    blocksize: int = 64
    double_quant: bool = True

    def __post_init__(self):
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(
                f"quant_type={self.quant_type!r} is not a 4-bit type bitsandbytes knows: use 'nf4' or 'fp4'."
            )
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ValueError(f"blocksize={self.blocksize} is not one of bitsandbytes' 32, 64, ..., 4096.")


def nf4_storage_bytes(numel: int, config: ExpertQuantizationConfig) -> int:
    """Bytes that [`quantize_experts`] stores for a tensor of `numel` values: the packed 4-bit codes, the block scales
    (fp32, or uint8 plus fp32 nested scales, the nested code book and the offset under double quantization)."""
    blocks = math.ceil(numel / config.blocksize)
    packed = math.ceil(numel / 2)
    if not config.double_quant:
        return packed + 4 * blocks
    return packed + blocks + 4 * math.ceil(blocks / NESTED_BLOCKSIZE) + 4 * NESTED_CODE_SIZE + 4


class NF4Experts(nn.Module):
    """The `torch.nn.utils.parametrize` parametrization of one fused expert tensor stored in 4 bits.

    Its input (the parametrized tensor's `original`) is the packed codes, shape (E, numel_per_expert / 2), uint8; its
    buffers hold the block scales, so `.to()` moves them with the codes. `forward` returns the whole (E, out, in) stack
    in the original dtype; [`nf4_expert_linear`] and [`nf4_grouped_linear`] use single experts or the stack without
    keeping it in the graph.
    """

    def __init__(
        self,
        shape: torch.Size,
        dtype: torch.dtype,
        config: ExpertQuantizationConfig,
        absmax: torch.Tensor,
        nested_absmax: torch.Tensor | None = None,
        nested_code: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
    ):
        super().__init__()
        self.shape, self.dtype, self.config = torch.Size(shape), dtype, config
        self.num_experts = self.shape[0]
        self.blocks_per_expert = self.shape[1:].numel() // config.blocksize
        self.register_buffer("absmax", absmax.reshape(self.num_experts, self.blocks_per_expert))
        if config.double_quant:
            self.register_buffer("nested_absmax", nested_absmax)
            self.register_buffer("nested_code", nested_code)
            self.register_buffer("offset", offset.reshape(()))

    def block_scales(self) -> torch.Tensor:
        """The (E, blocks_per_expert) fp32 block scales (dequantized from 8 bits under double quantization)."""
        if not self.config.double_quant:
            return self.absmax
        # the nested blocks run over the flattened scales of all experts, so they are dequantized together (1/64 of
        # the expert's values, cheap next to the expert itself)
        scales = torch.ops.bitsandbytes.dequantize_blockwise.default(
            self.absmax.reshape(-1), self.nested_absmax, self.nested_code, NESTED_BLOCKSIZE, torch.float32
        )
        return (scales + self.offset).reshape(self.num_experts, self.blocks_per_expert)

    def dequantize(self, packed: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Dequantize codes whose blocks are the rows of `scales` into `shape` (one expert or the whole stack)."""
        # Always as rows of exactly one block: bitsandbytes 0.50's CPU kernel assumes a block never crosses a row, which
        # is false for the experts' own shapes whenever `in` is not a multiple of the block size.
        rows = scales.numel()
        weight = torch.ops.bitsandbytes.dequantize_4bit.default(
            packed.reshape(-1),
            scales.reshape(-1),
            self.config.blocksize,
            self.config.quant_type,
            (rows, self.config.blocksize),
            self.dtype,
        )
        return weight.reshape(shape)

    @torch.no_grad()
    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.dequantize(packed, self.block_scales(), tuple(self.shape))

    def extra_repr(self) -> str:
        return (
            f"shape={tuple(self.shape)}, dtype={self.dtype}, quant_type={self.config.quant_type}, "
            f"blocksize={self.config.blocksize}, double_quant={self.config.double_quant}"
        )


def quantize_tensor(tensor: torch.Tensor, config: ExpertQuantizationConfig) -> tuple[torch.Tensor, NF4Experts]:
    """Quantize a fused (E, out, in) expert tensor: its packed codes (E, out * in / 2) and the parametrization."""
    if tensor.ndim != 3:
        raise ValueError(f"Fused experts are 3-D (experts, out, in); got a tensor of shape {tuple(tensor.shape)}.")
    per_expert = tensor.shape[1:].numel()
    if per_expert % config.blocksize:
        raise ValueError(
            f"An expert of shape {tuple(tensor.shape[1:])} ({per_expert} values) is not a whole number of "
            f"{config.blocksize}-value blocks, so its blocks would straddle the next expert; pick a blocksize that "
            f"divides {per_expert}."
        )
    # One expert at a time: the same codes and scales as the whole tensor at once (no block crosses an expert), but
    # the quantizer's fp32 temporaries (several times the input on CPU) stay the size of one expert
    packed, absmax = [], []
    for expert in tensor.detach():
        expert_packed, expert_state = bnb_functional.quantize_4bit(
            expert, blocksize=config.blocksize, quant_type=config.quant_type
        )
        packed.append(expert_packed.reshape(-1))
        absmax.append(expert_state.absmax)
    absmax = torch.cat(absmax)
    nested = {}
    if config.double_quant:
        # bitsandbytes' double quantization (`quantize_4bit(compress_statistics=True)`): the block scales, centred on
        # their mean, in 8-bit blocks of 256
        offset = absmax.mean()
        absmax, nested_state = bnb_functional.quantize_blockwise(absmax - offset, blocksize=NESTED_BLOCKSIZE)
        nested = {"nested_absmax": nested_state.absmax, "nested_code": nested_state.code, "offset": offset}
    parametrization = NF4Experts(tensor.shape, tensor.dtype, config, absmax, **nested)
    return torch.stack(packed), parametrization


def _enter_dequantization_cache(module: nn.Module, args) -> None:
    # transformers' eager experts forward reads `self.gate_up_proj[e]` once per hit expert: dequantize once per call
    module._nf4_cache_context = parametrize.cached()
    module._nf4_cache_context.__enter__()


def _exit_dequantization_cache(module: nn.Module, args, output) -> None:
    context = module.__dict__.pop("_nf4_cache_context", None)
    if context is not None:
        context.__exit__(None, None, None)


def _register_quantized(module: nn.Module, name: str, packed: torch.Tensor, parametrization: NF4Experts) -> None:
    packed_parameter = nn.Parameter(packed, requires_grad=False)
    packed_parameter._is_hf_initialized = True
    setattr(module, name, packed_parameter)
    parametrize.register_parametrization(module, name, parametrization, unsafe=True)
    if not getattr(module, "_nf4_hooks_registered", False):
        module.register_forward_pre_hook(_enter_dequantization_cache)
        # always_call: a non-reentrant checkpoint recompute may stop the forward early with an exception
        module.register_forward_hook(_exit_dequantization_cache, always_call=True)
        module._nf4_hooks_registered = True


def quantize_experts(model: nn.Module, config: ExpertQuantizationConfig | None = None) -> int:
    """Store every fused expert tensor of `model` (`gate_up_proj`, `down_proj` of each gated
    `@use_experts_implementation` module: the Thinker's and the Talker's MoE layers) in 4 bits, in place, on the
    device the tensor is on. Apply it before wrapping the model with PEFT.

    Returns:
        `int`: how many tensors were quantized (already quantized ones are left as they are).
    """
    config = config or ExpertQuantizationConfig()
    count = 0
    for module in list(model.modules()):
        if not is_fused_experts(module):
            continue
        for name in EXPERT_PARAMETER_NAMES:
            if parametrize.is_parametrized(module, name):
                continue
            tensor = getattr(module, name)
            if tensor.device.type == "meta":
                raise ValueError(f"Cannot quantize {name} of {type(module).__name__}: it is on the meta device.")
            packed, parametrization = quantize_tensor(tensor.data, config)
            delattr(module, name)
            _register_quantized(module, name, packed, parametrization)
            count += 1
    return count


@contextlib.contextmanager
def quantize_experts_on_load(config: ExpertQuantizationConfig | None = None) -> Iterator[list[nn.Module]]:
    """Quantize fused expert tensors as they are loaded: inside this context, a real (not meta) 3-D tensor assigned to
    `gate_up_proj` / `down_proj` of a fused experts module is replaced by its 4-bit codes at once, and the
    parametrizations are registered when the context exits. transformers loads parameter by parameter and drops each
    full-precision tensor after assigning it, so peak memory stays near the quantized model plus one fused tensor.

        with quantize_experts_on_load(config) as quantized_modules:
            model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16)

    Yields:
        `list[nn.Module]`: the experts modules that were quantized (filled when the context exits).
    """
    config = config or ExpertQuantizationConfig()
    pending: dict[nn.Module, dict[str, NF4Experts]] = {}

    def on_register(module: nn.Module, name: str, param: torch.Tensor | None):
        if (
            param is None
            or name not in EXPERT_PARAMETER_NAMES
            or param.ndim != 3
            or param.device.type == "meta"
            or not param.is_floating_point()
            or not is_fused_experts(module)
        ):
            return None
        packed, parametrization = quantize_tensor(param.data, config)
        pending.setdefault(module, {})[name] = parametrization
        packed_parameter = nn.Parameter(packed, requires_grad=False)
        packed_parameter._is_hf_initialized = True
        return packed_parameter

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(on_register)
    quantized_modules: list[nn.Module] = []
    try:
        yield quantized_modules
    finally:
        handle.remove()
    for module, parametrizations in pending.items():
        for name, parametrization in parametrizations.items():
            packed = getattr(module, name)
            delattr(module, name)
            _register_quantized(module, name, packed.data, parametrization)
        quantized_modules.append(module)


def target_parameter_names(model: nn.Module) -> Iterator[str]:
    """The names of `model`'s parameters as PEFT's `target_parameters` name them: a 4-bit tensor, registered as
    `<module>.parametrizations.<name>.original`, is targeted as `<module>.<name>`."""
    for name, _ in model.named_parameters():
        yield name.replace(".parametrizations.", ".").removesuffix(".original")


def nf4_parametrization(module: nn.Module, name: str) -> NF4Experts | None:
    """The [`NF4Experts`] parametrization of `module.<name>`, or `None` when that tensor is not stored in 4 bits."""
    if not parametrize.is_parametrized(module, name):
        return None
    return next((p for p in module.parametrizations[name] if isinstance(p, NF4Experts)), None)


def packed_codes(module: nn.Module, name: str) -> torch.Tensor:
    """The (E, numel_per_expert / 2) uint8 codes of a 4-bit expert tensor."""
    return module.parametrizations[name].original


class _NF4ExpertLinear(torch.autograd.Function):
    """`x @ W_e^T` for one 4-bit expert; the backward dequantizes `W_e` again rather than saving it.

    The weight is used in the dtype of what it multiplies: the activations may be bf16 while the experts were stored
    from fp32 (FSDP2's bf16 parameter policy, or CPU autocast, whose forward casts but whose backward does not)."""

    @staticmethod
    def forward(ctx, x, packed, scales, quantization: NF4Experts, shape, is_transposed):
        weight = quantization.dequantize(packed, scales, shape).to(x.dtype)
        ctx.save_for_backward(packed, scales)
        ctx.quantization, ctx.shape, ctx.is_transposed = quantization, shape, is_transposed
        return x @ weight if is_transposed else nn.functional.linear(x, weight)

    @staticmethod
    def backward(ctx, grad_output):
        packed, scales = ctx.saved_tensors
        weight = ctx.quantization.dequantize(packed, scales, ctx.shape).to(grad_output.dtype)
        grad_input = grad_output @ weight.T if ctx.is_transposed else grad_output @ weight
        return grad_input, None, None, None, None, None


class _NF4GroupedLinear(torch.autograd.Function):
    """Grouped `x @ W_e^T` over expert-sorted rows with the whole 4-bit stack dequantized transiently (in the dtype of
    what it multiplies, as in [`_NF4ExpertLinear`])."""

    @staticmethod
    def forward(ctx, x, offsets, packed, scales, quantization: NF4Experts, is_transposed):
        weight = quantization.dequantize(packed, scales, tuple(quantization.shape)).to(x.dtype)
        ctx.save_for_backward(offsets, packed, scales)
        ctx.quantization, ctx.is_transposed = quantization, is_transposed
        return hf_moe._grouped_linear(x, weight, offsets, is_transposed=is_transposed)

    @staticmethod
    def backward(ctx, grad_output):
        offsets, packed, scales = ctx.saved_tensors
        weight = ctx.quantization.dequantize(packed, scales, tuple(ctx.quantization.shape)).to(grad_output.dtype)
        grad_input = hf_moe._grouped_linear(grad_output, weight, offsets, is_transposed=not ctx.is_transposed)
        return grad_input, None, None, None, None, None


def nf4_expert_linear(
    x: torch.Tensor, module: nn.Module, name: str, expert_idx: int, scales: torch.Tensor | None = None
) -> torch.Tensor:
    """`x @ W_e^T` (or `x @ W_e` for transposed experts) for expert `expert_idx` of the 4-bit tensor `module.<name>`.

    `scales` are the block scales from `NF4Experts.block_scales()`, passed in so that one forward dequantizes them once.
    """
    quantization = nf4_parametrization(module, name)
    scales = quantization.block_scales() if scales is None else scales
    return _NF4ExpertLinear.apply(
        x,
        packed_codes(module, name)[expert_idx],
        scales[expert_idx],
        quantization,
        tuple(quantization.shape[1:]),
        getattr(module, "is_transposed", False),
    )


def nf4_grouped_linear(x: torch.Tensor, module: nn.Module, name: str, offsets: torch.Tensor) -> torch.Tensor:
    """transformers' `_grouped_linear` over the 4-bit tensor `module.<name>` (expert-sorted rows, cumulative offsets)."""
    quantization = nf4_parametrization(module, name)
    return _NF4GroupedLinear.apply(
        x,
        offsets,
        packed_codes(module, name),
        quantization.block_scales(),
        quantization,
        getattr(module, "is_transposed", False),
    )


def quantized_expert_bytes(model: nn.Module) -> int:
    """Bytes held by the 4-bit expert tensors of `model` (codes and block-scale buffers)."""
    total = 0
    for module in model.modules():
        for name in EXPERT_PARAMETER_NAMES:
            quantization = nf4_parametrization(module, name) if is_fused_experts(module) else None
            if quantization is not None:
                tensors = [packed_codes(module, name), *quantization.buffers()]
                total += sum(t.numel() * t.element_size() for t in tensors)
    return total
