# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""SNAC feature extractor: the Omni model's waveform front end (mono, resample to the codec's rate, pad a batch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature


# Hub keyword arguments of the loaders (`cached_file`), passed on by `OmniProcessor.from_pretrained`
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# one clip with at most this many channels may be given as (samples, channels) or (channels, samples)
_MAX_CHANNELS = 8
# Longest clip accepted by default: the longest `train/prepare_data.py` keeps by default (about 2.5k audio tokens with
# the 24 kHz codec), so that a stray hour-long file is refused instead of filling memory inside the codec.
DEFAULT_MAX_DURATION_SECONDS = 30.0
# Settings that first-release checkpoints kept here with the codec; `OmniProcessor` now reads them from its audio
# tokenizer (`processing_omni.load_audio_tokenizer` turns such a checkpoint's codec into one).
FIRST_RELEASE_CODEC_KEYS = ("codec_config", "audio_token_offset", "codec_name_or_path", "encode_batch_size")

AudioInput = np.ndarray | torch.Tensor | Sequence[float]


def _check_max_duration(max_duration_seconds: float | None) -> float:
    """The clip-length limit in seconds: `None` is the default, anything else must be a positive number."""
    if max_duration_seconds is None:
        return DEFAULT_MAX_DURATION_SECONDS
    if (
        isinstance(max_duration_seconds, bool)
        or not isinstance(max_duration_seconds, (int, float, np.number))
        or not (max_duration_seconds > 0)
    ):
        raise ValueError(
            f"max_duration_seconds={max_duration_seconds!r} must be a positive number of seconds (e.g. 30.0), or "
            "float('inf') to accept clips of any length."
        )
    return float(max_duration_seconds)


def check_sampling_rate(sampling_rate, codec_rate: int | None = None) -> int:
    """A sampling rate in Hz as an `int`, refusing what would be read as another rate (`None`, `True`, `8000.7`)."""
    is_number = isinstance(sampling_rate, (int, float, np.integer, np.floating)) and not isinstance(
        sampling_rate, (bool, np.bool_)
    )
    if not is_number or not math.isfinite(sampling_rate) or sampling_rate <= 0 or sampling_rate != int(sampling_rate):
        codec = f"the codec encodes {codec_rate} Hz audio and resamples other rates, so " if codec_rate else ""
        raise ValueError(
            f"`sampling_rate` must be a positive number, got {sampling_rate!r}: {codec}pass the whole number of Hz "
            "your audio was recorded at (e.g. `sampling_rate=16000`, as `soundfile.read` returns it)."
        )
    return int(sampling_rate)


