# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Trainer pieces for Omni models: an exact modality-weighted loss under gradient accumulation, and its logging."""

from __future__ import annotations

import math

import torch
from transformers import Trainer

from ..common.launching import CompleteCheckpointsMixin
from ..common.loss import items_in_batch_over_processes
from ..configuration_omni import IGNORE_INDEX
from ..modeling_omni import next_token_targets


class ModalityWeightedLossMixin:
    """
    Mixin for `transformers.Trainer` subclasses that train an `OmniForCausalLM` with the model's own loss. (TRL 1.16's
    `SFTTrainer.compute_loss` computes its own plain cross-entropy, so with SFTTrainer put this mixin on a subclass
    that routes to the model's loss, as `voice_sft.VoiceSFTTrainer` does.)

    - `num_items_in_batch` becomes the summed modality weight of the targets of the whole accumulated batch (all
      processes), instead of their count, so the weighted loss is exact under gradient accumulation and DDP.
    - The unweighted text and audio losses of each step are averaged over the logging interval and logged as
      `text_loss` / `audio_loss` (with `eval_` prefixes during evaluation).
    """

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples or not any(key in batch_samples[0] for key in ("labels", "shift_labels")):
            return super()._get_num_items_in_batch(batch_samples, device)
        model = self.accelerator.unwrap_model(self.model)  # a PeftModel forwards `loss_weights` to the Omni model
        if not hasattr(model, "loss_weights"):
            raise TypeError(f"{type(model).__name__} is not an Omni model (it has no `loss_weights`).")
        weights = sum(
            model.loss_weights(batch.get("labels"), shift_labels=batch.get("shift_labels")).sum()
            for batch in batch_samples
        ).to(device)
        return items_in_batch_over_processes(self, weights)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        prefix = "train" if model.training else "eval"
        sums = self.__dict__.setdefault("_modality_loss_sums", {})
        for name in ("text_loss", "audio_loss"):
            value = getattr(outputs, name, None) if not isinstance(outputs, dict) else outputs.get(name)
            if value is not None and not math.isnan(float(value)):
                total, count = sums.get((prefix, name), (0.0, 0))
                sums[(prefix, name)] = (total + float(value), count + 1)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        prefix = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        sums = self.__dict__.get("_modality_loss_sums", {})
        for name in ("text_loss", "audio_loss"):
            total, count = sums.pop((prefix, name), (0.0, 0))
            if count:
                logs[f"eval_{name}" if prefix == "eval" else name] = total / count
        super().log(logs, *args, **kwargs)


class OmniTrainer(CompleteCheckpointsMixin, ModalityWeightedLossMixin, Trainer):
    """`transformers.Trainer` for Omni models with the modality-weighted loss made exact (see the mixin) and its
    checkpoints marked complete ([`CompleteCheckpointsMixin`])."""


class MuonWithAdamW(torch.optim.Optimizer):
    """
    `torch.optim.Muon` for the 2-D hidden matrices and `torch.optim.AdamW` for everything else (embeddings, norms,
    LM head), as one optimizer that the Trainer's scheduler, checkpoints and resume handle like any other.

    Muon uses `adjust_lr_fn="match_rms_adamw"`, which scales its update to AdamW's RMS, so both groups share one
    learning rate (and one schedule).

    Args:
        muon_params, adamw_params: the parameters of each part.
        lr (`float`): learning rate of both parts.
        weight_decay (`float`): decoupled weight decay of the Muon part and of the AdamW matrices.
        adamw_no_decay_params: AdamW parameters without weight decay (biases, norms).
        betas, eps: AdamW's.
        momentum (`float`): Muon's momentum.
    """

    def __init__(
        self,
        muon_params: list[torch.nn.Parameter],
        adamw_params: list[torch.nn.Parameter],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        adamw_no_decay_params: list[torch.nn.Parameter] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.95,
    ):
        groups = [{"params": muon_params, "use_muon": True}]
        groups.append({"params": adamw_params, "use_muon": False})
        if adamw_no_decay_params:
            groups.append({"params": adamw_no_decay_params, "use_muon": False, "weight_decay": 0.0})
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, momentum=momentum)
        super().__init__([group for group in groups if group["params"]], defaults)
        self._link_parts()

    def _link_parts(self) -> None:
        """Inner optimizers that share this optimizer's groups (the scheduler edits their lr) and state."""
        muon_groups = [group for group in self.param_groups if group["use_muon"]]
        adamw_groups = [group for group in self.param_groups if not group["use_muon"]]
        self._muon = (
            torch.optim.Muon(
                [{"params": group["params"]} for group in muon_groups] or [{"params": []}],
                lr=self.defaults["lr"],
                momentum=self.defaults["momentum"],
                adjust_lr_fn="match_rms_adamw",
            )
            if muon_groups
            else None
        )
        self._adamw = (
            torch.optim.AdamW(
                [{"params": group["params"]} for group in adamw_groups],
                lr=self.defaults["lr"],
                betas=self.defaults["betas"],
                eps=self.defaults["eps"],
            )
            if adamw_groups
            else None
        )
        for inner, groups in ((self._muon, muon_groups), (self._adamw, adamw_groups)):
            if inner is None:
                continue
            for inner_group, group in zip(inner.param_groups, groups):
                for key, value in inner_group.items():
                    group.setdefault(key, value)
            inner.param_groups = groups
            inner.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link_parts()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in (self._muon, self._adamw):
            if inner is not None:
                inner.step()
        return loss


