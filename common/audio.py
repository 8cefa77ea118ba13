# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Audio I/O for both wings: [`read_audio`] decodes one audio value with soundfile (no FFmpeg, no torchcodec) and
refuses empty, non-finite and truncated files; [`read_sampling_rate`] reads a header; [`resample`] uses torchaudio;
[`audio_path`] names the file an audio value comes from."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import torch


def audio_path(audio: Any) -> str | None:
    """The file an audio value names (a path, or the path of a `{"path", "bytes"}` value), or None."""
    return audio.get("path") if isinstance(audio, dict) else audio


def _soundfile_target(audio: Any):
    """What soundfile opens for an undecoded audio value: the path, or the bytes as a file object."""
    target = (
        (io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")) if isinstance(audio, dict) else audio
    )
    if target is None:
        raise ValueError("the audio value has neither bytes nor a path")
    return target


def read_sampling_rate(audio: Any) -> int:
    """The sampling rate of one audio value (as accepted by [`read_audio`]), read from the file header without
    decoding the samples."""
    import soundfile

    if isinstance(audio, dict) and audio.get("array") is not None:
        return int(audio["sampling_rate"])
    return soundfile.info(_soundfile_target(audio)).samplerate


# libsndfile's log line for a data chunk whose header size disagrees with the bytes present, e.g.
# "data : 96000 (should be 47978)"
_DATA_SIZE_MISMATCH = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# sizes that streaming writers put in a header whose length they do not know yet: not a sign of truncation
_UNKNOWN_SIZES = (0, 0x7FFFFFFF, 0xFFFFFFFF)


def _missing_data(extra_info: str) -> str | None:
    """What a WAV / AIFF file lacks when its header promises more audio bytes than it holds (a truncated copy or
    download), from libsndfile's log of the file; `None` when the file is whole."""
    match = _DATA_SIZE_MISMATCH.search(extra_info)
    if match is None:
        return None
    declared, present = int(match.group(1)), int(match.group(2))
    if declared in _UNKNOWN_SIZES or declared <= present:
        return None
    return f"its header promises {declared} bytes of audio but it holds {present}"


def resample(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`waveform` (float32, mono) at `rate` Hz resampled to `target` Hz with torchaudio (returned as is if equal)."""
    if rate == target:
        return waveform
    import torchaudio.functional

    return torchaudio.functional.resample(torch.from_numpy(waveform), rate, target).numpy()


def read_audio(audio: Any) -> tuple[np.ndarray, int]:
    """
    Decode one audio value with soundfile (wav, flac, ogg/vorbis, opus, mp3 through libsndfile >= 1.1; no FFmpeg).

    Args:
        audio: a file path, a `{"path", "bytes"}` dict (`datasets.Audio(decode=False)`), or a decoded
            `{"array", "sampling_rate"}` dict.

    Returns:
        `(waveform, sampling_rate)`: a mono float32 array (channels averaged) and its rate.

    Raises:
        `ValueError` for a file with 0 samples, NaN or infinite samples, or fewer audio bytes than its header
        promises (truncated or corrupt); whatever soundfile raises for an unreadable file
        (`soundfile.LibsndfileError`, `FileNotFoundError`, ...).
    """
    import soundfile

    if isinstance(audio, dict) and audio.get("array") is not None:
        waveform, sampling_rate = np.asarray(audio["array"], dtype=np.float32), int(audio["sampling_rate"])
    else:
        with soundfile.SoundFile(_soundfile_target(audio)) as audio_file:
            missing = _missing_data(audio_file.extra_info)
            if missing is not None:
                raise ValueError(f"the file is truncated or corrupt: {missing}")
            sampling_rate = audio_file.samplerate
            waveform = audio_file.read(dtype="float32", always_2d=True).mean(axis=1)
    if waveform.ndim > 1:
        waveform = waveform.mean(axis=-1 if waveform.shape[-1] < waveform.shape[0] else 0)
    if waveform.size == 0:
        raise ValueError("the audio has 0 samples")
    if not np.isfinite(waveform).all():
        raise ValueError("the audio holds NaN or infinite samples")
    return waveform, sampling_rate
