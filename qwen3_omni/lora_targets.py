"""The PEFT LoRA configuration for Qwen3-Omni's Thinker: attention, MoE router and fused experts.

In transformers 5 the experts of a layer are two fused 3-D parameters (`mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`) and the router is the 2-D parameter `mlp.gate.weight`, none of them an `nn.Linear`: PEFT
reaches them through `target_parameters`. Targets are listed by full name, so a projection name shared with the audio
or vision tower (`q_proj`, `k_proj`, ...) never puts LoRA on the towers by accident.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig
from torch import nn

from .expert_lora import check_moe_lora_impl
from .quantized_experts import target_parameter_names
from .routed_lora import register_routed_lora


ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
ROUTER_PARAMETER = "mlp.gate.weight"
EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
# Where each part sits inside `Qwen3OmniMoeThinkerForConditionalGeneration`.
TEXT_MODEL_PREFIX = "model.language_model."
TOWER_PREFIXES = {"audio": "model.audio_tower.", "vision": "model.visual."}


def build_lora_config(
    model: nn.Module,
    *,
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    expert_r: int | None = None,
    expert_alpha: int | None = None,
    attention_projections: Sequence[str] | None = ATTENTION_PROJECTIONS,
    target_router: bool = True,
    target_experts: bool = True,
    towers: Sequence[str] = (),
    use_rslora: bool = False,
    modules_to_save: list[str] | None = None,
    moe_lora_impl: str = "routed",
) -> LoraConfig:
    """Build the `LoraConfig` for a Qwen3-Omni Thinker, with every target spelled out by its full name.

    Args:
        model (`nn.Module`):
            The Thinker (`Qwen3OmniMoeThinkerForConditionalGeneration`) the adapter goes on.
        r (`int`, *optional*, defaults to 16):
            LoRA rank of the attention projections and the router.
        lora_alpha (`int`, *optional*, defaults to 32):
            LoRA alpha of the attention projections and the router.
        lora_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the input of every LoRA. On the router and the experts it needs `moe_lora_impl="routed"` (each
            routed token's input to `A` is dropped out); PEFT's parameter wrapper folds the update into the weight, so
            with `moe_lora_impl="peft"` a non-zero value raises a `ValueError` here.
        expert_r (`int`, *optional*):
            Rank of each expert's LoRA (`gate_up_proj` and `down_proj` get `expert_r` per expert, so
            `num_experts * expert_r` in all). Defaults to `r`.
        expert_alpha (`int`, *optional*):
            Alpha of the experts' LoRA. Defaults to `lora_alpha * expert_r / r`, the same scaling as the other targets.
        attention_projections (`Sequence[str]`, *optional*, defaults to `("q_proj", "k_proj", "v_proj", "o_proj")`):
            Names of the text decoder's attention `nn.Linear` layers to adapt; empty or `None` for none.
        target_router (`bool`, *optional*, defaults to `True`):
            Adapt the routers (`mlp.gate.weight`).
        target_experts (`bool`, *optional*, defaults to `True`):
            Adapt the fused experts (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`).
        towers (`Sequence[str]`, *optional*, defaults to `()`):
            `"audio"` and/or `"vision"`: also adapt every `nn.Linear` of those encoders. Frozen otherwise.
        use_rslora (`bool`, *optional*, defaults to `False`):
            Rank-stabilised scaling `alpha / sqrt(r)`.
        modules_to_save (`list[str]`, *optional*):
            Modules trained in full and saved with the adapter.
        moe_lora_impl (`str`, *optional*, defaults to `"routed"`):
            `"routed"`: the routed-token LoRA (see `routed_lora.py`), which also carries `lora_dropout` (the wrappers
            are then built as routed ones by PEFT); `"peft"`: PEFT's own wrapper.
    """
    check_moe_lora_impl(moe_lora_impl)
    unknown_towers = set(towers) - set(TOWER_PREFIXES)
    if unknown_towers:
        raise ValueError(f"towers={sorted(unknown_towers)} is not known; choose among {sorted(TOWER_PREFIXES)}.")
    projections = tuple(attention_projections or ())
    target_modules = linear_targets(model, projections, towers)
    target_parameters = parameter_targets(model, target_router, target_experts)
    if not target_modules and not target_parameters:
        raise ValueError(
            "No LoRA target found: the model has no text-model attention projections, routers or experts matching "
            f"attention_projections={list(projections)}, target_router={target_router}, "
            f"target_experts={target_experts}. Is it a Qwen3-Omni Thinker?"
        )
    if lora_dropout and target_parameters and moe_lora_impl == "peft":
        raise ValueError(
            f"lora_dropout={lora_dropout} cannot be used with LoRA on the MoE router and experts through PEFT's "
            "wrapper (moe_lora_impl='peft'): it adapts these parameters (target_parameters) by adding the low-rank "
            "update to the weight, so there is no input to drop out. Use the routed-token LoRA (`--moe_lora_impl "
            "routed`, the default), which drops out each routed token's input, or set lora_dropout to 0 "
            "(`--lora_dropout 0`), or keep only the attention targets (`--lora_target_router false "
            "--lora_target_experts false`)."
        )
    rank_pattern, alpha_pattern = expert_rank_patterns(target_experts, r, lora_alpha, expert_r, expert_alpha)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        # An empty list (not None) so that PEFT targets nothing by module name besides what is listed here.
        target_modules=target_modules,
        target_parameters=target_parameters or None,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=use_rslora,
        modules_to_save=modules_to_save,
    )
    if moe_lora_impl == "routed" and target_parameters and lora_dropout:
        # PEFT's own wrapper refuses dropout at construction: let PEFT build the routed one directly (without dropout,
        # PEFT's wrappers are converted by `apply_routed_lora`, as `Qwen3OmniSFTTrainer` does)
        register_routed_lora(config, model)
    return config


