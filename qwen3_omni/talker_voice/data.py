# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Data of the Talker voice recipe: one speaker's clips encoded once into the Mimi codes Qwen3-Omni's Talker speaks.

Qwen3-Omni's `code2wav` is Mimi's decoder and its Talker (codebook 0) and code predictor (codebooks 1-15) produce the
first 16 residual-VQ codebooks of Mimi (`kyutai/mimi`, 2048 codes, 12.5 Hz at 24 kHz), so the target codes of a clip
are `MimiModel.encode(waveform, num_quantizers=16)`. [`MimiCodec`] wraps the model and checks it against the
checkpoint; [`encode_clips`] encodes clips into a resumable cache folder, skipping (and counting, by name) the clips
that cannot be trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import MimiModel, Qwen3OmniMoeConfig
from transformers.utils import logging

from ...common.audio import audio_path, read_sampling_rate
from ...common.clips import VoiceClip, check_sampling_rates, count_skip_reasons
from ...common.codec_cache import ResumableCache, codec_fingerprint, read_clip_for_codec, unreadable_audio_reason


logger = logging.get_logger(__name__)


# Rate of the waveform `code2wav` writes (Qwen3-Omni speaks at 24 kHz; the rate is not in `code2wav_config`).
TALKER_OUTPUT_SAMPLING_RATE = 24000
CODES_CACHE_FORMAT_VERSION = 1
CACHE_INFO_NAME = "codes_info.json"
CACHE_SUMMARY_NAME = "summary.json"


def talker_frame_rate(config: Qwen3OmniMoeConfig) -> float:
    """Codec frames per second the Talker speaks: `code2wav` turns one frame into `prod(upsample_rates +
    upsampling_ratios)` samples at 24 kHz (12.5 Hz for Qwen3-Omni-30B-A3B)."""
    code2wav = config.code2wav_config
    return TALKER_OUTPUT_SAMPLING_RATE / int(np.prod(list(code2wav.upsample_rates) + list(code2wav.upsampling_ratios)))


