# Copyright 2025 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""PEFT's own LoRA parameter wrapper (`--moe_lora_impl peft`) made safe on 4-bit experts.

PEFT 0.21's `lora.ParamWrapper` adds its update by registering a `torch.nn.utils.parametrize` parametrization on the
wrapped parameter for one forward and removing it afterwards. A 4-bit expert tensor (`quantized_experts.py`) already
is a parametrization, so the LoRA one is stacked on top of it, and three things go wrong:

- Removal: from a stack PEFT removes only a `_LoraParameterProxy`, but for a single adapter on stacked experts it
  registers a `_LoraFactorsProxy`, which it then cannot find: it warns and leaves it, so the update piles up at every
  forward (`W + dW + dW + ...`).
- A stale cache: with both expert tensors wrapped, the inner wrapper (`gate_up_proj`'s) registers its parametrization
  inside the outer one's `parametrize.cached()` context, and torch checks a parametrization appended to a
  parametrized tensor by reading the tensor first, which caches it without the update: the forward then gets the
  LoRA-free stack and the inner update is ignored. (PEFT's `get_param`, called for the dtype and device at every
  forward, would also dequantize the whole stack each time, and cache it the same way.)
- Merging: `merge` adds `dW` to what `experts.gate_up_proj` returns, which on 4-bit experts is a freshly dequantized
  copy: the update is dropped without a word and `merge_and_unload` returns the base.

[`silence_false_expert_rank_warning`] drops one false PEFT 0.21 warning about the experts' own rank.

[`ParamWrapper`] is PEFT's wrapper with the removal fixed, the stale cache entry dropped, a 4-bit tensor's dtype
and device read without dequantizing it, and merging onto 4-bit weights refused (merge onto the bf16
base instead, as `adapter_merge.merge_adapter` does); its forward, parameters, state-dict keys and adapter files are
PEFT's. The routed-token wrapper (`routed_lora.py`) subclasses it. [`apply_peft_lora`] converts PEFT's wrappers in a
model to it, and nests the two expert wrappers as PEFT does on plain experts, so an adapter trained on 4-bit experts
has the keys of one trained on the bf16 base.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from peft.tuners.lora import layer as peft_lora_layer
from torch import nn
from torch.nn.utils import parametrize

from .quantized_experts import nf4_parametrization


# PEFT 0.21's report of `rank_pattern` / `alpha_pattern` keys it found no targeted module for, when every key is a
# fused expert parameter's name.
FALSE_EXPERT_RANK_WARNING = (
    r"The following (rank|alpha)_pattern keys did not match any targeted module and were ignored: "
    r"\[('[\w.]*experts\.(gate_up|down)_proj'(, )?)+\]"
)
# The parametrizations PEFT's wrapper registers for one forward.
LORA_PROXIES = (peft_lora_layer._LoraParameterProxy, peft_lora_layer._LoraFactorsProxy)


class ParamWrapper(peft_lora_layer.ParamWrapper):
    """PEFT's `lora.ParamWrapper`, which removes its own update from a stack of parametrizations, never computes the
    forward from a stale cached tensor, reads a 4-bit tensor's dtype and device without dequantizing it, and refuses to
    merge into a 4-bit tensor (see the module docstring).

    The class keeps PEFT's name on purpose: PEFT 0.21 recognises (and nests) parameter wrappers by
    `__class__.__name__ == "ParamWrapper"` when it injects or adds adapters, and this wrapper must stay one to it.
    """

    def get_param(self) -> torch.Tensor:
        base_layer = self.get_base_layer()
        quantization = nf4_parametrization(base_layer, self.parameter_name)
        if quantization is None:
            return super().get_param()
        # PEFT reads only the shape, dtype, device and requires_grad here (merging is refused below): a stand-in with
        # no storage, which neither dequantizes the stack nor fills the parametrization cache
        packed = base_layer.parametrizations[self.parameter_name].original
        return torch.empty((), dtype=quantization.dtype, device=packed.device).expand(quantization.shape)

    @contextlib.contextmanager
    def _activate_lora(self, active_adapters: list[str]) -> Iterator[None]:
        with super()._activate_lora(active_adapters):
            # the value torch read (and cached) to check the parametrization it appended lacks this update
            parametrize._cache.pop((id(self.get_base_layer()), self.parameter_name), None)
            yield

    def _remove_parametrizations(self) -> None:
        parametrizations = self.get_base_layer().parametrizations[self.parameter_name]
        if len(parametrizations) > 1 and isinstance(parametrizations[-1], LORA_PROXIES):
            # the LoRA proxy was registered last, on top of the tensor's own (4-bit) parametrization
            del parametrizations[-1]
            return
        super()._remove_parametrizations()

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base_layer = self.get_base_layer()
        if nf4_parametrization(base_layer, self.parameter_name) is not None:
            owner = parametrize.type_before_parametrizations(base_layer).__name__
            raise ValueError(
                f"Cannot merge LoRA into {owner}.{self.parameter_name}: it is stored in 4 bits, so "
                "the update would be added to a dequantized copy and lost. Merge the adapter into the bf16 base "
                "instead: `python train/merge.py --adapter ADAPTER_DIR --output_dir OUT` "
                "(`qwen_omni.qwen3_omni.merge_adapter`), which loads the original checkpoint unquantized."
            )
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)


