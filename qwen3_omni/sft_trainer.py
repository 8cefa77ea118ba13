"""`SFTTrainer` for Qwen3-Omni conversations with per-sample modality loss weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging
from trl import SFTTrainer

from ..common.launching import CompleteCheckpointsMixin
from ..common.loss import items_in_batch_over_processes
from .collator import IGNORE_INDEX, STAT_KEYS
from .conversations import DatasetReport
from .expert_lora import apply_expert_lora, check_moe_lora_impl
from .lora_targets import TOWER_PREFIXES
from .peft_lora import silence_false_expert_rank_warning


logger = logging.get_logger(__name__)


class Qwen3OmniSFTTrainer(CompleteCheckpointsMixin, SFTTrainer):
    """`SFTTrainer` whose loss weights each sample by its input modalities, exactly under gradient accumulation (its
    checkpoints marked complete: [`CompleteCheckpointsMixin`]).

    With `w_b` the weight of sample `b` (the collator's `sample_weight`) and `n_b` its number of label tokens, the loss
    of one optimizer step is `sum_b w_b * NLL_b / sum_b w_b * n_b`, both sums running over every micro-batch of the
    step (and every rank with `average_tokens_across_devices`): `_get_num_items_in_batch` returns the weighted token
    count of the whole step, which `compute_loss` divides each micro-batch's weighted NLL sum by. With all weights 1
    this is TRL's token-level mean. The router's load-balancing loss is added as TRL does (its coefficient is
    `router_aux_loss_coef`, the model config's by default) and logged as `aux_loss`; the collator's counts of truncated,
    dropped and skipped samples are logged as running totals.

    Nothing is trained on less without saying so: the training rows the collator skips (unreadable media) or drops
    (overlong) count, with the rows `train_report` refused at load, against `max_skipped_fraction`, and training stops
    with [`TooManyRowsSkipped`] and the report's summary once it is exceeded. The totals are checkpointed (in
    `trainer_state.json`, see [`CollatorCounts`]) and restored on resume. An optimizer step none of whose micro-batches
    holds a label on any rank (every row skipped) leaves the parameters and the optimizer state unchanged, and is
    counted as `num_steps_without_labels`.

    The dataset is not tokenized ahead of time (`skip_prepare_dataset`): the collator does it on the fly.

    With `moe_lora_impl="routed"` (default) the LoRA wrappers on the routers and fused experts get the routed-token
    forward of [`apply_routed_lora`] (numerically PEFT's, never materialising `W + dW` for every expert); `"peft"`
    keeps PEFT's own wrapper forward ([`apply_peft_lora`], which makes it safe on 4-bit experts).
    """

    # `compute_loss` always divides by the step's weighted token count, so `Trainer` must not divide by the number of
    # accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        moe_lora_impl: str = "routed",
        train_report: DatasetReport | None = None,
        max_skipped_fraction: float = 1.0,
        **kwargs,
    ):
        check_moe_lora_impl(moe_lora_impl)
        training_args = kwargs.get("args")
        if training_args is not None:
            # The raw `conversations` column must reach the collator untouched.
            training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
            training_args.remove_unused_columns = False
        with silence_false_expert_rank_warning():
            super().__init__(*args, **kwargs)
        apply_expert_lora(self.model, moe_lora_impl)
        self._logits_wanted = True
        self.collator_counts = CollatorCounts()
        self.add_callback(self.collator_counts)
        self.train_report, self.max_skipped_fraction = train_report, max_skipped_fraction

    @property
    def _collator_totals(self) -> dict[str, dict[str, int]]:
        return self.collator_counts.totals

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        # Whether any rank has a label in this step: the same answer on every rank, so all skip or none
        labels = sum(int((batch["labels"][..., 1:] != IGNORE_INDEX).sum()) for batch in batch_samples)
        labels = int(self.accelerator.gather(torch.tensor([labels], device=device)).sum())
        self.collator_counts.step_has_labels = labels > 0 or not batch_samples
        if not self.collator_counts.step_has_labels:
            self.collator_counts.totals["train"]["num_steps_without_labels"] += 1
            logger.warning(
                f"Optimizer step {self.state.global_step + 1}: no row of its {len(batch_samples)} "
                "micro-batch(es) has a label (all skipped); the parameters are left unchanged."
            )
        return batch_samples, num_items_in_batch

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        if not batch_samples or "sample_weight" not in batch_samples[0] or "labels" not in batch_samples[0]:
            return super()._get_num_items_in_batch(batch_samples, device)
        # The model predicts label t from position t - 1, so label 0 is never a target.
        weighted_count = sum(
            ((batch["labels"][..., 1:] != IGNORE_INDEX).sum(-1).float() * batch["sample_weight"].float()).sum()
            for batch in batch_samples
        ).to(device)
        return items_in_batch_over_processes(self, weighted_count)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        mode = "train" if self.model.training else "eval"
        self._record_collator_stats({key: inputs.pop(key) for key in STAT_KEYS if key in inputs}, mode)
        sample_weight = inputs.pop("sample_weight", None)
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True

        outputs = model(**inputs, fused_lm_head=True)
        per_token_loss = -outputs.log_probs  # zero where the label is -100
        token_weight = outputs.label_mask.to(per_token_loss.dtype)
        if sample_weight is not None:
            token_weight = token_weight * sample_weight.to(per_token_loss.dtype)[:, None]
            per_token_loss = per_token_loss * sample_weight.to(per_token_loss.dtype)[:, None]
        denominator = token_weight.sum() if num_items_in_batch is None else num_items_in_batch
        # Clamped so that a micro-batch without trainable tokens gives a finite zero
        loss = per_token_loss.sum() / torch.as_tensor(denominator, device=per_token_loss.device).clamp(min=1e-6)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # The denominator counts every rank's tokens and DDP averages the gradients across ranks
            loss = loss * self.accelerator.num_processes
        if self.aux_loss_enabled:
            # A per-micro-batch mean: averaged over the accumulation steps, like in `SFTTrainer`
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        if self.is_fsdp_enabled:
            loss = loss + 0.0 * sum(parameter.sum() for parameter in self._tower_trainable_parameters(model))
        self._record_metrics(inputs, outputs, mode)

        if return_outputs and self._logits_wanted:
            # The fused head gives no logits; `predict` / `compute_metrics` need them, so run the plain head once more.
            with torch.no_grad():
                outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _tower_trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The trainable parameters of the audio and vision towers (`--lora_towers`), which `compute_loss` adds to the
        loss with weight 0 under FSDP.

        A tower runs only on the ranks whose batch holds its modality, but every rank must reduce-scatter the same
        gradients of the FSDP unit that holds the towers (the root unit, see `qwen_omni.common.launching.
        shard_by_decoder_layer`): a rank whose tower did not run would send fewer and the collective would fail
        ("Received data size doesn't match expected size") or hang. The zero term gives such a rank the zero gradients
        its loss has. The parameters are read from the model at each step: FSDP2 keeps the root unit's parameters
        gathered from the forward to the backward, so these are whole tensors.
        """
        prefixes = tuple(f".{prefix}" for prefix in TOWER_PREFIXES.values())
        return [
            parameter
            for name, parameter in model.named_parameters()
            if parameter.requires_grad and any(prefix in f".{name}" for prefix in prefixes)
        ]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # `evaluate` without `compute_metrics` asks for the loss alone: then the fused forward is the only one.
        self._logits_wanted = not prediction_loss_only
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self._logits_wanted = True

    def _record_metrics(self, inputs: dict[str, Any], outputs: Any, mode: str) -> None:
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(outputs.label_mask.sum()).sum()
        entropy_sum = gather(outputs.entropy.detach().sum()).sum()
        num_correct = gather(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if self.aux_loss_enabled:
            self._metrics[mode]["aux_loss"].append(gather(outputs.aux_loss.detach()).mean().item())

    def _record_collator_stats(self, stats: dict[str, torch.Tensor], mode: str) -> None:
        for key, value in stats.items():
            self._collator_totals[mode][key] += int(self.accelerator.gather_for_metrics(value.reshape(1)).sum().item())
            self._metrics[mode][key] = [self._collator_totals[mode][key]]
        if mode == "train" and self.train_report is not None:
            # the totals are gathered, so every rank decides alike
            self.train_report.collator_counts = dict(self._collator_totals["train"])
            self.train_report.check(self.max_skipped_fraction)


class CollatorCounts(TrainerCallback, ExportableState):
    """The collator's running totals per mode (`STAT_KEYS`, plus `num_steps_without_labels`), saved in each
    checkpoint's `trainer_state.json` and restored from it on resume, so that the counts and the
    `--max_skipped_fraction` check cover the whole run; also clears the gradients of a step without labels before the
    optimizer sees them (a parameter without gradient is not updated, nor its optimizer state)."""

    def __init__(self, totals: dict[str, dict[str, int]] | None = None):
        keys = (*STAT_KEYS, "num_steps_without_labels")
        self.totals = totals or {mode: dict.fromkeys(keys, 0) for mode in ("train", "eval")}
        self.step_has_labels = True

    def state(self) -> dict:
        return {"args": {"totals": copy.deepcopy(self.totals)}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and saved:
            for mode, counts in saved["args"]["totals"].items():
                self.totals[mode].update(counts)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if not self.step_has_labels:
            optimizer.zero_grad(set_to_none=True)
