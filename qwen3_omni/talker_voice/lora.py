# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""LoRA on the Talker: its experts made routable, and the `LoraConfig` for the Talker and its code predictor."""

from __future__ import annotations

import torch
from peft import LoraConfig
from torch import nn
from torch.nn.utils import parametrize
from transformers import Qwen3OmniMoeForConditionalGeneration
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeTalkerTextExperts

from ..lora_targets import ATTENTION_PROJECTIONS, EXPERT_PARAMETERS, ROUTER_PARAMETER
from ..quantized_experts import target_parameter_names


TALKER_PREFIX = "talker.model."
CODE_PREDICTOR_PREFIX = "talker.code_predictor.model."
CODE_PREDICTOR_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# The code predictor's dense MLP can only be adapted through its weights (`target_parameters`, opt-in): PEFT 0.21 reads
# a `target_modules` entry ending in `gate_proj` / `up_proj` / `down_proj` on a `qwen3_omni_moe` model as a
# transformers-4 expert name and re-targets it to every fused `mlp.experts` of the model, the Thinker's included. A
# weight-level LoRA computes `W + dW` and a full-size weight gradient at every step, which costs ~0.25x of a frozen
# step (bench/bench_talker_lora.py), so by default only the code predictor's attention is adapted.
CODE_PREDICTOR_MLP_WEIGHTS = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
CODEC_EMBEDDING = "talker.model.codec_embedding"


class RoutableTalkerExperts(Qwen3OmniMoeTalkerTextExperts):
    """The Talker's fused experts with the interface of transformers' `@use_experts_implementation` experts (gated,
    bias-free, `(E, out, in)` weights, eager), so that `routed_lora.apply_routed_lora` gives their LoRA the
    routed-token forward as on the Thinker. Parameters, forward and state-dict keys are the Talker's own; only
    attributes are added ([`make_talker_experts_routable`] swaps the class of the existing modules)."""

    has_gate = True
    has_bias = False
    is_transposed = False

    @property
    def config(self):
        # The Talker's experts have a single (eager) forward; `_experts_implementation` is what routed_lora reads.
        return _EagerExpertsConfig

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up


class _EagerExpertsConfig:
    _experts_implementation = "eager"


def make_talker_experts_routable(model: nn.Module) -> int:
    """Give the Talker's experts modules the [`RoutableTalkerExperts`] class, in place; returns how many (0 when they
    already have it)."""
    count = 0
    for module in model.modules():
        if parametrize.type_before_parametrizations(module) is not Qwen3OmniMoeTalkerTextExperts:
            continue
        if parametrize.is_parametrized(module):
            # 4-bit experts: parametrize gave the module a class of its own, subclassing the Talker's and holding the
            # 4-bit tensors' properties; rebuild it on the routable class
            parametrized = type(module)
            module.__class__ = type(parametrized.__name__, (RoutableTalkerExperts,), dict(vars(parametrized)))
        else:
            module.__class__ = RoutableTalkerExperts
        count += 1
    return count


def build_talker_lora_config(
    model: Qwen3OmniMoeForConditionalGeneration,
    trainable_speaker_ids: list[int],
    *,
    r: int = 16,
    lora_alpha: int = 32,
    expert_r: int | None = None,
    attention_projections: tuple[str, ...] = ATTENTION_PROJECTIONS,
    target_router: bool = True,
    target_experts: bool = True,
    target_code_predictor: bool = True,
    target_code_predictor_mlp: bool = False,
    use_rslora: bool = False,
) -> LoraConfig:
    """The `LoraConfig` of the Talker voice recipe on the full model: LoRA on the Talker's attention, routers and
    fused experts and on the code predictor's attention (and MLP weights if asked), and the speakers' codec-embedding
    rows trained in full (PEFT's `trainable_token_indices`). Nothing of the Thinker, the projections or code2wav is
    targeted."""
    target_modules, target_parameters = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        leaf = name.rpartition(".")[2]
        if name.startswith(TALKER_PREFIX) and ".self_attn." in name and leaf in attention_projections:
            target_modules.append(name)
        elif target_code_predictor and name.startswith(CODE_PREDICTOR_PREFIX) and leaf in CODE_PREDICTOR_PROJECTIONS:
            target_modules.append(name)
    wanted = ((ROUTER_PARAMETER,) if target_router else ()) + (EXPERT_PARAMETERS if target_experts else ())
    for name in target_parameter_names(model):
        if name.startswith(TALKER_PREFIX) and wanted and name.endswith(wanted):
            target_parameters.append(name)
        elif (
            target_code_predictor_mlp
            and name.startswith(CODE_PREDICTOR_PREFIX)
            and name.endswith(CODE_PREDICTOR_MLP_WEIGHTS)
        ):
            target_parameters.append(name)
    if not target_modules and not target_parameters:
        raise ValueError("No LoRA target found in the Talker: is this a Qwen3-Omni checkpoint with a Talker?")
    rank_pattern, alpha_pattern = {}, {}
    if target_experts and expert_r is not None:
        for name in EXPERT_PARAMETERS:
            rank_pattern[name], alpha_pattern[name] = expert_r, lora_alpha * expert_r / r
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=0.0,
        target_modules=target_modules,
        target_parameters=target_parameters or None,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=use_rslora,
        trainable_token_indices={CODEC_EMBEDDING: list(trainable_speaker_ids)},
    )
