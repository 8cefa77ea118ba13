# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""SNAC audio tokenizer: the codec of the Omni model (waveform <-> SNAC codes) as a transformers model, and its
streaming decoder.

- [`SNACAudioTokenizer`]: waveform <-> codes, the processor's `audio_tokenizer`.
- [`SNACStreamingDecoder`]: decodes a stream of frames piece by piece, each frame once.
- [`OmniAudioStreamer`]: a `BaseStreamer` that yields waveform chunks while `generate` makes audio tokens.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from queue import Queue

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForAudioTokenization
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_utils import PreTrainedAudioTokenizerBase
from transformers.utils import ModelOutput, logging

from .configuration_snac import SNACConfig


logger = logging.get_logger(__name__)


# Decoder noise is drawn in chunks of this many time steps, each from its own seed (see `_PositionLockedNoise`).
_NOISE_CHUNK = 4096


@functools.lru_cache(maxsize=256)
def _noise_chunk(seed: int) -> torch.Tensor:
    """One chunk of decoder noise (kept: streams read the same chunks, a frame's worth at a time; read-only)."""
    with torch.inference_mode(False):  # a normal tensor, usable where gradients flow
        return torch.randn(_NOISE_CHUNK, generator=torch.Generator().manual_seed(seed))


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
        chunks = [_noise_chunk(1_000_003 * (self.block_index + 1) + chunk) for chunk in range(first, last + 1)]
        noise = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        noise = noise[start - first * _NOISE_CHUNK : start - first * _NOISE_CHUNK + length]
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


# ---------------------------------------------------------------------------------------------- streaming
# A SNAC decoder run layer by layer on successive pieces of its input: every layer keeps what it still needs of its
# past input (a convolution its last `dilation * (kernel - 1)` steps, an upsampling layer its last step, a windowed
# attention layer its unfinished window), so each frame is decoded once and the joined output equals the full decode.
#
# Pieces are time-major, `(rows, steps, channels)`: a pointwise convolution is then one matrix product of
# (rows x steps, channels), and a depthwise one runs channels-last in mkldnn, 3-5x faster than on (channels, steps)
# (one core, the 24 kHz codec's widths). The layers (`_Conv`, ...) hold the weights, prepared once per codec and
# shared by every stream; each stream holds only its state (`_State`), one per layer. Streams whose states have the
# same lengths (all of them once past their first frames) run as the rows of one batch: every operation once for
# all, no copies between layers.


class _State:
    """One stream's state in one layer: what the layer keeps of its past input (the attributes the layer uses)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _rows_of(states: list[_State], name: str, empty: torch.Tensor) -> torch.Tensor:
    """The rows' kept steps (`name`) as one batch; `empty` for rows with none yet (all rows' lengths are equal)."""
    kept = [getattr(state, name) for state in states]
    return empty if kept[0] is None else torch.cat(kept)


def _keep(states: list[_State], name: str, kept: torch.Tensor) -> None:
    kept = kept.clone()  # a view would hold on to the whole piece
    for row, state in enumerate(states):
        setattr(state, name, kept[row : row + 1])


class _Stateless:
    """A layer that keeps nothing of its past input."""

    def new_state(self) -> None:
        return None

    def key(self, state: None) -> None:
        return None


class _Conv:
    """A stride-1 `Conv1d` with 'same' padding, as all of SNAC's decoder convolutions are."""

    def __init__(self, conv: torch.nn.Conv1d):
        self.span = conv.dilation[0] * (conv.kernel_size[0] - 1)
        if conv.stride[0] != 1 or 2 * conv.padding[0] != self.span:
            raise NotImplementedError(f"only stride-1 'same' convolutions stream, got {conv}")
        weight = conv.weight.detach()  # weight norm computed once
        self.out_channels = weight.shape[0]
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.dilation, self.groups, self.padding = conv.dilation[0], conv.groups, conv.padding[0]
        if self.span == 0 and self.groups == 1:
            self.weight = weight[:, :, 0].contiguous()  # (out, in): `F.linear` on time-major steps
        else:
            self.weight = weight[:, :, None, :].contiguous(memory_format=torch.channels_last)

    def new_state(self) -> _State | None:
        return _State(history=None) if self.span else None

    def key(self, state: _State | None) -> int | None:
        return None if state is None or state.history is None else state.history.shape[1]

    def run(self, states: list, x: torch.Tensor, final: bool) -> torch.Tensor:
        if self.span:
            padding = x.new_zeros(x.shape[0], self.padding, x.shape[2])  # the full decode's left zero padding
            x = torch.cat([_rows_of(states, "history", padding), x], dim=1)
            if final:
                x = F.pad(x, (0, 0, 0, self.padding))
            _keep(states, "history", x[:, x.shape[1] - min(self.span, x.shape[1]) :])
            if x.shape[1] <= self.span:
                return x.new_zeros(x.shape[0], 0, self.out_channels)
        if self.weight.dim() == 2:
            return F.linear(x, self.weight, self.bias)
        # (rows, steps, channels) seen as channels-last (rows, channels, 1, steps): no copy in or out
        out = F.conv2d(
            x.transpose(1, 2).unsqueeze(2), self.weight, self.bias, dilation=(1, self.dilation), groups=self.groups
        )
        return out.squeeze(2).transpose(1, 2)


class _TransposedConv:
    """SNAC's upsampling `ConvTranspose1d` (kernel `2 * stride`) as two matrix products per piece: output block `i`
    (`stride` steps) is input step `i` times the kernel's first half plus input step `i - 1` times its second half,
    the second product accumulated in place; the last input step is kept for the next piece, and the full decode's
    crop (`padding`) is applied at both ends of the stream."""

    def __init__(self, conv: torch.nn.ConvTranspose1d):
        self.stride = stride = conv.stride[0]
        if conv.kernel_size[0] != 2 * stride or conv.dilation[0] != 1 or conv.groups != 1:
            raise NotImplementedError(f"only kernel_size == 2 * stride, ungrouped upsampling streams, got {conv}")
        weight = conv.weight.detach()  # (in_channels, out_channels, 2 * stride)
        self.in_channels, self.out_channels = weight.shape[:2]
        # (in, stride * out) each: the block an input step writes with each half of the kernel, time-major
        self.first = weight[:, :, :stride].permute(0, 2, 1).reshape(self.in_channels, -1).contiguous()
        self.second = weight[:, :, stride:].permute(0, 2, 1).reshape(self.in_channels, -1).contiguous()
        bias = torch.zeros(self.out_channels) if conv.bias is None else conv.bias.detach()
        self.bias = bias.repeat(stride)  # every step of a block
        self.crop = conv.padding[0]

    def new_state(self) -> _State:
        # previous: the last input step; inputs: input steps so far; raw_position: output steps before the crop
        return _State(previous=None, inputs=0, raw_position=0)

    def key(self, state: _State) -> tuple:
        return state.previous is None, max(0, self.crop - state.raw_position)

    def run(self, states: list[_State], x: torch.Tensor, final: bool) -> torch.Tensor:
        rows, steps, stride = x.shape[0], x.shape[1], self.stride
        previous = _rows_of(states, "previous", None)
        blocks = []
        if steps:
            before = x.new_zeros(rows, 1, self.in_channels) if previous is None else previous  # nothing before
            shifted = torch.cat([before, x[:, :-1]], dim=1)
            out = torch.addmm(self.bias, x.reshape(-1, self.in_channels), self.first)
            out.addmm_(shifted.view(-1, self.in_channels), self.second)
            blocks.append(out.view(rows, steps * stride, self.out_channels))
            previous = x[:, -1:]
            _keep(states, "previous", previous)
        if final and previous is not None:  # the last block: the last input step's second half, nothing after it
            last = torch.addmm(self.bias, previous.reshape(rows, self.in_channels), self.second)
            blocks.append(last.view(rows, stride, self.out_channels))
        state = states[0]  # every row's counts are the same
        if not blocks:
            return x.new_zeros(rows, 0, self.out_channels)
        raw = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        low = max(0, self.crop - state.raw_position)
        high = raw.shape[1]
        inputs = state.inputs + steps
        if final:  # the full decode's output is raw[crop : crop + inputs * stride]
            high = min(high, self.crop + inputs * stride - state.raw_position)
        raw_position = state.raw_position + raw.shape[1]
        for row_state in states:
            row_state.inputs, row_state.raw_position = inputs, raw_position
        return raw[:, low:high]


class _Residual:
    """SNAC's `ResidualUnit`: `x + block(x)`, with `x` held back until the block's output for it is ready."""

    def __init__(self, layers: list):
        self.layers = layers

    def new_state(self) -> _State:
        return _State(pending=None, inner=_new_states(self.layers))

    def key(self, state: _State) -> tuple:
        return (0 if state.pending is None else state.pending.shape[1]), _key(self.layers, state.inner)

    def run(self, states: list[_State], x: torch.Tensor, final: bool) -> torch.Tensor:
        pending = _rows_of(states, "pending", x[:, :0])
        out = _run(self.layers, [state.inner for state in states], x, final)  # a new tensor: added to in place
        held, done = pending.shape[1], out.shape[1]
        if done:
            out[:, : min(held, done)] += pending[:, :done]
            if done > held:
                out[:, held:] += x[:, : done - held]
        rest = x[:, done - held :] if done >= held else torch.cat([pending[:, done:], x], dim=1)
        _keep(states, "pending", rest)
        return out


class _Noise:
    """The feature extractor's position-locked decoder noise, at the absolute step of each row."""

    def __init__(self, noise_module: torch.nn.Module):
        self.module = noise_module
        self.weight = noise_module.linear.weight.detach()[:, :, 0].contiguous()  # weight norm computed once
        self.bias = None if noise_module.linear.bias is None else noise_module.linear.bias.detach()

    def new_state(self) -> _State:
        return _State(position=0)

    def key(self, state: _State) -> None:
        return None

    def run(self, states: list[_State], x: torch.Tensor, final: bool) -> torch.Tensor:
        steps = x.shape[1]
        if not steps:
            return x
        noise = []
        for state in states:
            noise.append(self.module._noise(state.position, steps, x.device, x.dtype).view(1, steps, 1))
            state.position += steps
        return torch.addcmul(x, torch.cat(noise), F.linear(x, self.weight, self.bias))


class _WindowedAttention:
    """SNAC's `LocalMHA`: attention inside fixed windows, run on each window once it is whole."""

    def __init__(self, attention: torch.nn.Module):
        self.module, self.window = attention, attention.window_size

    def new_state(self) -> _State:
        return _State(pending=None)

    def key(self, state: _State) -> int:
        return 0 if state.pending is None else state.pending.shape[1]

    def run(self, states: list[_State], x: torch.Tensor, final: bool) -> torch.Tensor:
        x = torch.cat([_rows_of(states, "pending", x[:, :0]), x], dim=1)
        whole = x.shape[1] // self.window * self.window
        _keep(states, "pending", x[:, whole:])
        if not whole:
            return x[:, :0]
        return self.module(x[:, :whole].transpose(1, 2)).transpose(1, 2).contiguous()


class _Snake(_Stateless):
    """snac's `Snake1d`, `x + sin(alpha * x) ** 2 / alpha`, in place on one new tensor (snac's allocates one per
    operation) with `1 / alpha` computed once; the same operations in the same order, so the same samples."""

    def __init__(self, module: torch.nn.Module):
        self.alpha = module.alpha.detach().reshape(-1)
        self.inverse_alpha = (self.alpha + 1e-9).reciprocal()

    def run(self, states: list, x: torch.Tensor, final: bool) -> torch.Tensor:
        return torch.mul(self.alpha, x).sin_().pow_(2).mul_(self.inverse_alpha).add_(x) if x.shape[1] else x


