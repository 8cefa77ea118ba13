# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The voice recipe's model wrapper (its loss inside the DDP / PEFT-wrapped call) and `Trainer`."""

from __future__ import annotations

from transformers import Qwen3OmniMoeForConditionalGeneration, Trainer

from ...common.launching import CompleteCheckpointsMixin
from .examples import TalkerVoiceExample, collate_talker_voice, talker_voice_examples_forward
from .speakers import write_talker_voice_config, write_voice_preservation


class TalkerVoiceModel(Qwen3OmniMoeForConditionalGeneration):
    """The full model with one more way to call it: `model(examples=..., speaker_codec_id=...)` is
    [`talker_voice_examples_forward`], so that the voice loss runs through the model's own call, inside whatever
    wraps it (PEFT, and DDP, whose gradient synchronisation its forward sets up). Every other call is the model's own
    forward. [`TalkerVoiceTrainer`] gives the model it trains this class (parameters, state-dict keys and saving are
    unchanged)."""

    def forward(
        self,
        *args,
        examples: list[TalkerVoiceExample] | None = None,
        speaker_codec_id: int | None = None,
        preserve_weight: float = 1.0,
        preserve_loss: str = "codes",
        **kwargs,
    ):
        if examples is None:
            return super().forward(*args, **kwargs)
        return talker_voice_examples_forward(self, examples, speaker_codec_id, preserve_weight, preserve_loss)


class TalkerVoiceTrainer(CompleteCheckpointsMixin, Trainer):
    """`Trainer` whose loss is [`talker_voice_forward`]'s, with `talker_loss` and `code_predictor_loss` logged
    separately (averaged over the steps since the last log, on every backend `report_to` names: TensorBoard, ...), and
    its checkpoints marked complete ([`CompleteCheckpointsMixin`]).

    With `preserve_examples` ([`build_preserve_examples`]), every training batch of the new voice's clips also takes
    the next `preserve_batch_size` of them (in turn, each process its own), weighted by `preserve_weight`, and
    `preserve_talker_loss` / `preserve_code_predictor_loss` are logged too.

    Args:
        speaker_codec_id: codec id of the speaker trained.
        talker_voice_config: what [`write_talker_voice_config`] saves next to every adapter checkpoint.
        preserve_examples, preserve_batch_size, preserve_weight: the preserved speakers' examples, how many join
            each batch, and the weight of their loss.
        voice_preservation: what [`write_voice_preservation`] saves next to every adapter checkpoint.
    """

    def __init__(
        self,
        *args,
        speaker_codec_id: int,
        talker_voice_config: dict,
        preserve_examples: list[TalkerVoiceExample] | None = None,
        preserve_batch_size: int = 1,
        preserve_weight: float = 1.0,
        preserve_loss: str = "codes",
        voice_preservation: dict | None = None,
        **kwargs,
    ):
        kwargs.setdefault("data_collator", collate_talker_voice)
        super().__init__(*args, **kwargs)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if not isinstance(base, TalkerVoiceModel):
            base.__class__ = TalkerVoiceModel
        self.speaker_codec_id = speaker_codec_id
        self.talker_voice_config = talker_voice_config
        self.preserve_examples = preserve_examples or []
        self.preserve_batch_size = preserve_batch_size
        self.preserve_weight = preserve_weight
        self.preserve_loss = preserve_loss
        self.voice_preservation = voice_preservation
        self._preserve_draw = None
        # (sum, steps) of each logged loss: a preserved batch without frames has no code-predictor term that step
        self._loss_sums = {"talker_loss": (0.0, 0), "code_predictor_loss": (0.0, 0)}
        if self.preserve_examples:
            self._loss_sums.update(preserve_talker_loss=(0.0, 0), preserve_code_predictor_loss=(0.0, 0))

    def _next_preserve_batch(self) -> list[TalkerVoiceExample]:
        """The preserved speakers' examples of this micro-batch: the next `preserve_batch_size` in turn, each process
        its own, counted from the optimizer step (so a resumed run takes up where it stopped)."""
        if self._preserve_draw is None:
            self._preserve_draw = self.state.global_step * self.args.gradient_accumulation_steps
        draw = self._preserve_draw * self.args.world_size + self.args.process_index
        self._preserve_draw += 1
        count = len(self.preserve_examples)
        return [
            self.preserve_examples[(draw * self.preserve_batch_size + i) % count]
            for i in range(self.preserve_batch_size)
        ]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        examples = inputs["examples"]
        if model.training and self.preserve_examples:
            examples = examples + self._next_preserve_batch()
        # through the (DDP-wrapped) model's call, so that DDP synchronises the gradients
        outputs = model(
            examples=examples,
            speaker_codec_id=self.speaker_codec_id,
            preserve_weight=self.preserve_weight,
            preserve_loss=self.preserve_loss,
        )
        if model.training:
            for key, (total, steps) in self._loss_sums.items():
                value = getattr(outputs, key)
                if value is not None:
                    self._loss_sums[key] = (total + value.detach().item(), steps + 1)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for key, (total, steps) in self._loss_sums.items():
                if steps:
                    logs[key] = round(total / steps, 4)
                self._loss_sums[key] = (0.0, 0)
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            write_talker_voice_config(output_dir, **self.talker_voice_config)
            if self.voice_preservation is not None:
                write_voice_preservation(output_dir, self.voice_preservation)
