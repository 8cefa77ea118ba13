# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Audio encoded once by a codec, for both wings (SNAC shards of the Omni corpus, Mimi codes of a Talker voice):

- [`read_clip_for_codec`]: the rules that skip a clip, each with the one wording of its reason (the first words of a
  reason are what [`~common.clips.count_skip_reasons`] counts);
- [`codec_fingerprint`]: a hash of a codec's settings and weights, so that codes are reused only with the very same
  codec;
- [`ResumableCache`]: a folder whose settings file (the fingerprint and every setting that shapes the codes) decides
  whether what it holds is reused, and whose units of work (a shard, a clip) are recorded one by one, each written
  whole or not at all, so that an interrupted run resumes where it stopped and a repeated run encodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from .audio import read_audio, resample


logger = logging.get_logger(__name__)


def unreadable_audio_reason(error: Exception) -> str:
    return f"unreadable audio: {type(error).__name__}: {error}"


def read_clip_for_codec(
    audio: Any,
    sampling_rate: int,
    *,
    max_duration: float | None = None,
    silence_threshold: float | None = None,
    min_samples: int | None = None,
) -> tuple[np.ndarray | None, str | None]:
    """Decode one clip and resample it to the codec's `sampling_rate`: `(waveform, None)`, or `(None, reason)` for a
    clip that is skipped: unreadable, longer than `max_duration` seconds, silent (peak amplitude below
    `silence_threshold`), or shorter than `min_samples` (one codec frame) once resampled. A limit left None is not
    applied."""
    try:
        waveform, rate = read_audio(audio)
    except Exception as error:  # noqa: BLE001 - any decoding failure skips the clip, with its reason listed
        return None, unreadable_audio_reason(error)
    duration = waveform.size / rate
    if max_duration is not None and duration > max_duration:
        return None, f"longer than the limit: {duration:.2f} s > max_duration {max_duration} s"
    if silence_threshold is not None:
        peak = float(np.abs(waveform).max())
        if peak < silence_threshold:
            return None, f"silent: peak amplitude {peak:.2e} < silence_threshold {silence_threshold:g}"
    waveform = resample(waveform, rate, sampling_rate)
    if min_samples is not None and waveform.size < min_samples:
        return None, (f"shorter than one codec frame: {waveform.size} samples < {min_samples} at {sampling_rate} Hz")
    return waveform, None


def codec_fingerprint(codec: torch.nn.Module, *settings: Any) -> str:
    """A hash of `settings` (each as sorted JSON: the codec's config, the codebooks kept, ...) and of every tensor of
    the codec's state."""
    digest = hashlib.sha256()
    for setting in settings:
        digest.update(json.dumps(setting, sort_keys=True, default=str).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _write_json_whole(path: Path, value: Any, indent: int | None = None) -> None:
    """Write `path` through a temporary file renamed over it: a reader finds the old content or the new, never half."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(value, indent=indent))
    os.replace(partial, path)


class ResumableCache:
    """A cache folder of encoded units of work, kept across runs while its settings stay the same.

    Args:
        folder (`str` or `os.PathLike`): the cache folder (created).
        settings (`dict`): what shapes the cached codes (format version, codec fingerprint, limits); written to
            `folder/info_name`. A folder written with other settings is started afresh, with a warning.
        info_name (`str`): the settings file's name.
        entries_dir (`str`): sub-folder of the units' records (`<key>.json`).
        index_keys (`tuple[str, ...]`): keys the owner adds to the settings file with [`write_info`] (an index of
            what the folder holds), which are not settings.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        settings: dict,
        *,
        info_name: str,
        entries_dir: str,
        index_keys: tuple[str, ...] = (),
    ):
        self.folder = Path(folder)
        self.entries_dir = self.folder / entries_dir
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        self.info_file = self.folder / info_name
        self.settings = settings
        previous = json.loads(self.info_file.read_text()) if self.info_file.exists() else None
        if previous is not None and {k: v for k, v in previous.items() if k not in index_keys} != settings:
            logger.warning(f"{self.folder} holds codes of another codec or other settings; encoding everything again.")
            for stale in self.entries_dir.glob("*.json"):
                stale.unlink()
        self.write_info()

    def write_info(self, **index: Any) -> None:
        """Write the settings file, with the owner's `index` entries."""
        _write_json_whole(self.info_file, {**self.settings, **index}, indent=1)

    def _entry_file(self, key: str) -> Path:
        return self.entries_dir / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The record of unit `key`, or None when it has not been done under these settings."""
        entry_file = self._entry_file(key)
        return json.loads(entry_file.read_text()) if entry_file.exists() else None

    def put(self, key: str, entry: dict) -> None:
        """Record unit `key` as done (after what it wrote beside the record is complete)."""
        _write_json_whole(self._entry_file(key), entry)

    def entries(self) -> dict[str, dict]:
        """Every recorded unit by key."""
        return {path.stem: json.loads(path.read_text()) for path in sorted(self.entries_dir.glob("*.json"))}

    def keep_only(self, keys: set[str]) -> None:
        """Forget the recorded units not in `keys` (units of a source that has since shrunk)."""
        for path in self.entries_dir.glob("*.json"):
            if path.stem not in keys:
                path.unlink()