def muon_parameter_groups(model: torch.nn.Module) -> tuple[list, list, list]:
    """
    Split a causal LM's trainable parameters into (Muon: 2-D matrices of the decoder layers, AdamW with decay:
    embeddings and LM head, AdamW without decay: norms and biases).
    """
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    input_embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embedding_ids = {
        id(p) for module in (input_embeddings, output_embeddings) if module is not None for p in module.parameters()
    }
    muon, adamw, no_decay, seen = [], [], [], set()
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if id(parameter) in embedding_ids:
            adamw.append(parameter)
        elif parameter.ndim == 2:
            muon.append(parameter)
        else:
            no_decay.append(parameter)
    return muon, adamw, no_decay


def next_token_statistics(logits: torch.Tensor, labels: torch.Tensor, model_config) -> torch.Tensor:
    """
    Four numbers per position of the next-token predictions: whether the next label is a target, whether the top-1
    prediction is right, the target's log-probability (0 where there is no target), and whether the target is audio
    (`OmniConfig.is_audio_target`). Labels are unshifted, as the model takes them.
    """
    targets = next_token_targets(labels)
    valid = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    correct = logits.argmax(-1) == safe
    is_audio = model_config.is_audio_target(safe)
    return torch.stack([valid.float(), (correct & valid).float(), log_probs * valid, is_audio.float()], dim=-1)


def modality_token_metrics(statistics: torch.Tensor) -> dict[str, dict[str, float]]:
    """
    `{"all" | "text" | "audio": {"tokens", "loss", "token_accuracy", "perplexity"}}` over the targets of
    [`next_token_statistics`] rows (padding rows whose first number is not 1 are ignored); a modality without targets
    is left out.
    """
    statistics = torch.as_tensor(statistics)
    valid = statistics[..., 0] == 1
    is_audio = statistics[..., 3] == 1
    metrics = {}
    for name, mask in (("all", valid), ("text", valid & ~is_audio), ("audio", valid & is_audio)):
        count = int(mask.sum())
        if count:
            loss = -float(statistics[..., 2][mask].sum()) / count
            metrics[name] = {
                "tokens": count,
                "loss": loss,
                "token_accuracy": float(statistics[..., 1][mask].sum()) / count,
                "perplexity": math.exp(min(loss, 50.0)),
            }
    return metrics


def token_metrics_from_logits(model_config) -> tuple:
    """
    `(preprocess_logits_for_metrics, compute_metrics)` for the Trainer: token accuracy and perplexity of the
    next-token predictions, overall and for text and audio targets (audio ids and audio-end count as audio).
    Only four numbers per position are kept from the logits, so evaluation memory does not grow with the vocabulary.
    """

    def preprocess_logits_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return next_token_statistics(logits[0] if isinstance(logits, tuple) else logits, labels, model_config)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        return {
            f"{'' if name == 'all' else name + '_'}{key}": values[key]
            for name, values in modality_token_metrics(eval_prediction.predictions).items()
            for key in ("token_accuracy", "perplexity")
        }

    return preprocess_logits_for_metrics, compute_metrics


class OmniPretrainer(OmniTrainer):
    """
    [`OmniTrainer`] for pretraining: `optimizer="muon"` trains the 2-D hidden matrices with Muon and the rest with
    AdamW ([`MuonWithAdamW`]); `optimizer="adamw"` keeps the Trainer's `--optim`. Muon needs whole matrices, so it is
    refused under DeepSpeed ZeRO-3 and FSDP (they shard them); use `optimizer="adamw"` there.
    """

    def __init__(self, *args, optimizer_name: str = "muon", **kwargs):
        if optimizer_name not in ("muon", "adamw"):
            raise ValueError(f"optimizer={optimizer_name!r} is not supported; use 'muon' or 'adamw'.")
        self.optimizer_name = optimizer_name
        super().__init__(*args, **kwargs)
        if optimizer_name == "muon" and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError(
                "optimizer='muon' needs whole weight matrices, but DeepSpeed / FSDP shard them; pass "
                "--optimizer adamw with train/accelerate/deepspeed_zero3.yaml or fsdp2.yaml (DDP keeps Muon)."
            )

    def create_optimizer(self, model=None):
        if self.optimizer_name != "muon":
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.optimizer is None:
            muon, adamw, no_decay = muon_parameter_groups(self.model)
            self.optimizer = MuonWithAdamW(
                muon,
                adamw,
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                adamw_no_decay_params=no_decay,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer
