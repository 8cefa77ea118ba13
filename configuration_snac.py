# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
SNAC codec configuration and the SNAC token layout: where codec codes live in the Omni vocabulary.

Both are plain Python (no torch), so that configs, processors and tools read the layout without loading a tensor
library; the codec itself is [`SNACAudioTokenizer`] in `modeling_snac.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


class SNACTokenLayout:
    r"""
    Where SNAC codes live in the shared text + audio vocabulary: the one definition that the model config, the
    processor and generation read.

    A SNAC codec with `vq_strides = [s_0, ..., s_{K-1}]` emits, for every code of its coarsest codebook (one *frame*),
    `s_0 // s_k` codes of codebook `k`. These codes form a tree (each code of codebook `k` has `s_k // s_{k+1}`
    children in codebook `k + 1`); a frame is written as the depth-first pre-order walk of that tree. For the 24 kHz
    codec (`vq_strides=[4, 2, 1]`) this gives 7 tokens per frame in the order
    `c0[i], c1[2i], c2[4i], c2[4i+1], c1[2i+1], c2[4i+2], c2[4i+3]` (the Orpheus order); for the 32/44 kHz codecs
    (`[8, 4, 2, 1]`) it gives 15.

    Each position `p` of a frame owns the id block `[audio_token_offset + p * codebook_size,
    audio_token_offset + (p + 1) * codebook_size)`, so an audio id carries both its code and its place in the frame.
    With `audio_token_offset = 128266` the 24 kHz layout is exactly Orpheus' layout.

    The methods take ids and codes as torch tensors (numbers and numpy arrays work for `is_audio` and
    `frame_position`); they use only the tensors' own operators and methods, so this module imports no tensor library.

    Args:
        vq_strides (`Sequence[int]`):
            The codec's `vq_strides`, coarsest codebook first ([`SNACConfig.vq_strides`]).
        codebook_size (`int`):
            Number of codes per codebook (4096 for the released codecs).
        audio_token_offset (`int`):
            Id of the first audio token: the size of the text vocabulary including its special tokens.
    """

    def __init__(self, vq_strides: Sequence[int], codebook_size: int, audio_token_offset: int):
        vq_strides = [int(stride) for stride in vq_strides]
        if (
            not vq_strides
            or any(coarse % fine or coarse < fine for coarse, fine in zip(vq_strides, vq_strides[1:]))
            or vq_strides[-1] < 1
        ):
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

    def is_audio(self, token_ids):
        """Boolean mask (or bool, for one id) of the ids that are audio tokens."""
        return (token_ids >= self.audio_token_offset) & (token_ids < self.vocab_end)

    def frame_position(self, token_ids):
        """Frame position of each audio id (undefined for text ids)."""
        return (token_ids - self.audio_token_offset) // self.codebook_size

    def codes_to_ids(self, codes: Sequence):
        """
        Interleave SNAC codes into token ids.

        Args:
            codes (`Sequence[torch.Tensor]`): one `(batch, num_frames * codes_per_frame[k])` (or unbatched 1-D)
                integer tensor per codebook, as [`SNACAudioTokenizer.encode`] and `snac.SNAC.encode` return them.

        Returns:
            `torch.LongTensor` of shape `(batch, num_frames * tokens_per_frame)` (1-D for unbatched input).
        """
        if len(codes) != self.num_codebooks:
            raise ValueError(
                f"Expected {self.num_codebooks} codebooks (vq_strides={self.vq_strides}), got {len(codes)}."
            )
        unbatched = codes[0].dim() == 1
        codes = [code.unsqueeze(0) if unbatched else code for code in codes]
        batch_size, num_frames = codes[0].shape
        frames = []
        for level, code in enumerate(codes):
            if tuple(code.shape) != (batch_size, num_frames * self.codes_per_frame[level]):
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
        ids = frames[0].new_empty((batch_size, num_frames, self.tokens_per_frame))
        for position, (level, index) in enumerate(self.frame_order):
            ids[:, :, position] = frames[level][:, :, index] + self.block_start(position)
        ids = ids.reshape(batch_size, num_frames * self.tokens_per_frame)
        return ids[0] if unbatched else ids

    def ids_to_codes(self, token_ids) -> list:
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
        codes_by_position = frames.clone()
        for position in range(self.tokens_per_frame):
            codes_by_position[:, :, position] -= self.block_start(position)
        invalid = (codes_by_position < 0) | (codes_by_position >= self.codebook_size)
        if invalid.any():
            batch_index, frame, position = (int(i) for i in invalid.nonzero()[0])
            raise ValueError(
                f"Token id {int(frames[batch_index, frame, position])} at frame {frame}, position {position} is not an "
                f"audio id of that position (allowed [{self.block_start(position)}, "
                f"{self.block_start(position) + self.codebook_size})); {int(invalid.sum())} invalid ids in total."
            )
        codes = [frames.new_empty((batch_size, num_frames, per_frame)) for per_frame in self.codes_per_frame]
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
class SNACConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SNACAudioTokenizer`]: the keyword arguments of
    [`snac.SNAC`](https://github.com/hubertsiuzdak/snac), under the same names, so that a codec in SNAC's own layout
    (`config.json` + `pytorch_model.bin`, e.g. `hubertsiuzdak/snac_24khz`) loads with `from_pretrained` as is.

    The defaults are `hubertsiuzdak/snac_24khz`'s, the codec of the Omni model's default layout (7 tokens per frame,
    Orpheus' layout), which [`OmniConfig`] defaults to as well.

    Args:
        sampling_rate (`int`, *optional*, defaults to 24000): sampling rate of the codec's audio, in Hz.
        encoder_dim (`int`, *optional*, defaults to 48): width of the first encoder block.
        encoder_rates (`list[int]`, *optional*, defaults to `[2, 4, 8, 8]`): the encoder's downsampling rates; their
            product is the hop length (samples per code of the finest codebook).
        latent_dim (`int`, *optional*): width of the latent; `encoder_dim * 2 ** len(encoder_rates)` when `None`.
        decoder_dim (`int`, *optional*, defaults to 1024): width of the first decoder block.
        decoder_rates (`list[int]`, *optional*, defaults to `[8, 8, 4, 2]`): the decoder's upsampling rates.
        attn_window_size (`int`, *optional*): window of the local attention (32 for the 32/44 kHz codecs); `None`
            for none.
        codebook_size (`int`, *optional*, defaults to 4096): codes per codebook.
        codebook_dim (`int`, *optional*, defaults to 8): dimension of the codebook vectors.
        vq_strides (`list[int]`, *optional*, defaults to `[4, 2, 1]`): temporal stride of each codebook, coarsest
            first.
        noise (`bool`, *optional*, defaults to `True`): whether the decoder adds noise (locked to the frame position
            by [`SNACAudioTokenizer`], see there).
        depthwise (`bool`, *optional*, defaults to `True`): depthwise convolutions.
    """

    model_type = "snac"

    sampling_rate: int = 24000
    encoder_dim: int = 48
    encoder_rates: list[int] | tuple[int, ...] = (2, 4, 8, 8)
    latent_dim: int | None = None
    decoder_dim: int = 1024
    decoder_rates: list[int] | tuple[int, ...] = (8, 8, 4, 2)
    attn_window_size: int | None = None
    codebook_size: int = 4096
    codebook_dim: int = 8
    vq_strides: list[int] | tuple[int, ...] = (4, 2, 1)
    noise: bool = True
    depthwise: bool = True

    def __post_init__(self, **kwargs):
        self.encoder_rates = list(self.encoder_rates)
        self.decoder_rates = list(self.decoder_rates)
        self.vq_strides = list(self.vq_strides)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: the strides must form a code tree (see [`SNACTokenLayout`])."""
        self.token_layout()

    @property
    def snac_kwargs(self) -> dict:
        """The keyword arguments of `snac.SNAC` these settings describe."""
        names = ("sampling_rate", "encoder_dim", "encoder_rates", "latent_dim", "decoder_dim", "decoder_rates")
        names += ("attn_window_size", "codebook_size", "codebook_dim", "vq_strides", "noise", "depthwise")
        return {name: getattr(self, name) for name in names}

    @property
    def hop_length(self) -> int:
        """Waveform samples per code of the finest codebook."""
        return math.prod(self.encoder_rates)

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per frame (one code of the coarsest codebook)."""
        return self.hop_length * self.vq_strides[0]

    @property
    def frames_per_window(self) -> int:
        """Frames the codec's local attention needs as a unit (1 for codecs without attention, e.g. 24 kHz)."""
        return math.lcm(self.vq_strides[0], self.attn_window_size or 1) // self.vq_strides[0]

    def token_layout(self, audio_token_offset: int = 0) -> SNACTokenLayout:
        """The [`SNACTokenLayout`] of this codec's codes, its first audio id at `audio_token_offset`."""
        return SNACTokenLayout(self.vq_strides, self.codebook_size, audio_token_offset)


__all__ = ["SNACConfig", "SNACTokenLayout"]
