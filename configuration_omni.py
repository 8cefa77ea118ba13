# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Omni model configuration and the SNAC token layout (the one place that maps codec codes to vocabulary ids)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from huggingface_hub.dataclasses import strict
from transformers import Qwen3Config
from transformers.utils import logging


logger = logging.get_logger(__name__)


class SNACTokenLayout:
    r"""
    Where SNAC codes live in the shared text + audio vocabulary.

    A SNAC codec with `vq_strides = [s_0, ..., s_{K-1}]` emits, for every code of its coarsest codebook (one *frame*),
    `s_0 // s_k` codes of codebook `k`. These codes form a tree (each code of codebook `k` has `s_k // s_{k+1}`
    children in codebook `k + 1`); a frame is written as the depth-first pre-order walk of that tree. For the 24 kHz
    codec (`vq_strides=[4, 2, 1]`) this gives 7 tokens per frame in the order
    `c0[i], c1[2i], c2[4i], c2[4i+1], c1[2i+1], c2[4i+2], c2[4i+3]` (the Orpheus order); for the 32/44 kHz codecs
    (`[8, 4, 2, 1]`) it gives 15.

    Each position `p` of a frame owns the id block `[audio_token_offset + p * codebook_size,
    audio_token_offset + (p + 1) * codebook_size)`, so an audio id carries both its code and its place in the frame.
    With `audio_token_offset = 128266` the 24 kHz layout is exactly Orpheus' layout.

    Args:
        vq_strides (`Sequence[int]`):
            The codec's `vq_strides`, coarsest codebook first (`snac.SNAC.vq_strides`).
        codebook_size (`int`):
            Number of codes per codebook (`snac.SNAC.codebook_size`, 4096 for the released codecs).
        audio_token_offset (`int`):
            Id of the first audio token: the size of the text vocabulary including its special tokens.
    """

    def __init__(self, vq_strides: Sequence[int], codebook_size: int, audio_token_offset: int):
        vq_strides = [int(stride) for stride in vq_strides]
        if not vq_strides or any(
            coarse % fine or coarse < fine for coarse, fine in zip(vq_strides, vq_strides[1:])
        ) or vq_strides[-1] < 1:
            raise ValueError(
                f"vq_strides={vq_strides} do not form a code tree: each stride must be a positive multiple of the "
                "next one, coarsest first (e.g. [4, 2, 1] for the 24 kHz SNAC, [8, 4, 2, 1] for 32/44 kHz)."
            )
        if codebook_size < 1 or audio_token_offset < 0:
            raise ValueError(
                f"codebook_size={codebook_size} must be positive and audio_token_offset={audio_token_offset} "
                "must be non-negative."
            )
        self.vq_strides = vq_strides
        self.codebook_size = int(codebook_size)
        self.audio_token_offset = int(audio_token_offset)
        self.num_codebooks = len(vq_strides)
        # codes of codebook k per frame
        self.codes_per_frame = [vq_strides[0] // stride for stride in vq_strides]
        # (codebook, index of the code inside the frame) for each frame position, in depth-first pre-order
        self.frame_order: list[tuple[int, int]] = []

        def walk(level: int, index: int) -> None:
            self.frame_order.append((level, index))
            if level + 1 < self.num_codebooks:
                branching = vq_strides[level] // vq_strides[level + 1]
                for child in range(branching):
                    walk(level + 1, index * branching + child)

        walk(0, 0)
        self.tokens_per_frame = len(self.frame_order)

    @property
    def num_audio_tokens(self) -> int:
        """Number of ids the audio blocks take: `tokens_per_frame * codebook_size`."""
        return self.tokens_per_frame * self.codebook_size

    @property
    def vocab_end(self) -> int:
        """One past the last audio id: the smallest vocabulary that holds the layout."""
        return self.audio_token_offset + self.num_audio_tokens

    def block_start(self, position: int) -> int:
        """First id of the block owned by frame position `position`."""
        return self.audio_token_offset + position * self.codebook_size

    def is_audio(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the ids that are audio tokens."""
        return (token_ids >= self.audio_token_offset) & (token_ids < self.vocab_end)

    def frame_position(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Frame position of each audio id (undefined for text ids)."""
        return torch.div(token_ids - self.audio_token_offset, self.codebook_size, rounding_mode="floor")

    def codes_to_ids(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Interleave SNAC codes into token ids.

        Args:
            codes (`Sequence[torch.Tensor]`): one `(batch, num_frames * codes_per_frame[k])` (or unbatched 1-D)
                integer tensor per codebook, as returned by `snac.SNAC.encode`.

        Returns:
            `torch.LongTensor` of shape `(batch, num_frames * tokens_per_frame)` (1-D for unbatched input).
        """
        if len(codes) != self.num_codebooks:
            raise ValueError(f"Expected {self.num_codebooks} codebooks (vq_strides={self.vq_strides}), got {len(codes)}.")
        unbatched = codes[0].dim() == 1
        codes = [code.unsqueeze(0) if unbatched else code for code in codes]
        batch_size, num_frames = codes[0].shape
        frames = []
        for level, code in enumerate(codes):
            if code.shape != (batch_size, num_frames * self.codes_per_frame[level]):
                raise ValueError(
                    f"Codebook {level} has shape {tuple(code.shape)}; with {num_frames} frames it must be "
                    f"{(batch_size, num_frames * self.codes_per_frame[level])}."
                )
            if code.numel() and (code.min() < 0 or code.max() >= self.codebook_size):
                raise ValueError(
                    f"Codebook {level} holds codes outside [0, {self.codebook_size}): "
                    f"min {int(code.min())}, max {int(code.max())}."
                )
            frames.append(code.long().reshape(batch_size, num_frames, self.codes_per_frame[level]))
        ids = torch.stack(
            [frames[level][:, :, index] + self.block_start(position) for position, (level, index) in enumerate(self.frame_order)],
            dim=-1,
        ).reshape(batch_size, num_frames * self.tokens_per_frame)
        return ids[0] if unbatched else ids

    def ids_to_codes(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """
        Split audio token ids back into SNAC codes: the exact inverse of [`~SNACTokenLayout.codes_to_ids`].

        Args:
            token_ids (`torch.Tensor`): `(batch, num_frames * tokens_per_frame)` or 1-D audio ids, whole frames only.

        Raises:
            `ValueError` if the length is not a whole number of frames or an id is outside its position's block.
        """
        unbatched = token_ids.dim() == 1
        token_ids = token_ids.unsqueeze(0) if unbatched else token_ids
        batch_size, length = token_ids.shape
        if length % self.tokens_per_frame:
            raise ValueError(
                f"{length} audio tokens are not a whole number of frames of {self.tokens_per_frame} tokens "
                f"({length % self.tokens_per_frame} left over); trim the sequence to a multiple of "
                f"{self.tokens_per_frame}."
            )
        num_frames = length // self.tokens_per_frame
        frames = token_ids.long().reshape(batch_size, num_frames, self.tokens_per_frame)
        starts = torch.tensor([self.block_start(p) for p in range(self.tokens_per_frame)], device=token_ids.device)
        codes_by_position = frames - starts
        invalid = (codes_by_position < 0) | (codes_by_position >= self.codebook_size)
        if invalid.any():
            batch_index, frame, position = (int(i) for i in invalid.nonzero()[0])
            raise ValueError(
                f"Token id {int(frames[batch_index, frame, position])} at frame {frame}, position {position} is not an "
                f"audio id of that position (allowed [{self.block_start(position)}, "
                f"{self.block_start(position) + self.codebook_size})); {int(invalid.sum())} invalid ids in total."
            )
        codes = [
            torch.empty(batch_size, num_frames, per_frame, dtype=torch.long, device=token_ids.device)
            for per_frame in self.codes_per_frame
        ]
        for position, (level, index) in enumerate(self.frame_order):
            codes[level][:, :, index] = codes_by_position[:, :, position]
        codes = [code.reshape(batch_size, -1) for code in codes]
        return [code[0] for code in codes] if unbatched else codes

    def to_dict(self) -> dict:
        return {
            "vq_strides": list(self.vq_strides),
            "codebook_size": self.codebook_size,
            "audio_token_offset": self.audio_token_offset,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SNACTokenLayout) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"SNACTokenLayout(vq_strides={self.vq_strides}, codebook_size={self.codebook_size}, "
            f"audio_token_offset={self.audio_token_offset}, tokens_per_frame={self.tokens_per_frame})"
        )


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
    codebook_size: int = 4096
    vq_strides: list[int] | None = None
    codec_sampling_rate: int = 24000
    codec_hop_length: int = 512
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
            self.vq_strides = [4, 2, 1]
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

    def is_audio_target(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Which ids count as audio for the loss weights and per-modality metrics: audio ids and audio-end (the
        decision to stop speaking belongs to the audio stream); every other id counts as text."""
        is_audio = self.token_layout.is_audio(token_ids)
        if self.audio_end_token_id is not None:
            is_audio |= token_ids == self.audio_end_token_id
        return is_audio

    @property
    def samples_per_frame(self) -> int:
        """Audio samples covered by one frame of `tokens_per_frame` tokens."""
        return self.codec_hop_length * self.vq_strides[0]


__all__ = ["OmniConfig", "SNACTokenLayout"]