def linear_targets(model: nn.Module, projections: Sequence[str], towers: Sequence[str]) -> list[str]:
    """Full names of the `nn.Linear` targets: the text decoder's attention `projections` and every layer of the
    `towers` named."""
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if name.startswith(TEXT_MODEL_PREFIX) and name.rpartition(".")[2] in projections and ".self_attn." in name:
            targets.append(name)
        elif any(name.startswith(TOWER_PREFIXES[tower]) for tower in towers):
            targets.append(name)
    return targets


def parameter_targets(model: nn.Module, target_router: bool, target_experts: bool) -> list[str]:
    """Full names of the text model's router and fused-expert parameters asked for (PEFT's `target_parameters`)."""
    wanted = ((ROUTER_PARAMETER,) if target_router else ()) + (EXPERT_PARAMETERS if target_experts else ())
    return [
        name for name in target_parameter_names(model) if name.startswith(TEXT_MODEL_PREFIX) and name.endswith(wanted)
    ]


def expert_rank_patterns(
    target_experts: bool, r: int, lora_alpha: int, expert_r: int | None, expert_alpha: int | None
) -> tuple[dict, dict]:
    """PEFT's `rank_pattern` and `alpha_pattern` (keys matched as a suffix of the full parameter name) of the experts:
    `expert_r` with `expert_alpha`, which defaults to `lora_alpha * expert_r / r` (the other targets' scaling)."""
    if target_experts and expert_r is not None:
        expert_alpha = expert_alpha if expert_alpha is not None else lora_alpha * expert_r / r
        return dict.fromkeys(EXPERT_PARAMETERS, expert_r), dict.fromkeys(EXPERT_PARAMETERS, expert_alpha)
    if target_experts and expert_alpha is not None:
        return {}, dict.fromkeys(EXPERT_PARAMETERS, expert_alpha)
    return {}, {}


def lora_config_kwargs(model_args, omni_args) -> dict:
    """Keyword arguments of [`build_lora_config`] from `train/sft.py`'s parsed `Qwen3OmniModelConfig` and
    `Qwen3OmniArguments` (shared by the training run and its `--estimate_memory`)."""
    return dict(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        expert_r=omni_args.lora_expert_r,
        expert_alpha=omni_args.lora_expert_alpha,
        # None: the attention projections; [] (YAML): none; TRL turns a one-item list into a string
        attention_projections=(
            ATTENTION_PROJECTIONS
            if model_args.lora_target_modules is None
            else [model_args.lora_target_modules]
            if isinstance(model_args.lora_target_modules, str)
            else model_args.lora_target_modules
        ),
        target_router=omni_args.lora_target_router,
        target_experts=omni_args.lora_target_experts,
        towers=omni_args.lora_towers,
        use_rslora=model_args.use_rslora,
        modules_to_save=model_args.lora_modules_to_save,
        moe_lora_impl=omni_args.moe_lora_impl,
    )