class _Pointwise(_Stateless):
    def __init__(self, module: torch.nn.Module):
        self.module = module

    def run(self, states: list, x: torch.Tensor, final: bool) -> torch.Tensor:
        return self.module(x)


def _new_states(layers: list) -> list:
    return [layer.new_state() for layer in layers]


def _key(layers: list, states: list) -> tuple:
    """The lengths of a stream's states: streams with the same key run as rows of one batch."""
    return tuple(layer.key(state) for layer, state in zip(layers, states))


def _run(layers: list, row_states: list[list], x: torch.Tensor, final: bool) -> torch.Tensor:
    """Run the layers on the rows' pieces `x` (`(rows, steps, channels)`), each row with its own states."""
    for index, layer in enumerate(layers):
        x = layer.run([states[index] for states in row_states], x, final)
    return x


def _lookahead(layers: list, rate: int) -> tuple[float, int]:
    """Steps of the decoder's input (latent steps) that an output step waits for, and the output rate (output steps
    per input step), for layers that start at `rate`."""
    steps = 0.0
    for layer in layers:
        if isinstance(layer, _Residual):
            inner, rate = _lookahead(layer.layers, rate)
            steps += inner
        elif isinstance(layer, _Conv):
            steps += layer.padding / rate
        elif isinstance(layer, _TransposedConv):
            steps += 1 / rate
            rate *= layer.stride
        elif isinstance(layer, _WindowedAttention):
            steps += layer.window / rate
    return steps, rate


def _streaming_layers(module: torch.nn.Module) -> list:
    """The layers of a SNAC decoder as streaming layers; `NotImplementedError` names a module that cannot stream."""
    from snac.attention import LocalMHA
    from snac.layers import DecoderBlock, ResidualUnit, Snake1d

    if isinstance(module, torch.nn.Sequential):
        return [layer for child in module for layer in _streaming_layers(child)]
    if isinstance(module, DecoderBlock):
        return _streaming_layers(module.block)
    if isinstance(module, ResidualUnit):
        return [_Residual(_streaming_layers(module.block))]
    if isinstance(module, Snake1d):
        return [_Snake(module)]
    if isinstance(module, torch.nn.Tanh):
        return [_Pointwise(module)]
    if isinstance(module, torch.nn.ConvTranspose1d):
        return [_TransposedConv(module)]
    if isinstance(module, torch.nn.Conv1d):
        return [_Conv(module)]
    if isinstance(module, LocalMHA):
        return [_WindowedAttention(module)]
    if hasattr(module, "_noise") and hasattr(module, "linear"):
        return [_Noise(module)]
    raise NotImplementedError(f"no streaming rule for {type(module).__name__}")


# the prepared layers of each decoder, with the versions of the weights they were prepared from
_PREPARED_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prepared_layers(decoder: torch.nn.Module) -> list:
    """`_streaming_layers` of a decoder, prepared once and shared by its streams (again if its weights changed)."""
    versions = tuple(parameter._version for parameter in decoder.parameters())
    cached = _PREPARED_LAYERS.get(decoder)
    if cached is None or cached[0] != versions:
        with torch.no_grad():
            cached = _PREPARED_LAYERS[decoder] = (versions, _streaming_layers(decoder))
    return cached[1]


class _AudioCodec:
    """What streaming needs of a processor's codec: its `audio_tokenizer` (a `SNACAudioTokenizer`) and token layout."""

    def __init__(self, processor):
        self.layout = processor.token_layout
        self.module = processor.audio_tokenizer
        self.samples_per_frame = self.module.config.samples_per_frame
        self.frames_per_window = self.module.config.frames_per_window
        self.device = self.module.device

    def decode_window(self, codes: list[torch.Tensor], frame_offset: int) -> torch.Tensor:
        """Decode the codes of a window of frames that starts at absolute frame `frame_offset` (1-D waveform)."""
        with torch.inference_mode():
            return self.module.decode(codes, frame_offset=frame_offset).audio_values.float().cpu()


