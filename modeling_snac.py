# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""SNAC audio tokenizer: the codec of the Omni model (waveform <-> SNAC codes) as a transformers model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForAudioTokenization
from transformers.modeling_utils import PreTrainedAudioTokenizerBase
from transformers.utils import ModelOutput

from .configuration_snac import SNACConfig


# Decoder noise is drawn in chunks of this many time steps, each from its own seed (see `_PositionLockedNoise`).
_NOISE_CHUNK = 4096


class _PositionLockedNoise(torch.nn.Module):
    """
    Drop-in for `snac.layers.NoiseBlock` whose noise is a fixed function of the absolute time step.

    SNAC's decoder adds `randn * linear(x)` at each upsampling block. Fresh noise on every call makes two decodes of
    the same codes differ, and a streamed decode (each window decoded with its own noise) differ from the full one.
    Drawing the noise from seeded chunks indexed by absolute position keeps SNAC's noise statistics while making
    decoding deterministic and window-independent. It keeps the block's `linear`, so parameter names are SNAC's.
    """

    def __init__(self, noise_block: torch.nn.Module, block_index: int, steps_per_frame: int):
        super().__init__()
        self.linear = noise_block.linear
        self.block_index = block_index
        self.steps_per_frame = steps_per_frame
        self.frame_offset = 0

    def _noise(self, start: int, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        first, last = start // _NOISE_CHUNK, (start + length - 1) // _NOISE_CHUNK
        chunks = []
        for chunk in range(first, last + 1):
            generator = torch.Generator().manual_seed(1_000_003 * (self.block_index + 1) + chunk)
            chunks.append(torch.randn(_NOISE_CHUNK, generator=generator))
        noise = torch.cat(chunks)[start - first * _NOISE_CHUNK : start - first * _NOISE_CHUNK + length]
        return noise.to(device=device, dtype=dtype).view(1, 1, length)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        start = self.frame_offset * self.steps_per_frame
        noise = self._noise(start, hidden_states.shape[-1], hidden_states.device, hidden_states.dtype)
        return hidden_states + noise * self.linear(hidden_states)


def _lock_decoder_noise(decoder: torch.nn.Module, config: SNACConfig) -> list[_PositionLockedNoise]:
    """Replace the `NoiseBlock`s of a SNAC decoder by [`_PositionLockedNoise`] and return them, coarsest first."""
    from snac.layers import NoiseBlock

    noise_modules = []
    for module in decoder.modules():
        block = getattr(module, "block", None)
        if not isinstance(block, torch.nn.Sequential):
            continue
        for index, child in enumerate(block):
            if isinstance(child, NoiseBlock):
                block_index = len(noise_modules)
                # decoder time steps per frame after this block's upsampling
                steps_per_frame = config.vq_strides[0] * math.prod(config.decoder_rates[: block_index + 1])
                block[index] = _PositionLockedNoise(child, block_index, steps_per_frame)
                noise_modules.append(block[index])
    return noise_modules


@dataclass
class SNACEncoderOutput(ModelOutput):
    r"""
    audio_codes (`list[torch.LongTensor]`):
        One `(batch_size, num_frames * codes_per_frame[k])` tensor per codebook `k`, coarsest first (SNAC's format).
        Rows shorter than the longest are padded with the codes of the padding.
    num_frames (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
        Frames covering each row's samples (from `padding_mask`): the row's codes are the first
        `num_frames * codes_per_frame[k]` of each codebook.
    """

    audio_codes: list[torch.LongTensor] | None = None
    num_frames: torch.LongTensor | None = None


@dataclass
class SNACDecoderOutput(ModelOutput):
    r"""
    audio_values (`torch.FloatTensor` of shape `(batch_size, num_frames * samples_per_frame)`):
        The decoded waveforms at the codec's sampling rate.
    """

    audio_values: torch.FloatTensor | None = None


class SNACAudioTokenizer(PreTrainedAudioTokenizerBase):
    r"""
    The [SNAC](https://github.com/hubertsiuzdak/snac) codec as a transformers audio tokenizer: `encode` turns
    waveforms into multi-scale codes, `decode` turns codes back into waveforms. It is the `audio_tokenizer` of
    [`OmniProcessor`] (as `DacModel` is Dia's), saved and loaded with `save_pretrained` / `from_pretrained`.

    The modules are `snac.SNAC`'s own (`encoder`, `quantizer`, `decoder`, under SNAC's parameter names), so a codec
    in SNAC's layout (`config.json` + `pytorch_model.bin`, e.g. `hubertsiuzdak/snac_24khz`) loads with
    `SNACAudioTokenizer.from_pretrained` as well. The decoder's noise is locked to the absolute frame position
    (`decode(..., frame_offset=...)`): decoding is deterministic, and a window of a stream decodes as inside the
    full decode.

    Args:
        config ([`SNACConfig`]): the codec's settings.
    """

    config_class = SNACConfig
    config: SNACConfig
    base_model_prefix = "snac"
    main_input_name = "input_values"

    def __init__(self, config: SNACConfig):
        super().__init__(config)
        import snac

        codec = snac.SNAC(**config.snac_kwargs)
        self.encoder = codec.encoder
        self.quantizer = codec.quantizer
        self.decoder = codec.decoder
        self._noise_modules = _lock_decoder_noise(self.decoder, config)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # snac's modules initialise themselves when built (random codecs for tests); checkpoints overwrite them
        pass

    @property
    def token_layout(self):
        """The codes' [`SNACTokenLayout`] with audio ids from 0 (the processor places them in its vocabulary)."""
        return self.config.token_layout()

    def encode(
        self, input_values: torch.Tensor, padding_mask: torch.Tensor | None = None, return_dict: bool = True
    ) -> SNACEncoderOutput | tuple:
        """
        Encode waveforms into SNAC codes, as `snac.SNAC.encode` does (right-padded with silence to whole frames and
        attention windows first).

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, samples)` or `(batch_size, samples)`):
                Mono waveforms at `config.sampling_rate`, e.g. the `input_values` of [`SNACFeatureExtractor`].
            padding_mask (`torch.Tensor` of shape `(batch_size, samples)`, *optional*):
                1 on each row's samples, 0 on its padding; gives `num_frames` per row.

        Returns:
            [`SNACEncoderOutput`] (or the tuple `(audio_codes, num_frames)`).
        """
        if input_values.dim() == 2:
            input_values = input_values.unsqueeze(1)
        if input_values.dim() != 3 or input_values.shape[1] != 1:
            raise ValueError(
                f"input_values must be mono waveforms of shape (batch, 1, samples) or (batch, samples), got "
                f"{tuple(input_values.shape)}."
            )
        samples = input_values.shape[-1]
        unit = self.config.samples_per_frame * self.config.frames_per_window
        padded = torch.nn.functional.pad(input_values, (0, math.ceil(samples / unit) * unit - samples))
        _, codes = self.quantizer(self.encoder(padded.to(device=self.device, dtype=self.dtype)))
        lengths = padding_mask.sum(dim=-1) if padding_mask is not None else torch.full((len(padded),), samples)
        num_frames = torch.clamp((lengths + self.config.samples_per_frame - 1) // self.config.samples_per_frame, min=1)
        max_frames = int(num_frames.max())
        layout = self.token_layout
        codes = [code[:, : max_frames * per_frame] for code, per_frame in zip(codes, layout.codes_per_frame)]
        if not return_dict:
            return codes, num_frames
        return SNACEncoderOutput(audio_codes=codes, num_frames=num_frames.to(codes[0].device))

    def decode(
        self, audio_codes: list[torch.Tensor], frame_offset: int = 0, return_dict: bool = True
    ) -> SNACDecoderOutput | tuple:
        """
        Decode SNAC codes into waveforms.

        Args:
            audio_codes (`list[torch.LongTensor]`): one `(batch_size, num_frames * codes_per_frame[k])` tensor per
                codebook (1-D tensors for one unbatched sequence).
            frame_offset (`int`, *optional*, defaults to 0): absolute index of the first frame, so that a window of
                a longer stream is decoded with the same decoder noise as inside the full decode.

        Returns:
            [`SNACDecoderOutput`] with `audio_values` of shape `(batch_size, num_frames * samples_per_frame)` (1-D
            for unbatched codes), float32.
        """
        unbatched = audio_codes[0].dim() == 1
        codes = [(code.unsqueeze(0) if unbatched else code).long().to(self.device) for code in audio_codes]
        layout = self.token_layout
        num_frames = codes[0].shape[-1] // layout.codes_per_frame[0]
        # the decoder's local attention needs whole windows: pad with code 0, decode, then trim
        window = self.config.frames_per_window
        padded_frames = math.ceil(num_frames / window) * window
        if padded_frames != num_frames:
            codes = [
                torch.nn.functional.pad(code, (0, (padded_frames - num_frames) * per_frame))
                for code, per_frame in zip(codes, layout.codes_per_frame)
            ]
        for module in self._noise_modules:
            module.frame_offset = frame_offset
        audio = self.decoder(self.quantizer.from_codes(codes))
        audio = audio[:, 0, : num_frames * self.config.samples_per_frame].float()
        audio = audio[0] if unbatched else audio
        return SNACDecoderOutput(audio_values=audio) if return_dict else (audio,)

    def forward(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None = None) -> SNACDecoderOutput:
        """Encode and decode (a reconstruction), trimmed to the input's length."""
        codes = self.encode(input_values, padding_mask).audio_codes
        audio = self.decode(codes).audio_values
        return SNACDecoderOutput(audio_values=audio[:, : input_values.shape[-1]])


# Local Auto-class registration (`AutoModelForAudioTokenization.from_pretrained` on a saved codec folder). No
# `auto_map` is written: the codec is saved inside an Omni checkpoint, whose processor imports this module.
AutoConfig.register("snac", SNACConfig, exist_ok=True)
AutoModelForAudioTokenization.register(SNACConfig, SNACAudioTokenizer, exist_ok=True)

__all__ = ["SNACAudioTokenizer", "SNACDecoderOutput", "SNACEncoderOutput"]