class MimiCodec:
    """A `MimiModel` that encodes waveforms into the `num_quantizers` codebooks a Qwen3-Omni Talker speaks.

    Args:
        model (`MimiModel`): the codec.
        num_quantizers (`int`): how many of its codebooks to keep (the Talker's `num_code_groups`).
    """

    def __init__(self, model: MimiModel, num_quantizers: int):
        self.codec = model.eval()
        self.num_quantizers = num_quantizers
        self.sampling_rate = model.config.sampling_rate
        self.samples_per_frame = model.config.frame_size
        self.frame_rate = model.config.frame_rate

    def fingerprint(self) -> str:
        """A hash of the codec's config, weights and number of codebooks kept: cached codes are reused only with the
        very same codec."""
        return codec_fingerprint(self.codec, self.codec.config.to_dict(), self.num_quantizers)

    @classmethod
    def from_pretrained(cls, name_or_path: str, config: Qwen3OmniMoeConfig, **kwargs) -> MimiCodec:
        """Load `kyutai/mimi` (or a local folder) and check it against the Talker of `config`."""
        model = MimiModel.from_pretrained(name_or_path, **kwargs)
        check_codec_matches_talker(model.config, config, codec_name=name_or_path)
        return cls(model, config.talker_config.num_code_groups)

    @torch.no_grad()
    def encode(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Codes `(frames, num_quantizers)` of one mono waveform at `sampling_rate` (encoded alone: no padding)."""
        waveform = torch.as_tensor(waveform, dtype=torch.float32, device=self.codec.device).reshape(1, 1, -1)
        codes = self.codec.encode(waveform, num_quantizers=self.num_quantizers).audio_codes  # (1, Q, T)
        return codes[0].transpose(0, 1).cpu()


def check_codec_matches_talker(codec_config, config: Qwen3OmniMoeConfig, codec_name: str = "the codec") -> None:
    """Refuse a codec whose codebook size, number of codebooks or frame rate differ from the Talker's.

    Raises:
        `ValueError` naming each mismatch, both values and the fix.
    """
    talker = config.talker_config
    expected_codebook = talker.code_predictor_config.vocab_size
    problems = []
    if codec_config.codebook_size != expected_codebook or config.code2wav_config.codebook_size != expected_codebook:
        problems.append(
            f"codebook size {codec_config.codebook_size} != the Talker's {expected_codebook} (code predictor "
            f"vocab_size; code2wav_config.codebook_size={config.code2wav_config.codebook_size})"
        )
    if codec_config.num_quantizers < talker.num_code_groups:
        problems.append(
            f"{codec_config.num_quantizers} codebooks < the Talker's num_code_groups={talker.num_code_groups}"
        )
    if config.code2wav_config.num_quantizers != talker.num_code_groups:
        problems.append(
            f"code2wav_config.num_quantizers={config.code2wav_config.num_quantizers} != talker_config."
            f"num_code_groups={talker.num_code_groups}"
        )
    frame_rate = talker_frame_rate(config)
    if codec_config.sampling_rate != TALKER_OUTPUT_SAMPLING_RATE or abs(codec_config.frame_rate - frame_rate) > 1e-6:
        problems.append(
            f"frame rate {codec_config.frame_rate:g} Hz ({codec_config.frame_size} samples at "
            f"{codec_config.sampling_rate} Hz) != the Talker's {frame_rate:g} Hz (code2wav: "
            f"{TALKER_OUTPUT_SAMPLING_RATE // frame_rate:g} samples per frame at {TALKER_OUTPUT_SAMPLING_RATE} Hz)"
        )
    if problems:
        raise ValueError(
            f"The codec {codec_name!r} does not match this checkpoint's Talker: " + "; ".join(problems) + ". Use the "
            "codec the Talker was trained with (`--codec_name_or_path kyutai/mimi` for Qwen3-Omni-30B-A3B)."
        )


@dataclass
class EncodeSummary:
    """What [`encode_clips`] did: clips kept and skipped (with reasons), encoded now and read from the cache."""

    cache_dir: str
    num_clips: int = 0
    num_kept: int = 0
    num_skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    num_encoded: int = 0
    num_reused: int = 0
    audio_seconds: float = 0.0


@dataclass
class EncodedClip:
    """A clip ready for training: its words, optional user prompt and target codes `(frames, num_code_groups)`."""

    text: str
    codes: torch.Tensor
    prompt: str | None = None
    audio: str | None = None


def _clip_key(audio) -> str:
    """Cache key of one audio value: the file's path, size and mtime, or a hash of its bytes."""
    digest = hashlib.sha256()
    if isinstance(audio, dict) and audio.get("bytes"):
        digest.update(audio["bytes"])
    else:
        path = os.path.abspath(audio_path(audio))
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _encode_one(audio, codec: MimiCodec, max_duration: float, silence_threshold: float) -> tuple[list | None, str]:
    """(codes as a list of frames, "") or (None, reason the clip is skipped)."""
    waveform, reason = read_clip_for_codec(
        audio,
        codec.sampling_rate,
        max_duration=max_duration,
        silence_threshold=silence_threshold,
        min_samples=codec.samples_per_frame,
    )
    if waveform is None:
        return None, reason
    return codec.encode(waveform).tolist(), ""


def encode_clips(
    clips: list[VoiceClip],
    codec: MimiCodec,
    cache_dir: str | os.PathLike,
    prompts: list[str | None] | None = None,
    max_duration: float = 30.0,
    silence_threshold: float = 1e-3,
    allow_mixed_sampling_rates: bool = False,
) -> tuple[list[EncodedClip], EncodeSummary]:
    """Encode the clips' audio into Mimi codes, once: each clip's codes (or the reason it is skipped) are written to
    `cache_dir/clips/<key>.json` as soon as they are computed, so an interrupted run resumes and a second run reads
    everything back. The cache is keyed by the codec's config and weights and
    the settings ([`MimiCodec.fingerprint`]); another codec or setting starts it afresh.

    Unusable clips are skipped, counted by reason and named in the log and in `cache_dir/summary.json`: unreadable
    audio, longer than `max_duration` seconds, silent (peak amplitude below `silence_threshold`), shorter than one
    codec frame. One speaker's clips at several sampling rates are refused ([`~common.clips.check_sampling_rates`])
    unless `allow_mixed_sampling_rates`.

    Returns:
        `(encoded clips, summary)`.

    Raises:
        `ValueError` when the rates are mixed, or when no clip is usable.
    """
    cache_dir = Path(cache_dir)
    prompts = prompts if prompts is not None else [None] * len(clips)
    settings = {
        "format_version": CODES_CACHE_FORMAT_VERSION,
        "codec_fingerprint": codec.fingerprint(),
        "num_quantizers": codec.num_quantizers,
        "max_duration": max_duration,
        "silence_threshold": silence_threshold,
    }
    cache = ResumableCache(cache_dir, settings, info_name=CACHE_INFO_NAME, entries_dir="clips")
    summary = EncodeSummary(cache_dir=str(cache_dir), num_clips=len(clips))
    readable = _readable_clips(clips, prompts, summary)
    if readable:
        check_sampling_rates([clip for clip, _ in readable], allow_mixed=allow_mixed_sampling_rates)
    encoded = []
    for clip, prompt in readable:
        entry = _cached_codes(clip, cache, codec, max_duration, silence_threshold, summary)
        if entry["codes"] is None:
            summary.skipped.append({"audio": str(audio_path(clip.audio)), "reason": entry["reason"]})
            continue
        codes = torch.tensor(entry["codes"], dtype=torch.long)
        encoded.append(EncodedClip(text=clip.text, codes=codes, prompt=prompt, audio=str(audio_path(clip.audio))))
        summary.audio_seconds += codes.shape[0] / codec.frame_rate
    _finish_summary(summary, len(encoded), cache_dir)
    return encoded, summary


def _readable_clips(clips: list[VoiceClip], prompts: list[str | None], summary: EncodeSummary) -> list[tuple]:
    """`(clip, prompt)` of the clips whose file can be opened; the others are added to the skipped ones."""
    readable = []
    for clip, prompt in zip(clips, prompts):
        try:
            read_sampling_rate(clip.audio)
        except Exception as error:  # noqa: BLE001 - unreadable files are skipped and listed
            summary.skipped.append({"audio": str(audio_path(clip.audio)), "reason": unreadable_audio_reason(error)})
            continue
        readable.append((clip, prompt))
    return readable


def _cached_codes(
    clip: VoiceClip,
    cache: ResumableCache,
    codec: MimiCodec,
    max_duration: float,
    silence_threshold: float,
    summary: EncodeSummary,
) -> dict:
    """The clip's cache entry `{"audio", "codes", "reason"}`: read back, or encoded now and recorded at once."""
    key = _clip_key(clip.audio)
    entry = cache.get(key)
    if entry is not None:
        summary.num_reused += 1
        return entry
    codes, reason = _encode_one(clip.audio, codec, max_duration, silence_threshold)
    entry = {"audio": str(audio_path(clip.audio)), "codes": codes, "reason": reason}
    cache.put(key, entry)
    summary.num_encoded += 1
    return entry


def _finish_summary(summary: EncodeSummary, num_kept: int, cache_dir: Path) -> None:
    """Count, write and log the summary (each skipped clip named); refuse when no clip is usable."""
    summary.num_kept = num_kept
    summary.num_skipped = len(summary.skipped)
    summary.skipped_by_reason = count_skip_reasons(summary.skipped)
    (cache_dir / CACHE_SUMMARY_NAME).write_text(json.dumps(summary.__dict__, indent=1))
    logger.warning(
        f"Talker voice data: {summary.num_kept} of {summary.num_clips} clips kept ({summary.audio_seconds:.1f} s of "
        f"speech), {summary.num_skipped} skipped {summary.skipped_by_reason or ''}"
        + "".join(f"\n  skipped {entry['audio']}: {entry['reason']}" for entry in summary.skipped)
        + f"\n{summary.num_encoded} encoded, {summary.num_reused} read from the cache {cache_dir}."
    )
    if not num_kept:
        raise ValueError(
            f"No usable clip: all {summary.num_clips} were skipped ({summary.skipped_by_reason}); see "
            f"{cache_dir / CACHE_SUMMARY_NAME}."
        )