class SNACStreamingDecoder:
    r"""
    Decodes a stream of SNAC frames piece by piece: every frame is decoded once, each decoder layer keeping the
    little of its past input it still needs, and the joined output equals the full decode of all frames
    (float rounding aside), first and last frame included. Output comes as soon as it no longer depends on frames to
    come (`lookahead_frames` later; 3 for the 24 kHz SNAC).

    Args:
        processor ([`OmniProcessor`]): gives the codec (its `audio_tokenizer`) and the token layout.

    Raises:
        `NotImplementedError` for a codec with a layer that has no streaming rule.
    """

    def __init__(self, processor):
        self.codec = processor if isinstance(processor, _AudioCodec) else _AudioCodec(processor)
        self.layout = self.codec.layout
        self.quantizer = self.codec.module.quantizer
        self.layers = _prepared_layers(self.codec.module.decoder.model)
        self.states = _new_states(self.layers)
        latent_steps, _ = _lookahead(self.layers, 1)
        # frames that must follow a frame before all of its audio is final
        self.lookahead_frames = math.ceil(latent_steps / self.layout.vq_strides[0])
        self.frames = self.samples = 0

    def push(self, frame_ids: torch.Tensor, final: bool = False) -> np.ndarray:
        """
        Decode the next whole frames (1-D audio ids, possibly none); `final=True` ends the stream.

        Returns:
            The waveform samples now final (1-D float32, possibly empty).
        """
        return SNACStreamingDecoder.push_rows([self], [frame_ids], [final])[0]

    @staticmethod
    def push_rows(
        decoders: list[SNACStreamingDecoder], frame_ids: list[torch.Tensor], finals: list[bool]
    ) -> list[np.ndarray]:
        """
        `push` for several streams of one codec at once. Streams whose layers hold the same lengths (all of them once
        past their first frames) run as the rows of one batch, each operation once for all of them; each stream gets
        the samples it gets on its own, float rounding aside (a matrix kernel may round a product of more rows
        differently).
        """
        audio = [None] * len(decoders)
        with torch.inference_mode():
            latents = [decoder._latent(ids, final) for decoder, ids, final in zip(decoders, frame_ids, finals)]
            batches: dict[tuple, list[int]] = {}
            for index, (decoder, latent, final) in enumerate(zip(decoders, latents, finals)):
                # a stream's last piece runs alone: its lengths follow from its own past
                key = (
                    id(decoder.layers),
                    latent.shape[1],
                    index if final else -1,
                    _key(decoder.layers, decoder.states),
                )
                batches.setdefault(key, []).append(index)
            for rows in batches.values():
                first = decoders[rows[0]]
                pieces = torch.cat([latents[index] for index in rows])
                out = _run(first.layers, [decoders[index].states for index in rows], pieces, finals[rows[0]])
                for row, index in enumerate(rows):
                    audio[index] = out[row, :, 0]
        return [decoder._samples(samples, final) for decoder, samples, final in zip(decoders, audio, finals)]

    def _latent(self, frame_ids: torch.Tensor, final: bool) -> torch.Tensor:
        layout, codec = self.layout, self.codec
        self.frames += frame_ids.numel() // layout.tokens_per_frame
        if final:  # as the full decode: code 0 up to whole attention windows, trimmed off below
            padding = -self.frames % codec.frames_per_window
            zero_frame = torch.tensor([layout.block_start(p) for p in range(layout.tokens_per_frame)])
            frame_ids = torch.cat([frame_ids.long(), zero_frame.repeat(padding)])
        if frame_ids.numel():  # time-major, as the streaming layers take it
            codes = [code[None].to(codec.device) for code in layout.ids_to_codes(frame_ids)]
            return self.quantizer.from_codes(codes).transpose(1, 2).contiguous()
        return torch.zeros(1, 0, self.quantizer.quantizers[0].out_proj.out_channels, device=codec.device)

    def _samples(self, audio: torch.Tensor, final: bool) -> np.ndarray:
        if final:
            audio = audio[: self.frames * self.codec.samples_per_frame - self.samples]
        self.samples += audio.shape[-1]
        return audio.float().cpu().numpy()


