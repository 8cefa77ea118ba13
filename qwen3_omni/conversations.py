"""The conversation dataset of the Qwen3-Omni fine-tuning recipes, and its media.

A row is `{"conversations": [turn, ...]}` (TRL's `{"messages": [...]}` is accepted too). A turn is
`{"role": "system" | "user" | "assistant", "content": str | [part, ...]}` and a part is one of
`{"type": "text", "text": ...}`, `{"type": "audio", "audio": path}`, `{"type": "image", "image": path}` or
`{"type": "video", "video": path or [frame paths]}`. Relative paths are resolved against the data file's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, load_dataset
from transformers.utils import logging


logger = logging.get_logger(__name__)

MEDIA_TYPES = ("audio", "image", "video")
PART_KEYS = ("type", "text", *MEDIA_TYPES)


@dataclass
class ModalityLossWeights:
    """Per-sample loss weights by the input modalities present, as the seed's `loss_weights` asks.

    A sample's weight is the mean of the weights of the media modalities in its conversation (`audio`, and `vision`
    for images or videos); a text-only sample gets `text`.

    Args:
        text (`float`, *optional*, defaults to 1.0): weight of text-only samples.
        audio (`float`, *optional*, defaults to 0.8): weight of samples with audio.
        vision (`float`, *optional*, defaults to 0.9): weight of samples with images or videos.
    """

    text: float = 1.0
    audio: float = 0.8
    vision: float = 0.9

    @classmethod
    def from_value(cls, value: "ModalityLossWeights | dict | str | None") -> "ModalityLossWeights":
        """Build from a dict, a JSON string (`'{"audio": 0.5}'`) or `None` (the defaults)."""
        if value is None or isinstance(value, cls):
            return value or cls()
        if isinstance(value, str):
            value = json.loads(value)
        unknown = set(value) - {"text", "audio", "vision"}
        if unknown:
            raise ValueError(f"loss_weights has unknown modalities {sorted(unknown)}; use text, audio and vision.")
        return cls(**{key: float(weight) for key, weight in value.items()})

    def for_modalities(self, modalities: set[str]) -> float:
        """The weight of a sample whose conversation holds `modalities` (a subset of audio, image, video)."""
        weights = []
        if "audio" in modalities:
            weights.append(self.audio)
        if modalities & {"image", "video"}:
            weights.append(self.vision)
        return sum(weights) / len(weights) if weights else self.text


def conversation_modalities(conversation: list[dict]) -> set[str]:
    """The media types present in a conversation's content parts."""
    return {
        part["type"]
        for turn in conversation
        if not isinstance(turn["content"], str)
        for part in turn["content"]
        if part["type"] in MEDIA_TYPES
    }


def media_paths(conversation: list[dict]) -> list[str]:
    """Every media file path the conversation refers to, in order (video frames included)."""
    paths = []
    for turn in conversation:
        for part in [] if isinstance(turn["content"], str) else turn["content"]:
            if part["type"] in MEDIA_TYPES:
                value = part[part["type"]]
                paths.extend(value if isinstance(value, list) else [value])
    return paths


