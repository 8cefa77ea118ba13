# Copyright 2025 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Routed-token LoRA for fused MoE experts (Qwen3-Omni's `mlp.experts.gate_up_proj` / `mlp.experts.down_proj`).

PEFT's `lora.ParamWrapper` puts LoRA on a 3-D expert parameter `W` of shape `(E, out, in)` by parametrizing it: every
forward builds `W + scaling * B_e @ A_e` for *all* experts, and every backward produces a gradient the size of the
whole expert stack before reducing it to the low-rank factors. On a top-k MoE only `k / E` of that work is useful.

The wrapper here computes the same function without ever forming `W + dW`:

    y_e = x_e @ W_e^T + scaling * (x_e @ A_e^T) @ B_e^T        for the tokens x_e routed to expert e

inside the experts forward (transformers' `eager` per-expert matmuls or its `grouped_mm` path, the low-rank terms
grouped over the expert-sorted (token, expert) pairs), so the LoRA cost scales with the number of routed tokens and
the rank, and the frozen expert weights never need a gradient. The router's 2-D LoRA keeps PEFT's `W + dW` (it is
tiny) but skips the per-forward `torch.nn.utils.parametrize` registration.

It is a drop-in subclass of PEFT's wrapper: the adapter weights are the very same `lora_A` / `lora_B` `nn.Linear`
modules (shapes `(E * r, in)` and `(out, E * r)`), so state-dict keys, `save_pretrained`, `PeftModel.from_pretrained`,
`merge_and_unload`, `rank_pattern` / `alpha_pattern`, rsLoRA and several active adapters (their terms are summed)
behave as with PEFT's wrapper; only the forward differs. Anything the routed forward does not cover (expert
parallelism, experts with bias or a post-expert norm, implementations other than `eager` / `grouped_mm`) falls back to
PEFT's own forward.

Experts stored in 4 bits (`quantized_experts.py`) are dequantized one hit expert at a time (`eager`) or as a transient
stack (`grouped_mm`), never kept in the autograd graph. `lora_dropout` works here as in PEFT's `lora.Linear`: each
routed (token, expert) row is dropped out on its way into `A`, and the router's input likewise; PEFT's own wrapper
cannot do this (it folds the update into the weight) and refuses it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from peft import LoraConfig
from peft.tuners.lora import layer as peft_lora_layer
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.integrations import moe as hf_moe
from transformers.utils import logging

from .peft_lora import ParamWrapper as PeftParamWrapper
from .peft_lora import nest_expert_wrappers_as_on_a_plain_base
from .quantized_experts import (
    EXPERT_PARAMETER_NAMES,
    is_fused_experts,
    nf4_expert_linear,
    nf4_grouped_linear,
    nf4_parametrization,
    target_parameter_names,
)


logger = logging.get_logger(__name__)

# The expert parameters this wrapper knows how to apply routed-token LoRA to (a gated MoE's fused projections).
ROUTED_PARAMETER_NAMES = EXPERT_PARAMETER_NAMES
# `experts_implementation` values whose computation is reproduced by the routed forward.
ROUTED_EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm")

# (A: (E, r, in), B: (E, out, r), scaling, dropout) of one active adapter on one expert parameter.
LoraFactors = tuple[torch.Tensor, torch.Tensor, float, nn.Module]


def _without_dropout(config: LoraConfig) -> LoraConfig:
    config = copy.copy(config)
    config.lora_dropout = 0.0
    return config


def _expert_weight_dtype(experts: nn.Module, name: str) -> torch.dtype:
    # reading `experts.<name>` of a 4-bit tensor would dequantize the whole stack just to learn its dtype
    quantization = nf4_parametrization(experts, name)
    return quantization.dtype if quantization is not None else getattr(experts, name).dtype


class _RouterLoraMode(TorchFunctionMode):
    """Adds `scaling * B(A(dropout(x)))` to the router's `F.linear(x, weight)` while its forward runs (the router's
    softmax / top-k come after the matmul, so the LoRA term has to join it there)."""

    def __init__(self, weight: torch.Tensor, terms: list[tuple[nn.Linear, nn.Linear, float, nn.Module]]):
        super().__init__()
        self.weight, self.terms, self.calls = weight, terms, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nn.functional.linear and len(args) > 1 and args[1] is self.weight:
            self.calls += 1
            out = func(*args, **kwargs)
            x = args[0]
            for lora_A, lora_B, scaling, dropout in self.terms:
                out = out + scaling * lora_B(lora_A(dropout(x.to(lora_A.weight.dtype)))).to(out.dtype)
            return out
        return func(*args, **kwargs)