@contextlib.contextmanager
def silence_false_expert_rank_warning() -> Iterator[None]:
    """While PEFT injects an adapter: PEFT 0.21 checks `rank_pattern` / `alpha_pattern` keys against the targeted
    *module* names only, so the experts' own rank, keyed by parameter name (which is how PEFT applies it to
    `target_parameters`), is reported as "ignored" although it is applied (tests/test_qwen3_omni_sft.py checks the
    ranks). Only that report is silenced; any other pattern key PEFT finds no target for is still reported."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=FALSE_EXPERT_RANK_WARNING, category=RuntimeWarning)
        yield


def apply_peft_lora(model: nn.Module) -> int:
    """Convert PEFT's LoRA parameter wrappers in `model` to [`ParamWrapper`] (same forward, parameters and adapter
    files), in place, after nesting the expert wrappers as on a plain base. Wrappers already converted (or routed ones)
    are left alone.

    Args:
        model (`nn.Module`): a `PeftModel` or any module containing PEFT LoRA `ParamWrapper`s.

    Returns:
        `int`: how many wrappers this call converted.
    """
    nest_expert_wrappers_as_on_a_plain_base(model)
    converted = 0
    for module in model.modules():
        if type(module) is peft_lora_layer.ParamWrapper:
            module.__class__ = ParamWrapper
            converted += 1
    return converted


def nest_expert_wrappers_as_on_a_plain_base(model: nn.Module) -> None:
    """PEFT nests the two expert wrappers `down_proj` outside `gate_up_proj` on plain experts (parameter registration
    order) but the other way round on 4-bit (parametrized) experts (sorted names), and the nesting is in the adapter's
    state-dict keys (`experts.lora_A` vs `experts.base_layer.lora_A`). Re-nest the latter like the former, so an
    adapter trained on 4-bit experts loads onto the bf16 base and back."""
    for name, module in list(model.named_modules()):
        inner = getattr(module, "base_layer", None)
        if not (
            isinstance(module, peft_lora_layer.ParamWrapper)
            and module.parameter_name == "gate_up_proj"
            and isinstance(inner, peft_lora_layer.ParamWrapper)
            and inner.parameter_name == "down_proj"
            and not isinstance(inner.base_layer, peft_lora_layer.ParamWrapper)
        ):
            continue
        parent_name, _, child_name = name.rpartition(".")
        experts = inner.base_layer
        module.base_layer = experts
        inner.base_layer = module
        setattr(model.get_submodule(parent_name), child_name, inner)