def normalize_conversation(
    conversation: list[dict], base_dir: str | None = None, system_prompt: str | None = None
) -> list[dict]:
    """Bring a conversation to one layout: list content everywhere, every part with the keys of `PART_KEYS`, video as
    a list of paths (one file or its frames), relative paths resolved against `base_dir`, `system_prompt` prepended
    when the conversation has no system turn."""

    def resolve(path: str) -> str:
        if base_dir is None or os.path.isabs(path) or "://" in path:
            return path
        return os.path.join(base_dir, path)

    turns = []
    if system_prompt and not (conversation and conversation[0]["role"] == "system"):
        turns.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    for turn in conversation:
        content = turn["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        normalized = []
        for part in parts:
            kind = part.get("type")
            if kind not in ("text", *MEDIA_TYPES):
                raise ValueError(f"Content part type {kind!r} is not supported; use text, audio, image or video.")
            entry = dict.fromkeys(PART_KEYS)
            entry["type"] = kind
            if kind == "text":
                entry["text"] = part["text"]
            elif kind == "video":
                video = part["video"]
                entry["video"] = [resolve(p) for p in video] if isinstance(video, list) else [resolve(video)]
            else:
                entry[kind] = resolve(part[kind])
            normalized.append(entry)
        turns.append({"role": turn["role"], "content": normalized})
    return turns


def load_conversation_dataset(
    path_or_name: str,
    *,
    split: str = "train",
    config_name: str | None = None,
    system_prompt: str | None = None,
    check_media: bool = True,
) -> Dataset:
    """Load a conversation dataset into a `Dataset` with one `conversations` column.

    Args:
        path_or_name (`str`):
            A `.json` (a list of rows) or `.jsonl` file, or anything `datasets.load_dataset` takes (folder, Hub id).
        split (`str`, *optional*, defaults to `"train"`):
            Split to load (ignored for a single file).
        config_name (`str`, *optional*):
            Dataset config of a Hub dataset.
        system_prompt (`str`, *optional*):
            System turn prepended to every conversation that has none.
        check_media (`bool`, *optional*, defaults to `True`):
            Drop the rows whose local media files do not exist, with a warning naming the count and the first paths.
            Unreadable files are caught later, by the collator.
    """
    if os.path.isfile(path_or_name):
        base_dir = os.path.dirname(os.path.abspath(path_or_name))
        with open(path_or_name, encoding="utf-8") as f:
            if path_or_name.endswith(".jsonl"):
                rows = [json.loads(line) for line in f if line.strip()]
            else:
                rows = json.load(f)
        conversations = [normalize_conversation(_conversation_of(row), base_dir, system_prompt) for row in rows]
        dataset = Dataset.from_list([{"conversations": conversation} for conversation in conversations])
    else:
        dataset = load_dataset(path_or_name, name=config_name, split=split)
        base_dir = path_or_name if os.path.isdir(path_or_name) else None
        dataset = dataset.map(
            lambda row: {"conversations": normalize_conversation(_conversation_of(row), base_dir, system_prompt)},
            remove_columns=dataset.column_names,
        )
    if check_media:
        missing = [
            [path for path in media_paths(conversation) if "://" not in path and not os.path.exists(path)]
            for conversation in dataset["conversations"]
        ]
        keep = [index for index, paths in enumerate(missing) if not paths]
        if len(keep) < len(dataset):
            first = [path for paths in missing for path in paths][:5]
            logger.warning(
                f"Skipping {len(dataset) - len(keep)} of {len(dataset)} conversations whose media files are missing "
                f"(first: {first})."
            )
            dataset = dataset.select(keep)
    return dataset


def _conversation_of(row: dict) -> list[dict]:
    for key in ("conversations", "messages"):
        if row.get(key) is not None:
            return row[key]
    raise ValueError(f"A row has neither a 'conversations' nor a 'messages' list: keys {sorted(row)}.")


def load_audio(path: str, sampling_rate: int) -> np.ndarray:
    """Decode an audio file with soundfile to mono float32 at `sampling_rate` (resampled with torchaudio if needed)."""
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != sampling_rate:
        import torch
        import torchaudio.functional as AF

        audio = AF.resample(torch.from_numpy(audio), rate, sampling_rate).numpy()
    return audio


def load_image(path: str):
    """Open an image file as an RGB `PIL.Image`."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def load_video(paths: list[str], fps: float = 2.0, max_frames: int = 64) -> np.ndarray:
    """Load a video as a `(frames, height, width, 3)` uint8 array.

    `paths` is either a list of frame images (taken as they are) or a single video file, decoded at `fps` with the
    ffmpeg command line (no torchcodec/PyAV needed). At most `max_frames` frames are kept, evenly spaced.
    """
    if len(paths) == 1 and os.path.splitext(paths[0])[1].lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
        frames = _decode_video_file(paths[0], fps)
    else:
        frames = np.stack([np.asarray(load_image(path)) for path in paths])
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    # The vision tower patches frames in pairs (temporal_patch_size 2): an odd count is padded by the processor.
    return frames


def _decode_video_file(path: str, fps: float) -> np.ndarray:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise RuntimeError(f"Decoding the video {path!r} needs the ffmpeg and ffprobe programs; install ffmpeg.")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "csv=p=0",
         path],
        capture_output=True, text=True, check=True,
    )
    width, height = (int(value) for value in probe.stdout.strip().split(",")[:2])
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", path, "-vf", f"fps={fps}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    )
    frames = np.frombuffer(decoded.stdout, dtype=np.uint8)
    if frames.size == 0:
        raise RuntimeError(f"ffmpeg decoded no frame from {path!r}.")
    return frames.reshape(-1, height, width, 3)
