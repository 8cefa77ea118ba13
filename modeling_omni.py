# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Omni: a Qwen3 decoder over one vocabulary of text tokens and SNAC audio tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTextToWaveform
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM
from transformers.utils import logging

from .configuration_omni import IGNORE_INDEX, OmniConfig
from .generation_omni import OmniGenerationMixin


logger = logging.get_logger(__name__)


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The target of each position: the next label (labels shifted left by one, `IGNORE_INDEX` at the end)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


@dataclass
class OmniCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    Output of [`OmniForCausalLM`]: a causal LM output whose `loss` weighs each target by its modality.

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):
            Cross-entropy weighted by `text_loss_weight` / `audio_loss_weight`, divided by the summed weight of the
            non-ignored targets (or by `num_items_in_batch` when the trainer passes it).
        text_loss (`torch.FloatTensor`, *optional*):
            Unweighted mean cross-entropy over the text (and special-token) targets; NaN when there are none.
        audio_loss (`torch.FloatTensor`, *optional*):
            Unweighted mean cross-entropy over the audio targets (audio tokens and audio-end); NaN when there are none.
    """

    text_loss: torch.FloatTensor | None = None
    audio_loss: torch.FloatTensor | None = None


class OmniForCausalLM(OmniGenerationMixin, Qwen3ForCausalLM):
    r"""
    A Qwen3 causal LM whose vocabulary holds text tokens, special tokens and SNAC audio tokens
    (see [`SNACTokenLayout`]). Parameter names equal Qwen3's, so Qwen3 state dicts load into it unchanged; all of
    Qwen3's machinery (sdpa / eager / flash-attention, KV cache, gradient checkpointing, `generate`) is reused.

    The loss weighs each target token by its modality (`config.text_loss_weight`, `config.audio_loss_weight`) and
    divides by the summed weight of the non-ignored targets; under gradient accumulation the trainer passes that
    sum for the whole accumulated batch as `num_items_in_batch` (see [`~OmniForCausalLM.loss_weights`]).

    `generate` is transformers' own with speech-aware hooks (see [`OmniGenerationMixin`]): constrained decoding and
    the fast audio head by default, `max_duration=` in seconds, the standard `streamer=` argument.
    """

    config_class = OmniConfig
    config: OmniConfig
    # `pipeline("text-to-speech")` loads the model through this auto class (see `save_pretrained`)
    _text_to_waveform_auto_class = "AutoModelForTextToWaveform"

    def loss_weights(self, labels: torch.Tensor, shift_labels: torch.Tensor | None = None) -> torch.Tensor:
        """
        Weight of each next-token target: `audio_loss_weight` for audio ids and the audio-end token,
        `text_loss_weight` for every other id, 0 for ignored (`-100`) targets.

        Args:
            labels (`torch.LongTensor` of shape `(batch, seq_len)`): unshifted labels, as passed to `forward`.
            shift_labels (`torch.LongTensor`, *optional*): already shifted targets; used instead of `labels`.

        Returns:
            `torch.FloatTensor` of the same shape as the targets. Its sum over an accumulated batch is the
            `num_items_in_batch` that makes the loss exact under gradient accumulation.
        """
        targets = shift_labels if shift_labels is not None else next_token_targets(labels)
        return self._weights_and_audio_mask(targets)[0]

    def _weights_and_audio_mask(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        is_audio = self.config.is_audio_target(targets)
        weights = torch.where(is_audio, self.config.audio_loss_weight, self.config.text_loss_weight)
        return weights.masked_fill(targets == IGNORE_INDEX, 0.0).float(), is_audio

    def _modality_weighted_loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        shift_labels: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        targets = shift_labels if shift_labels is not None else next_token_targets(labels)
        targets = targets.to(logits.device)
        token_loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view_as(targets)
        weights, is_audio = self._weights_and_audio_mask(targets)
        denominator = num_items_in_batch if num_items_in_batch is not None else weights.sum()
        if torch.is_tensor(denominator):
            denominator = denominator.to(token_loss.device)
        loss = (token_loss * weights).sum() / denominator

        with torch.no_grad():
            valid = targets != IGNORE_INDEX
            audio_mask, text_mask = valid & is_audio, valid & ~is_audio
            text_loss = (token_loss * text_mask).sum() / text_mask.sum()
            audio_loss = (token_loss * audio_mask).sum() / audio_mask.sum()
        return loss, text_loss, audio_loss

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> OmniCausalLMOutputWithPast:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Targets, unshifted (the model shifts them); `-100` marks positions without loss.
            shift_labels (`torch.LongTensor`, *optional*):
                Already shifted targets (e.g. from a packing collator); used instead of `labels`.
            num_items_in_batch (`torch.Tensor` or `int`, *optional*):
                Summed loss weight of the whole accumulated batch (see [`~OmniForCausalLM.loss_weights`]); the loss
                is divided by it instead of this micro-batch's summed weight.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = text_loss = audio_loss = None
        if labels is not None or shift_labels is not None:
            loss, text_loss, audio_loss = self._modality_weighted_loss(
                logits, labels, shift_labels, num_items_in_batch
            )

        return OmniCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            text_loss=text_loss,
            audio_loss=audio_loss,
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; the saved `auto_map` also names the model for `AutoModelForTextToWaveform`,
        the auto class `pipeline("text-to-speech", trust_remote_code=True)` asks for."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map[self._text_to_waveform_auto_class] = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


# Local Auto-class registration, and the `auto_map` that `save_pretrained` writes for trust_remote_code loading.
AutoConfig.register(OmniConfig.model_type, OmniConfig, exist_ok=True)
AutoModelForCausalLM.register(OmniConfig, OmniForCausalLM, exist_ok=True)
AutoModelForTextToWaveform.register(OmniConfig, OmniForCausalLM, exist_ok=True)
OmniConfig.register_for_auto_class()
OmniForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["OmniCausalLMOutputWithPast", "OmniForCausalLM"]