def pcm_to_float(audio: np.ndarray) -> np.ndarray:
    """
    A waveform array as float32: integer PCM (int8 / int16 / int32, and 8-bit unsigned as WAV files hold it) is
    scaled to [-1, 1] by its full range, as `soundfile.read(..., dtype="float32")` does; float input is kept.
    """
    audio = np.asarray(audio)
    if audio.dtype.kind == "f":
        return audio.astype(np.float32, copy=False)
    if audio.dtype in (np.int8, np.int16, np.int32):
        return (audio.astype(np.float64) / 2 ** (8 * audio.dtype.itemsize - 1)).astype(np.float32)
    if audio.dtype == np.uint8:
        return ((audio.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    raise ValueError(
        f"Cannot read audio of dtype {audio.dtype}: pass float samples in [-1, 1], or integer PCM as int16 / int32 / "
        "uint8 (e.g. `soundfile.read(path, dtype='float32')`)."
    )


class SNACFeatureExtractor(SequenceFeatureExtractor):
    r"""
    The waveform front end of the Omni model: it holds no codec and no weights, only how audio is prepared for one.

    Input audio of any sampling rate, mono or multichannel (numpy arrays, torch tensors or lists; integer PCM is
    scaled to [-1, 1]), is checked (finite, non-empty, at most `max_duration_seconds` long), down-mixed to mono,
    resampled with torchaudio to the codec's `sampling_rate` and right-padded into a batch. The processor's audio
    tokenizer ([`SNACAudioTokenizer`]) turns the result into SNAC codes.

    Args:
        sampling_rate (`int`, *optional*, defaults to 24000):
            The codec's sampling rate, which audio is resampled to.
        feature_size (`int`, *optional*, defaults to 1):
            Feature dimension of the (mono) waveform.
        padding_value (`float`, *optional*, defaults to 0.0):
            Value used to pad waveforms (silence).
        max_duration_seconds (`float`, *optional*, defaults to 30.0):
            Longest clip accepted, in seconds; longer clips raise a `ValueError` before anything is encoded (never
            silently truncated). `None` (as configs saved before this default existed hold) means the default;
            `float("inf")` accepts any length.
    """

    model_input_names = ["input_values", "padding_mask"]

    def __init__(
        self,
        sampling_rate: int = 24000,
        feature_size: int = 1,
        padding_value: float = 0.0,
        max_duration_seconds: float | None = None,
        **kwargs,
    ):
        codec_config = kwargs.get("codec_config") or {}
        for key in FIRST_RELEASE_CODEC_KEYS:
            kwargs.pop(key, None)
        kwargs.setdefault("return_attention_mask", True)
        super().__init__(
            feature_size=feature_size,
            sampling_rate=check_sampling_rate(codec_config.get("sampling_rate", sampling_rate)),
            padding_value=padding_value,
            **kwargs,
        )
        self.max_duration_seconds = _check_max_duration(max_duration_seconds)

    # ------------------------------------------------------------------ waveform preparation
    def _to_mono_list(self, raw_audio: AudioInput | Sequence[AudioInput]) -> list[torch.Tensor]:
        """Normalise the accepted input shapes into a list of 1-D float32 waveforms."""

        def as_tensor(audio) -> torch.Tensor:
            if isinstance(audio, torch.Tensor):
                audio = audio.detach().cpu()
                if audio.is_floating_point():
                    return audio.to(torch.float32)
                audio = audio.numpy()
            elif isinstance(audio, (list, tuple)):
                return torch.as_tensor(np.asarray(audio, dtype=np.float32))
            # integer PCM is scaled to [-1, 1]: the codec expects float audio, and int16 read as floats is ~30000x loud
            return torch.from_numpy(np.array(pcm_to_float(audio)))

        def clip_to_mono(clip: torch.Tensor) -> torch.Tensor:
            if clip.dim() == 1 or clip.numel() == 0:
                # an empty clip (e.g. a 0-sample file read as (channels, 0)) is refused below as empty
                return clip.reshape(-1) if clip.numel() == 0 else clip
            if clip.dim() == 2:
                channels_axis = 0 if clip.shape[0] <= clip.shape[1] else 1
                if clip.shape[channels_axis] > _MAX_CHANNELS:
                    raise ValueError(
                        f"A clip of shape {tuple(clip.shape)} is neither mono nor (channels, samples) with at most "
                        f"{_MAX_CHANNELS} channels. Pass a batch as a list of clips, each 1-D (mono), "
                        "(channels, samples) or (samples, channels)."
                    )
                return clip.mean(dim=channels_axis)
            raise ValueError(f"A clip must be 1-D or 2-D (multichannel), got shape {tuple(clip.shape)}.")

        if isinstance(raw_audio, (np.ndarray, torch.Tensor)):
            tensor = as_tensor(raw_audio)
            if tensor.dim() == 1:
                clips = [tensor]
            elif tensor.dim() == 2:
                if tensor.shape[1] <= _MAX_CHANNELS < tensor.shape[0]:
                    raise ValueError(
                        f"Got a 2-D array of shape {tuple(tensor.shape)}: a 2-D array is read as a batch of mono "
                        f"clips (batch, samples), and clips of {tensor.shape[1]} samples are surely a mistake. For one "
                        "multichannel clip in (samples, channels) layout, as soundfile returns it, pass `[audio]`."
                    )
                clips = list(tensor)
            elif tensor.dim() == 3:
                clips = [clip_to_mono(clip) for clip in tensor]
            else:
                raise ValueError(
                    f"Audio must be 1-D (one mono clip), 2-D (a batch of mono clips) or 3-D (batch, channels, "
                    f"samples); got shape {tuple(tensor.shape)}."
                )
        elif isinstance(raw_audio, (list, tuple)) and raw_audio and isinstance(raw_audio[0], (int, float)):
            clips = [as_tensor(raw_audio)]
        elif isinstance(raw_audio, (list, tuple)):
            clips = [clip_to_mono(as_tensor(clip)) for clip in raw_audio]
        else:
            raise ValueError(
                f"Unsupported audio input of type {type(raw_audio).__name__}: pass a numpy array, a torch tensor, or "
                "a list of them."
            )
        if not clips:
            raise ValueError("Got an empty batch of audio clips.")
        for index, clip in enumerate(clips):
            if clip.numel() == 0:
                raise ValueError(f"Audio clip {index} is empty (0 samples).")
            if not torch.isfinite(clip).all():
                raise ValueError(f"Audio clip {index} contains NaN or infinite samples.")
        return clips

    def check_durations(
        self, num_samples: Sequence[int], sampling_rate: int, names: Sequence[str] | None = None
    ) -> None:
        """Raise a `ValueError` naming the first clip longer than `max_duration_seconds` (before any encoding); clips
        are named by `names` (e.g. file names), or by their position in the batch."""
        for index, samples in enumerate(num_samples):
            duration = samples / sampling_rate
            if duration > self.max_duration_seconds:
                name = names[index] if names is not None else f"Audio clip {index}"
                raise ValueError(
                    f"{name} lasts {duration:.1f} s, longer than max_duration_seconds="
                    f"{self.max_duration_seconds}; split it into shorter clips, or raise the limit "
                    "(`feature_extractor.max_duration_seconds`, float('inf') for none)."
                )

    def _resample(self, clips: list[torch.Tensor], sampling_rate: int) -> list[torch.Tensor]:
        if sampling_rate == self.sampling_rate:
            return clips
        import torchaudio.functional

        return [torchaudio.functional.resample(clip, sampling_rate, self.sampling_rate) for clip in clips]

    def prepare_clips(
        self, raw_audio: AudioInput | Sequence[AudioInput], sampling_rate: int | None
    ) -> list[torch.Tensor]:
        """
        Check, down-mix and resample audio: one 1-D float32 tensor per clip at `self.sampling_rate`.

        Args:
            raw_audio: one clip (1-D), a batch of mono clips (2-D `(batch, samples)`), a 3-D `(batch, channels,
                samples)` array, or a list of clips (each 1-D, `(channels, samples)` or `(samples, channels)`).
            sampling_rate (`int`): the sampling rate of `raw_audio`; required, so that audio is never silently
                encoded at the wrong speed.
        """
        sampling_rate = check_sampling_rate(sampling_rate, self.sampling_rate)
        clips = self._to_mono_list(raw_audio)
        self.check_durations([clip.numel() for clip in clips], sampling_rate)
        return self._resample(clips, sampling_rate)

    def __call__(
        self,
        raw_audio: AudioInput | Sequence[AudioInput],
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Prepare audio for the codec (see [`~SNACFeatureExtractor.prepare_clips`] for the accepted input).

        Returns:
            [`BatchFeature`] with `input_values` `(batch, 1, max_samples)` (mono waveforms at `sampling_rate`,
            right-padded with `padding_value`) and `padding_mask` `(batch, max_samples)` (1 on samples, 0 on padding).
        """
        clips = self.prepare_clips(raw_audio, sampling_rate)
        # always on the right, whatever `padding_side` says (OmniProcessor sets it to "left" for the pipelines that
        # pad prompts with it): the codec's frames start at each clip's first sample. `SequenceFeatureExtractor.pad`
        # only pads on `self.padding_side`, so it cannot serve here.
        length = max(clip.numel() for clip in clips)
        input_values = np.full((len(clips), 1, length), self.padding_value, dtype=np.float32)
        padding_mask = np.zeros((len(clips), length), dtype=np.int64)
        for row, clip in enumerate(clips):
            input_values[row, 0, : clip.numel()] = clip.numpy()
            padding_mask[row, : clip.numel()] = 1
        return BatchFeature({"input_values": input_values, "padding_mask": padding_mask}, tensor_type=return_tensors)


__all__ = ["SNACFeatureExtractor"]
