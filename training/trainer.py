# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Trainer pieces for Omni models: an exact modality-weighted loss under gradient accumulation, and its logging."""

from __future__ import annotations

import math

import torch
from transformers import Trainer


def _omni_model(model: torch.nn.Module) -> torch.nn.Module:
    """The `OmniForCausalLM` inside DDP / accelerate / PEFT wrappers (whatever has `loss_weights`)."""
    seen = set()
    while not hasattr(model, "loss_weights") and id(model) not in seen:
        seen.add(id(model))
        for attribute in ("module", "base_model", "model"):
            inner = getattr(model, attribute, None)
            if isinstance(inner, torch.nn.Module):
                model = inner
                break
    if not hasattr(model, "loss_weights"):
        raise TypeError(f"{type(model).__name__} is not an Omni model (it has no `loss_weights`).")
    return model


class ModalityWeightedLossMixin:
    """
    Mixin for `transformers.Trainer` subclasses (TRL's `SFTTrainer` included) that train an `OmniForCausalLM`.

    - `num_items_in_batch` becomes the summed modality weight of the targets of the whole accumulated batch (all
      processes), instead of their count, so the weighted loss is exact under gradient accumulation and DDP.
    - The unweighted text and audio losses of each step are averaged over the logging interval and logged as
      `text_loss` / `audio_loss` (with `eval_` prefixes during evaluation).
    """

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples or not any(key in batch_samples[0] for key in ("labels", "shift_labels")):
            return super()._get_num_items_in_batch(batch_samples, device)
        model = _omni_model(self.model)
        weights = sum(
            model.loss_weights(batch.get("labels"), shift_labels=batch.get("shift_labels")).sum() for batch in batch_samples
        ).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            weights = self.accelerator.gather(weights).sum()
        return weights

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


class OmniTrainer(ModalityWeightedLossMixin, Trainer):
    """`transformers.Trainer` for Omni models with the modality-weighted loss made exact (see the mixin)."""