class OmniAudioStreamer(BaseStreamer):
    r"""
    Streams speech while `generate` runs: pass it as `streamer=` and iterate over it (from another thread), or give
    an `on_chunk` callback. Each chunk is a 1-D float32 numpy waveform at the codec's sampling rate; the chunks of a
    stream joined equal the full decode of the same tokens and have exactly its length.

    By default every frame is decoded once: the codec's layers keep their state between chunks
    ([`SNACStreamingDecoder`]), so streaming costs about what one decode of the whole speech costs, and audio comes
    out as soon as it is final (for SNAC, a little more than two frames after its frame).

    With `right_context_frames` set, each chunk is instead decoded inside a window of `left_context_frames` before
    and `right_context_frames` after it (decoder noise locked to the absolute frame), the way Orpheus streams: the
    latency is fixed, but the windows overlap, so decoding costs `(left + chunk + right) / chunk` full decodes, and
    too little right context changes the audio near each join. Relative RMS error against the full decode with the
    24 kHz SNAC: right context 1 frame 3.7e-3, 2 frames 2.5e-5, 4 frames 2e-7.

    The stream ends at a non-audio id (e.g. `<|audio_end|>`) or at the end of generation; a trailing partial frame
    is dropped with a log, as `OmniProcessor.decode` does. The prompt (the first `put`) is not streamed. Batch size
    1 only (as transformers' streamers).

    Args:
        processor ([`OmniProcessor`]): gives the codec (its `audio_tokenizer`) and the token layout.
        chunk_frames (`int`, *optional*, defaults to 1): frames decoded per codec call; more frames per call cost
            less per frame (fewer, larger calls) and add `chunk_frames - 1` frames of latency.
        right_context_frames (`int`, *optional*): decode overlapping windows with this look-ahead instead of
            streaming the codec's state (see above).
        left_context_frames (`int`, *optional*, defaults to 4): frames of context before each window (windowed
            decoding only).
        on_chunk (`Callable[[np.ndarray], None]`, *optional*): called with each chunk (e.g. to write a file).
        timeout (`float`, *optional*): seconds the iterator waits for the next chunk before raising `queue.Empty`.
    """

    def __init__(
        self,
        processor,
        chunk_frames: int = 1,
        right_context_frames: int | None = None,
        left_context_frames: int = 4,
        on_chunk: Callable[[np.ndarray], None] | None = None,
        timeout: float | None = None,
    ):
        for name, value, least in (
            ("chunk_frames", chunk_frames, 1),
            ("right_context_frames", right_context_frames, 0),
            ("left_context_frames", left_context_frames, 0),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name}={value!r} must be an integer >= {least}.")
        self.codec = _AudioCodec(processor)
        self.layout = self.codec.layout
        self.chunk_frames = chunk_frames
        self.on_chunk = on_chunk
        self.timeout = timeout
        self.queue: Queue = Queue()
        self.windowed = right_context_frames is not None
        lookahead = None
        if not self.windowed:
            try:
                lookahead = SNACStreamingDecoder(self.codec).lookahead_frames
            except NotImplementedError as error:
                logger.warning(
                    f"This codec cannot be decoded layer by layer ({error}); streaming overlapping windows with 4 "
                    "frames of context instead."
                )
                self.windowed, right_context_frames = True, 4
        window = self.codec.frames_per_window
        self.window = window
        self.left_context = math.ceil(left_context_frames / window) * window
        # frames of look-ahead before a frame's audio goes out: the decoder's own when streaming its state; for
        # windows, the requested context, at least two attention windows (so windows align as in the full decode)
        self.right_context = (
            lookahead if lookahead is not None else max(right_context_frames, 2 * window if window > 1 else 0)
        )
        self._decoder: SNACStreamingDecoder | None = None
        self._seen_prompt = False
        self.samples_emitted = 0  # by this streamer, all spans together
        self._reset()

    def _reset(self) -> None:
        self.codes_ids: list[int] = []  # audio ids of whole frames so far
        self.pending: list[int] = []  # ids of the frame being built
        self.emitted_frames = 0
        self._decoder = None

    @property
    def num_frames(self) -> int:
        """Whole frames received in the current span."""
        return len(self.codes_ids) // self.layout.tokens_per_frame

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError(
                f"OmniAudioStreamer streams one sequence; got a batch of {value.shape[0]}. Use batch size 1."
            )
        if not self._seen_prompt:  # the first call holds the prompt (possibly a voice prompt's audio): not streamed
            self._seen_prompt = True
            return
        layout = self.layout
        for token in value.flatten().tolist():
            if layout.audio_token_offset <= token < layout.vocab_end:
                self.pending.append(token)
                if len(self.pending) == layout.tokens_per_frame:
                    self.codes_ids += self.pending
                    self.pending = []
                    self._emit(final=False)
            elif self.codes_ids or self.pending:
                self._finish_span()

    def _finish_span(self) -> None:
        if self.pending:
            logger.warning(
                f"Dropped {len(self.pending)} audio tokens of an incomplete frame at the end of the stream."
            )
            self.pending = []
        self._emit(final=True)
        self._reset()

    def _emit(self, final: bool) -> None:
        if self.windowed:
            self._emit_windows(final)
            return
        ready = self.num_frames - self.emitted_frames
        if not final and ready < self.chunk_frames:
            return
        if self._decoder is None:
            self._decoder = SNACStreamingDecoder(self.codec)
        tokens_per_frame = self.layout.tokens_per_frame
        frame_ids = torch.tensor(self.codes_ids[self.emitted_frames * tokens_per_frame :], dtype=torch.long)
        self.emitted_frames = self.num_frames
        self._send(self._decoder.push(frame_ids, final=final))

    def _emit_windows(self, final: bool) -> None:
        total = self.num_frames
        ready = total if final else total - self.right_context
        while ready - self.emitted_frames >= (1 if final else self.chunk_frames):
            start = self.emitted_frames
            stop = min(ready, start + self.chunk_frames) if not final else ready
            window_start = max(0, (start - self.left_context) // self.window * self.window)
            window_stop = total if final else min(total, stop + self.right_context)
            tokens_per_frame = self.layout.tokens_per_frame
            frame_ids = torch.tensor(self.codes_ids[window_start * tokens_per_frame : window_stop * tokens_per_frame])
            audio = self.codec.decode_window(self.layout.ids_to_codes(frame_ids), window_start)
            samples_per_frame = self.codec.samples_per_frame
            self.emitted_frames = stop
            self._send(
                audio[(start - window_start) * samples_per_frame : (stop - window_start) * samples_per_frame].numpy()
            )

    def _send(self, chunk: np.ndarray) -> None:
        if chunk.size:
            self.samples_emitted += chunk.shape[0]
            self.on_audio_chunk(chunk)

    def on_audio_chunk(self, chunk: np.ndarray) -> None:
        """Hands a chunk to `on_chunk` and to the iterator."""
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        self.queue.put(chunk)

    def end(self) -> None:
        if self.codes_ids or self.pending:
            self._finish_span()
        self._seen_prompt = False
        self.queue.put(None)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            chunk = self.queue.get(timeout=self.timeout)
            if chunk is None:
                return
            yield chunk


__all__ = [
    "OmniAudioStreamer",
    "SNACAudioTokenizer",
    "SNACDecoderOutput",
    "SNACEncoderOutput",
    "SNACStreamingDecoder",
]