class ParamWrapper(PeftParamWrapper):
    """PEFT's `lora.ParamWrapper` with forwards that never parametrize the wrapped parameter (and, from
    `peft_lora.ParamWrapper`, no merging into 4-bit tensors).

    - On fused experts (`gate_up_proj` / `down_proj` of a `@use_experts_implementation` module): the routed-token
      forward. PEFT nests the wrappers when both are targeted (`mlp.experts` -> `ParamWrapper(down_proj)` ->
      `ParamWrapper(gate_up_proj)` -> experts module); the outermost one, which the MoE block calls, gathers the
      low-rank factors of the whole chain and runs a single routed experts forward with them.
    - On a 2-D parameter such as the router's `mlp.gate.weight`: the same `W + dW` as PEFT, handed to the module
      through `torch.func.functional_call` instead of registering and removing a `torch.nn.utils.parametrize`
      parametrization on every forward (which creates a new module class each time and costs more than the tiny
      router matmul itself).
    - Anything else: PEFT's forward.

    The class keeps PEFT's name on purpose: PEFT 0.21 recognises (and nests) parameter wrappers by
    `__class__.__name__ == "ParamWrapper"` when it injects or adds adapters, and this wrapper must stay one to it.
    Build it with [`apply_routed_lora`], or let PEFT build it through [`register_routed_lora`] (needed for
    `lora_dropout > 0`, which PEFT's own wrapper refuses at construction).
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, parameter_name: str, config: LoraConfig, **kwargs):
        # PEFT's constructor refuses lora_dropout; build without it, then give each adapter its dropout module
        super().__init__(base_layer, adapter_name, parameter_name, config=_without_dropout(config), **kwargs)
        self._set_lora_dropout(adapter_name, config.lora_dropout)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs) -> None:
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=_without_dropout(config), **kwargs)
        self._set_lora_dropout(adapter_name, config.lora_dropout)

    def _set_lora_dropout(self, adapter_name: str, lora_dropout: float) -> None:
        if lora_dropout > 0:
            base_layer = self.get_base_layer()
            on_experts = is_fused_experts(base_layer) and self.parameter_name in ROUTED_PARAMETER_NAMES
            if not on_experts and self._param_ndim != 2:
                raise ValueError(
                    f"lora_dropout={lora_dropout} on {type(base_layer).__name__}.{self.parameter_name}: the routed LoRA "
                    "applies dropout only on fused MoE experts and 2-D parameters such as the router. Set lora_dropout "
                    "to 0 or leave this parameter out of target_parameters."
                )
        self.lora_dropout[adapter_name] = nn.Dropout(p=lora_dropout) if lora_dropout > 0 else nn.Identity()

    def _has_active_dropout(self) -> bool:
        return any(
            self.training and isinstance(wrapper.lora_dropout[name], nn.Dropout)
            for wrapper in self._wrapper_chain()
            for name in wrapper._active_adapters_to_apply()
        )

    def _wrapper_chain(self) -> list[peft_lora_layer.ParamWrapper]:
        chain, module = [], self
        while isinstance(module, peft_lora_layer.ParamWrapper):
            chain.append(module)
            module = module.base_layer
        return chain

    def _routed_forward_unsupported_reason(self, experts: nn.Module) -> str | None:
        chain = self._wrapper_chain()
        if any(not isinstance(wrapper, ParamWrapper) for wrapper in chain):
            return "the expert parameters are wrapped by a PEFT ParamWrapper that apply_routed_lora did not convert"
        if any(wrapper.parameter_name not in ROUTED_PARAMETER_NAMES for wrapper in chain):
            return f"only {ROUTED_PARAMETER_NAMES} are supported"
        if getattr(experts, "has_bias", False) or getattr(experts, "has_post_expert_norm", False):
            return "experts with biases or a post-expert norm are not supported"
        if getattr(experts, "_is_expert_parallel", False):
            return "expert parallelism is not supported"
        implementation = getattr(experts.config, "_experts_implementation", None) or "eager"
        if implementation not in ROUTED_EXPERTS_IMPLEMENTATIONS:
            return f"experts_implementation={implementation!r} is not one of {ROUTED_EXPERTS_IMPLEMENTATIONS}"
        return None

    def _active_adapters_to_apply(self) -> list[str]:
        # as PEFT's forward: a wrapper with any merged adapter applies no unmerged LoRA on top
        if self.merged:
            return []
        return [adapter_name for adapter_name in self.active_adapters if adapter_name in self.lora_A]

    def _active_lora_factors(self, weight_dtype: torch.dtype) -> list[LoraFactors]:
        """The (A, B, scaling) factors of this wrapper's adapters to apply, cast to the weight's dtype as PEFT does."""
        factors = []
        for adapter_name in self._active_adapters_to_apply():
            weight_A = self.lora_A[adapter_name].weight  # (E * r, in), expert-major rows
            weight_B = self.lora_B[adapter_name].weight  # (out, r * E), rank-major columns
            weight_A = weight_A.reshape(self.num_experts, -1, weight_A.shape[-1])  # (E, r, in)
            weight_B = weight_B.reshape(weight_B.shape[0], -1, self.num_experts).permute(2, 0, 1)  # (E, out, r)
            factors.append(
                (
                    weight_A.to(weight_dtype),
                    weight_B.to(weight_dtype),
                    self.scaling[adapter_name],
                    self.lora_dropout[adapter_name],
                )
            )
        return factors

    def _routed_experts_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        experts = self.get_base_layer()
        chain = self._wrapper_chain()
        if self.disable_adapters:
            for wrapper in chain:
                if wrapper.merged:
                    wrapper.unmerge()
            return experts(x, *args, **kwargs)
        lora = {name: [] for name in ROUTED_PARAMETER_NAMES}
        for wrapper in chain:
            weight_dtype = _expert_weight_dtype(experts, wrapper.parameter_name)
            lora[wrapper.parameter_name].extend(wrapper._active_lora_factors(weight_dtype))
        return routed_lora_experts_forward(experts, x, *args, lora=lora, **kwargs)

    def _dense_delta_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        adapter_names = [] if self.disable_adapters else self._active_adapters_to_apply()
        if not adapter_names:
            return self.base_layer(x, *args, **kwargs)
        if self._has_active_dropout():
            return self._input_lora_forward(x, *args, adapter_names=adapter_names, **kwargs)
        delta_weight = sum(self.get_delta_weight(adapter_name) for adapter_name in adapter_names)
        # PEFT's own `W + dW` (incl. its low-precision upcast), without the parametrization round trip
        weight = peft_lora_layer._LoraParameterProxy(delta_weight)(self.get_param())
        return torch.func.functional_call(self.base_layer, {self.parameter_name: weight}, (x, *args), kwargs)

    def _input_lora_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
        """`F.linear(x, W) + scaling * B(A(dropout(x)))`: LoRA on the input as `lora.Linear` computes it, needed when
        dropout is on (no weight `W + dW` can express a dropped-out input)."""
        terms = [
            (self.lora_A[name], self.lora_B[name], self.scaling[name], self.lora_dropout[name])
            for name in adapter_names
        ]
        mode = _RouterLoraMode(self.get_param(), terms)
        with mode:
            out = self.base_layer(x, *args, **kwargs)
        if mode.calls != 1:
            raise RuntimeError(
                f"LoRA dropout on {type(self.base_layer).__name__}.{self.parameter_name} needs its forward to call "
                f"F.linear(x, {self.parameter_name}) exactly once; it did {mode.calls} times. Set lora_dropout to 0."
            )
        return out

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base_layer = self.get_base_layer()
        if is_fused_experts(base_layer) and self.parameter_name in ROUTED_PARAMETER_NAMES:
            reason = self._routed_forward_unsupported_reason(base_layer)
            if reason is None:
                self._check_forward_args(x, *args, **kwargs)
                kwargs.pop("adapter_names", None)
                return self._routed_experts_forward(x, *args, **kwargs)
            if nf4_parametrization(base_layer, self.parameter_name) is not None:
                raise ValueError(
                    f"The experts are stored in 4 bits, which only the routed-token LoRA forward computes, and it "
                    f"cannot run here: {reason}. Use experts_implementation 'eager' or 'grouped_mm'."
                )
            if self._has_active_dropout():
                raise ValueError(
                    f"lora_dropout > 0 needs the routed-token LoRA forward, which cannot run here: {reason}. PEFT's "
                    "ParamWrapper forward has no input to drop out; set lora_dropout to 0."
                )
            logger.warning_once(f"Routed-token LoRA falls back to PEFT's ParamWrapper forward: {reason}.")
        elif self._param_ndim == 2 and self.base_layer is base_layer:
            self._check_forward_args(x, *args, **kwargs)
            kwargs.pop("adapter_names", None)
            return self._dense_delta_forward(x, *args, **kwargs)
        return super().forward(x, *args, **kwargs)

    def __repr__(self) -> str:
        return "routed_" + super().__repr__()


def apply_routed_lora(model: nn.Module) -> int:
    """Give every PEFT LoRA parameter wrapper in `model` the routed / parametrization-free forward, in place.

    Converts the `lora.ParamWrapper`s on fused MoE experts (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`:
    routed-token LoRA) and on 2-D parameters such as the router's `mlp.gate.weight` (the same `W + dW`, without
    `torch.nn.utils.parametrize`). Only the forward changes: parameters, their `requires_grad`, state-dict keys,
    `save_pretrained`, `PeftModel.from_pretrained`, `merge_and_unload` and multiple adapters stay PEFT's, and an
    adapter trained either way loads and runs the other way. Calling it again converts only wrappers added since.

    Wiring (`qwen3_omni/lora_targets.py`, option `moe_lora_impl: "routed" | "peft"`, default "routed"):

        peft_model = get_peft_model(thinker, lora_config)   # or PeftModel.from_pretrained(thinker, adapter_dir)
        if moe_lora_impl == "routed":
            apply_routed_lora(peft_model)

    The routed forward serves `experts_implementation` "eager" and "grouped_mm" (read at every forward, so
    `set_experts_implementation` may come before or after); with other implementations, expert parallelism or experts
    with biases the wrapper uses PEFT's forward and logs a warning once. Wrappers PEFT builds have
    `lora_dropout=0` (its constructor refuses more); for dropout let PEFT build this wrapper directly with
    [`register_routed_lora`]. Ranks: `rank_pattern` / `alpha_pattern` give the experts (or the router) their own rank and
    alpha as in PEFT; for `target_parameters` PEFT matches the patterns against the *parameter* name, e.g.
    `rank_pattern={"mlp.experts.gate_up_proj": 16, "mlp.experts.down_proj": 16, "mlp.gate.weight": 4}` (a module-name
    key such as `"mlp.experts"` matches nothing and PEFT only warns). PEFT's layout has one rank shared by all experts
    of a parameter (`lora_A` is `(E * r, in)`), so there is no rank per individual expert.

    Args:
        model (`nn.Module`): a `PeftModel` or any module containing PEFT LoRA `ParamWrapper`s.

    Returns:
        `int`: how many wrappers this call converted (0 when there was nothing left to convert).
    """
    nest_expert_wrappers_as_on_a_plain_base(model)
    converted = 0
    for module in model.modules():
        if not isinstance(module, peft_lora_layer.ParamWrapper) or type(module) is ParamWrapper:
            continue
        is_nested = isinstance(module.base_layer, peft_lora_layer.ParamWrapper)
        on_fused_experts = (
            is_fused_experts(module.get_base_layer()) and module.parameter_name in ROUTED_PARAMETER_NAMES
        )
        on_plain_2d_parameter = module._param_ndim == 2 and not is_nested
        if on_fused_experts or on_plain_2d_parameter:
            # same instance layout: only the forward (and repr) change, PEFT's state stays untouched
            module.__class__ = ParamWrapper
            converted += 1
    return converted


def register_routed_lora(config: LoraConfig, model: nn.Module) -> LoraConfig:
    """Have PEFT build the routed [`ParamWrapper`] itself for every parameter `config.target_parameters` names in
    `model` (PEFT's custom-module dispatch, keyed by the class that owns each parameter), so that `get_peft_model`,
    `PeftModel.from_pretrained` and TRL's `SFTTrainer` accept `lora_dropout > 0` on the router and the experts.

    Returns:
        `LoraConfig`: `config`, with the mapping registered (it is not written to `adapter_config.json`: the adapter
        files stay PEFT's).
    """
    owners = {}
    for name in target_parameter_names(model):
        if any(name == target or name.endswith("." + target) for target in config.target_parameters or ()):
            module = model.get_submodule(name.rpartition(".")[0])
            # parametrize gives each 4-bit experts module a class of its own; key by the class it was built as
            owners[torch.nn.utils.parametrize.type_before_parametrizations(module)] = ParamWrapper
    config._register_custom_module(owners)
    return config


ExpertLinear = Callable[[torch.Tensor, int], torch.Tensor]


def _frozen_expert_linear(experts: nn.Module, name: str) -> ExpertLinear:
    """`(x, e) -> x @ W_e^T` (or `x @ W_e` for transposed experts) for the frozen tensor `experts.<name>`: a slice of the
    stored stack, or expert `e` alone dequantized when the experts are stored in 4 bits."""
    quantization = nf4_parametrization(experts, name)
    if quantization is not None:
        scales = quantization.block_scales()
        return lambda x, expert_idx: nf4_expert_linear(x, experts, name, expert_idx, scales)
    # split/unbind (not slicing or indexing per expert): one gradient buffer in backward, not one per expert
    weights = getattr(experts, name).unbind(0)
    if experts.is_transposed:
        return lambda x, expert_idx: x @ weights[expert_idx]
    return lambda x, expert_idx: nn.functional.linear(x, weights[expert_idx])


def _eager_routed_forward(
    experts: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    lora: dict[str, list[LoraFactors]],
) -> torch.Tensor:
    """transformers' eager experts (one matmul per hit expert for the frozen weights), LoRA on the routed rows.

    The (token, expert) pairs are sorted by expert once, so each expert's rows are a contiguous block: the base
    matmuls run per expert as in eager, the low-rank terms run grouped over all pairs at once (a per-expert Python
    loop of tiny rank-r matmuls costs more in dispatch than in arithmetic).
    """
    num_tokens, hidden_dim = hidden_states.shape
    num_top_k = top_k_index.size(-1)
    expert_ids_sorted, perm = torch.sort(top_k_index.reshape(-1))
    tokens_per_expert = torch.bincount(expert_ids_sorted, minlength=experts.num_experts)[: experts.num_experts]
    offsets = torch.cumsum(tokens_per_expert, dim=0, dtype=torch.int32)
    counts = tokens_per_expert.tolist()
    hit = [expert_idx for expert_idx, count in enumerate(counts) if count]
    selected_hidden_states = hidden_states[perm // num_top_k]

    def project(x: torch.Tensor, name: str) -> torch.Tensor:
        expert_linear, blocks = _frozen_expert_linear(experts, name), x.split(counts)
        out = torch.cat([expert_linear(blocks[e], e) for e in hit])
        delta = _grouped_low_rank(x, offsets, lora[name])
        return out if delta is None else out + delta

    proj_out = experts._apply_gate(project(selected_hidden_states, "gate_up_proj"))
    proj_out = project(proj_out, "down_proj")
    weighted_out = proj_out * top_k_weights.reshape(-1)[perm].unsqueeze(-1)
    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = torch.arange(perm.size(0), device=perm.device)
    final_hidden_states = weighted_out[inv_perm].view(num_tokens, num_top_k, hidden_dim).sum(dim=1)
    return final_hidden_states.to(hidden_states.dtype)


def _grouped_low_rank(x: torch.Tensor, offsets: torch.Tensor, factors: list[LoraFactors]) -> torch.Tensor | None:
    """`sum(scaling * (dropout(x) @ A_e^T) @ B_e^T)` over expert-sorted rows `x` (`offsets`: cumulative rows per
    expert); the dropout mask is drawn per routed (token, expert) row."""
    delta = None
    for weight_A, weight_B, scaling, dropout in factors:
        if hf_moe._can_use_grouped_mm(x, weight_A, offsets):
            # torch's grouped_mm wants 16-byte aligned strides: zero-pad the rank (the padded products are zero)
            alignment = max(1, 16 // weight_A.element_size())
            pad = -weight_A.shape[1] % alignment
            if pad:
                weight_A = nn.functional.pad(weight_A, (0, 0, 0, pad))
                weight_B = nn.functional.pad(weight_B, (0, pad))
        low_rank = hf_moe._grouped_mm(dropout(x), weight_A.transpose(-2, -1), offsets)  # (S, r)
        low_rank = hf_moe._grouped_mm(low_rank, weight_B.contiguous().transpose(-2, -1), offsets)  # (S, out)
        delta = low_rank * scaling if delta is None else delta.add(low_rank, alpha=scaling)
    return delta


def _grouped_project(
    x: torch.Tensor, experts: nn.Module, name: str, offsets: torch.Tensor, factors: list[LoraFactors]
) -> torch.Tensor:
    """Grouped `x @ W_e^T` over expert-sorted rows plus the grouped low-rank term `(x @ A_e^T) @ B_e^T`."""
    if nf4_parametrization(experts, name) is not None:
        out = nf4_grouped_linear(x, experts, name, offsets)
    else:
        out = hf_moe._grouped_linear(x, getattr(experts, name), offsets, is_transposed=experts.is_transposed)
    delta = _grouped_low_rank(x, offsets, factors)
    return out if delta is None else out + delta


def _grouped_routed_forward(
    experts: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    lora: dict[str, list[LoraFactors]],
) -> torch.Tensor:
    """transformers' `grouped_mm_experts_forward` with the LoRA term computed on the same expert-sorted rows."""
    num_experts = experts.num_experts
    num_tokens, hidden_dim = hidden_states.shape
    num_top_k = top_k_index.size(-1)
    sample_weights = top_k_weights.reshape(-1)
    expert_ids_sorted, perm = torch.sort(top_k_index.reshape(-1))
    selected_hidden_states = hidden_states[perm // num_top_k]
    # histc as in transformers (CUDA-graph friendly; CPU histc needs a float input)
    device = hidden_states.device
    histc_input = expert_ids_sorted.float() if device.type in ("cpu", "mps") else expert_ids_sorted.int()
    tokens_per_expert = torch.histc(histc_input, bins=num_experts, min=0, max=num_experts - 1)
    offsets = torch.cumsum(tokens_per_expert, dim=0, dtype=torch.int32)

    proj_out = _grouped_project(selected_hidden_states, experts, "gate_up_proj", offsets, lora["gate_up_proj"])
    proj_out = experts._apply_gate(proj_out)
    proj_out = _grouped_project(proj_out, experts, "down_proj", offsets, lora["down_proj"])
    weighted_out = proj_out * sample_weights[perm].unsqueeze(-1)

    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = torch.arange(perm.size(0), device=device)
    final_hidden_states = weighted_out[inv_perm].view(num_tokens, num_top_k, hidden_dim).sum(dim=1)
    return final_hidden_states.to(hidden_states.dtype)


def routed_lora_experts_forward(
    experts: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    lora: dict[str, list[LoraFactors]],
) -> torch.Tensor:
    """Experts forward with LoRA on the routed tokens only, for the module's `experts_implementation`.

    Args:
        experts (`nn.Module`): a gated, bias-free `@use_experts_implementation` experts module (fused
            `gate_up_proj` (E, 2I, H) and `down_proj` (E, H, I), or their transposes when `is_transposed`).
        hidden_states (`torch.Tensor`): (num_tokens, hidden) input of the MoE block.
        top_k_index (`torch.Tensor`): (num_tokens, k) experts chosen by the router.
        top_k_weights (`torch.Tensor`): (num_tokens, k) routing weights.
        lora (`dict[str, list[LoraFactors]]`): per parameter name, the `(A (E, r, in), B (E, out, r), scaling,
            dropout)` of every adapter to add; empty lists give the plain experts forward. Experts stored in 4 bits
            are dequantized per hit expert (`eager`) or as a transient stack (`grouped_mm`).

    Returns:
        `torch.Tensor`: (num_tokens, hidden), the same as the experts module's forward with `W + scaling * B_e @ A_e`.
    """
    implementation = getattr(experts.config, "_experts_implementation", None) or "eager"
    if implementation == "grouped_mm":
        return _grouped_routed_forward(experts, hidden_states, top_k_index, top_k_weights, lora)
    if implementation == "eager":
        return _eager_routed_forward(experts, hidden_states, top_k_index, top_k_weights, lora)
    raise ValueError(
        f"routed_lora_experts_forward supports experts_implementation in {ROUTED_EXPERTS_IMPLEMENTATIONS}, got "
        f"{implementation!r}; set it with `model.set_experts_implementation(...)` or use PEFT's ParamWrapper forward."
    )
