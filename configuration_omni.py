# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Omni model configuration (plain Python: the token layout it describes is [`SNACTokenLayout`], no tensor library)."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import Qwen3Config
from transformers.utils import logging

from .configuration_snac import SNACConfig, SNACTokenLayout


# Targets with this label carry no loss (the label convention of transformers' losses), in the model and the processor.
IGNORE_INDEX = -100


logger = logging.get_logger(__name__)


@strict
class OmniConfig(Qwen3Config):
    r"""
    Configuration of an [`OmniForCausalLM`]: a Qwen3 decoder whose vocabulary holds text tokens, a few special tokens
    and SNAC audio tokens. Every Qwen3 argument (`hidden_size`, `num_hidden_layers`, ...) keeps its meaning; the
    arguments below describe the audio part of the vocabulary and the loss.

    The vocabulary is laid out as `[text tokens | special tokens | audio blocks | unused padding]`: ids below
    `audio_token_offset` belong to the tokenizer, then come `tokens_per_frame` blocks of `codebook_size` audio ids
    (see [`SNACTokenLayout`]). `vocab_size` may be larger than the end of the audio blocks (rounded up for speed).

    Args:
        audio_token_offset (`int`, *optional*, defaults to 0):
            Id of the first audio token; equals the tokenizer's length (text vocabulary plus special tokens).
        codebook_size (`int`, *optional*, defaults to 4096):
            Codes per SNAC codebook.
        vq_strides (`list[int]`, *optional*, defaults to `[4, 2, 1]`):
            The SNAC codec's `vq_strides`, coarsest first; `[4, 2, 1]` for 24 kHz, `[8, 4, 2, 1]` for 32 and 44 kHz.
        codec_sampling_rate (`int`, *optional*, defaults to 24000):
            Sampling rate of the codec's audio, used to turn durations in seconds into frames.
        codec_hop_length (`int`, *optional*, defaults to 512):
            Audio samples per code of the finest codebook; one frame spans `codec_hop_length * vq_strides[0]` samples.

        The codec settings default to [`SNACConfig`]'s (the 24 kHz codec); checkpoints copy them from their codec.
        audio_start_token_id, audio_end_token_id (`int`, *optional*):
            Special tokens that open and close an audio span.
        text_start_token_id, text_end_token_id (`int`, *optional*):
            Special tokens that open and close a text span (the text to speak, or a transcript).
        tts_token_id, asr_token_id (`int`, *optional*):
            Task tokens that start a text-to-speech and a speech-to-text sequence.
        text_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the cross-entropy of targets that are text or special tokens.
        audio_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the cross-entropy of targets that are audio tokens, and of `audio_end_token_id` (the decision
            to stop speaking belongs to the audio stream).

    Example:

    ```python
    >>> from qwen_omni import OmniConfig, OmniForCausalLM

    >>> config = OmniConfig(vocab_size=1000 + 7 * 4096, audio_token_offset=1000, hidden_size=128,
    ...                     intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    ...                     num_key_value_heads=2, head_dim=32)
    >>> config.token_layout.tokens_per_frame
    7
    >>> model = OmniForCausalLM(config)
    ```
    """

    model_type = "omni"

    audio_token_offset: int = 0
    codebook_size: int = SNACConfig.codebook_size
    vq_strides: list[int] | None = None
    codec_sampling_rate: int = SNACConfig.sampling_rate
    codec_hop_length: int = math.prod(SNACConfig.encoder_rates)
    audio_start_token_id: int | None = None
    audio_end_token_id: int | None = None
    text_start_token_id: int | None = None
    text_end_token_id: int | None = None
    tts_token_id: int | None = None
    asr_token_id: int | None = None
    text_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        if self.vq_strides is None:
            self.vq_strides = list(SNACConfig.vq_strides)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: the vocabulary must hold every audio block."""
        super().validate_architecture()
        layout = self.token_layout
        if self.vocab_size < layout.vocab_end:
            raise ValueError(
                f"vocab_size={self.vocab_size} cannot hold the audio tokens: audio_token_offset "
                f"{self.audio_token_offset} + {layout.tokens_per_frame} positions x {self.codebook_size} codes needs "
                f"vocab_size >= {layout.vocab_end}."
            )
        if self.text_loss_weight < 0 or self.audio_loss_weight < 0:
            raise ValueError(
                f"Loss weights must be non-negative, got text_loss_weight={self.text_loss_weight}, "
                f"audio_loss_weight={self.audio_loss_weight}."
            )

    @property
    def token_layout(self) -> SNACTokenLayout:
        """The [`SNACTokenLayout`] these settings describe."""
        return SNACTokenLayout(self.vq_strides, self.codebook_size, self.audio_token_offset)

    def is_audio_target(self, token_ids):
        """Which ids (a tensor) count as audio for the loss weights and per-modality metrics: audio ids and audio-end
        (the decision to stop speaking belongs to the audio stream); every other id counts as text."""
        is_audio = self.token_layout.is_audio(token_ids)
        if self.audio_end_token_id is not None:
            is_audio = is_audio | (token_ids == self.audio_end_token_id)
        return is_audio

    @property
    def samples_per_frame(self) -> int:
        """Audio samples covered by one frame of `tokens_per_frame` tokens."""
        return self.codec_hop_length * self.vq_strides[0]


__all__ = ["OmniConfig", "SNACTokenLayout"]
