"""The conversation dataset of the Qwen3-Omni fine-tuning recipes, and its media.

Rows come in one of `DATASET_FORMATS`, detected from the first rows (or forced with `--dataset_format`):

- `native`: `{"conversations": [turn, ...]}` (or TRL's `{"messages": [...]}`), a turn being
  `{"role": "system" | "user" | "assistant" | "tool", "content": str | [part, ...]}` and a part one of
  `{"type": "text", "text": ...}`, `{"type": "audio", "audio": path}`, `{"type": "image", "image": path}` or
  `{"type": "video", "video": path or [frame paths]}`. An assistant turn may carry `reasoning_content`.
- `sharegpt`: LLaMA-Factory's sharegpt form, `{"conversations": [{"from": "human", "value": "<audio>..."}, ...],
  "system": ..., "audios": [...], "images": [...], "videos": [...]}` with its default tags (roles `human`, `gpt`,
  `system`, `observation`, `function_call`).
- `tagged`: LLaMA-Factory's OpenAI form and ms-swift's standard form, `{"messages": [{"role": "user", "content":
  "<image>..."}, ...], "images": [...], "audios": [...], "videos": [...]}`.

In every format a `<audio>`, `<image>` or `<video>` tag in the text takes the next entry of the row's `audios`,
`images` or `videos` list, and a row whose tag count differs from its list length is refused (never trained with
fewer media than it names), as is a row with turn keys the recipe cannot honour (e.g. `tool_calls`). Relative paths
are resolved against the data file's folder (or `--media_dir`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from datasets import Dataset, load_dataset
from transformers.utils import logging

from ..common.audio import read_audio, resample


logger = logging.get_logger(__name__)

MEDIA_TYPES = ("audio", "image", "video")
MEDIA_COLUMNS = {"audio": "audios", "image": "images", "video": "videos"}
PLACEHOLDER = re.compile(r"<(audio|image|video)>")
DATASET_FORMATS = ("native", "sharegpt", "tagged")
FORMAT_NAMES = {
    "native": "typed content parts",
    "sharegpt": "LLaMA-Factory sharegpt: from/value turns, <audio>/<image>/<video> tags, audios/images/videos lists",
    "tagged": "LLaMA-Factory OpenAI / ms-swift messages: role/content turns, <audio>/<image>/<video> tags, "
    "audios/images/videos lists",
}
# LLaMA-Factory's default sharegpt tags (user_tag, assistant_tag, system_tag, observation_tag, function_tag)
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool",
                  "function_call": "assistant"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


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


def template_conversation(conversation: list[dict]) -> list[dict]:
    """The conversation as a chat template must see it: each part holds `type` and its own key only.

    Qwen's templates pick a part's kind by key presence (`'image' in content`), and rows that went through `datasets`
    come back with every part key present and `None` (Arrow structs share one schema), which such a template would
    render as an image placeholder. Keys set to `None` are dropped here.
    """
    turns = []
    for turn in conversation:
        content = turn["content"]
        if not isinstance(content, str):
            content = [{key: value for key, value in part.items() if value is not None} for part in content]
        turns.append({"role": turn["role"], "content": content})
    return turns


class RowRefused(ValueError):
    """A dataset row that cannot be trained as given; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class DatasetReport:
    """What loading a conversation dataset kept and refused, per reason, with the first refused row ids.

    Filled by [`load_conversation_dataset`]; `train/sft.py` logs it, writes it to the output dir
    (`data_report_{split}.json`) and stops before training when more than `--max_skipped_fraction` of the rows were
    refused. Row ids are 0-based positions in the source file or split.
    """

    name: str
    dataset_format: str | None = None
    num_rows: int = 0
    refused: dict[str, list[int]] = field(default_factory=dict)
    first_messages: dict[str, str] = field(default_factory=dict)
    collator_counts: dict[str, int] = field(default_factory=dict)

    max_listed_ids: ClassVar[int] = 10

    def refuse(self, row_id: int, error: RowRefused) -> None:
        """Count `row_id` under `error.reason`; the first `max_listed_ids` refusals of each reason are logged."""
        ids = self.refused.setdefault(error.reason, [])
        ids.append(row_id)
        self.first_messages.setdefault(error.reason, str(error))
        if len(ids) <= self.max_listed_ids:
            logger.warning(f"{self.name}: refusing row {row_id}: {error}")
        if len(ids) == self.max_listed_ids:
            logger.warning(f"{self.name}: further {error.reason} refusals are only counted (see the summary).")

    @property
    def num_refused(self) -> int:
        return sum(len(ids) for ids in self.refused.values())

    @property
    def refused_fraction(self) -> float:
        return self.num_refused / self.num_rows if self.num_rows else 0.0

    def to_dict(self) -> dict:
        return {
            "dataset": self.name,
            "format": self.dataset_format,
            "num_rows": self.num_rows,
            "num_kept": self.num_rows - self.num_refused,
            "num_refused": self.num_refused,
            "refused": {
                reason: {"count": len(ids), "first_row_ids": ids[: self.max_listed_ids],
                         "first_message": self.first_messages[reason]}
                for reason, ids in sorted(self.refused.items())
            },
            # The collator's counts: rows skipped (unreadable media), dropped or truncated (overlong) while training
            "while_training": dict(self.collator_counts),
        }

    def summary(self) -> str:
        """One line per reason, e.g. `placeholder_mismatch: 2 rows (first ids [3, 7])`."""
        lines = [f"{self.name} ({self.dataset_format} format): kept {self.num_rows - self.num_refused} of "
                 f"{self.num_rows} rows, refused {self.num_refused}."]
        for reason, ids in sorted(self.refused.items()):
            lines.append(f"  {reason}: {len(ids)} rows (first ids {ids[: self.max_listed_ids]}); e.g. "
                         f"{self.first_messages[reason]}")
        for key, count in sorted(self.collator_counts.items()):
            if count:
                lines.append(f"  {key} while training: {count}")
        return "\n".join(lines)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    def check(self, max_refused_fraction: float) -> None:
        """Raise when more than `max_refused_fraction` of the rows were refused."""
        if self.refused_fraction > max_refused_fraction:
            raise ValueError(
                f"{self.name}: {self.num_refused} of {self.num_rows} rows ({self.refused_fraction:.1%}) were refused, "
                f"more than --max_skipped_fraction={max_refused_fraction}. Fix the rows or raise the limit.\n"
                f"{self.summary()}"
            )


def detect_dataset_format(rows: list[dict], sample_size: int = 100) -> str:
    """The format of a list of rows, from its first `sample_size` rows (see `DATASET_FORMATS`).

    A row decides `sharegpt` when its turns have `from`/`value`, `tagged` when it has an `audios`/`images`/`videos`
    list or a string turn with a `<audio>`/`<image>`/`<video>` tag, and `native` when a turn has a list of content
    parts. Text-only string turns decide nothing. `native` and `tagged` rows are read the same way (typed parts and
    tagged strings both work), so together they make `tagged`; only `sharegpt` cannot mix with them.
    """
    decided: dict[str, int] = {}
    for index, row in enumerate(rows[:sample_size]):
        turns = _turns_of(row, index)
        if any(turn.get("from") is not None or turn.get("value") is not None for turn in turns):
            decided.setdefault("sharegpt", index)
        elif any(row.get(column) for column in MEDIA_COLUMNS.values()) or any(
            isinstance(turn.get("content"), str) and PLACEHOLDER.search(turn["content"]) for turn in turns
        ):
            decided.setdefault("tagged", index)
        elif any(isinstance(turn.get("content"), list) for turn in turns):
            decided.setdefault("native", index)
    if "sharegpt" in decided and len(decided) > 1:
        found = ", ".join(f"{name} (row {index})" for name, index in decided.items())
        raise ValueError(f"The rows mix dataset formats: {found}. Use one format per file, or force one with "
                         f"--dataset_format {{{','.join(DATASET_FORMATS)}}}.")
    return "sharegpt" if "sharegpt" in decided else "tagged" if "tagged" in decided else "native"


def row_to_conversation(
    row: dict, row_id: int, dataset_format: str, base_dir: str | None = None, system_prompt: str | None = None
) -> list[dict]:
    """Convert one row of `dataset_format` to the native layout, or raise [`RowRefused`].

    Text with `<audio>`, `<image>` or `<video>` tags is split into parts that take the row's `audios`, `images` and
    `videos` entries in order; the number of tags of each kind must equal the number of entries given. Relative media
    paths are joined to `base_dir`.
    """
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format={dataset_format!r} is not one of {DATASET_FORMATS}.")
    turn_keys = {"from", "value"} if dataset_format == "sharegpt" else {"role", "content", "reasoning_content"}
    turns = []
    for turn in _turns_of(row, row_id):
        unknown = sorted(key for key, value in turn.items() if key not in turn_keys and value is not None)
        if unknown:
            # e.g. TRL `tool_calls` or ms-swift's per-turn `loss`: training without them would not be what was asked
            raise RowRefused("unsupported_turn_key", f"row {row_id}: turn keys {unknown} are not supported by this "
                             f"recipe ({dataset_format} turns take {sorted(turn_keys)}).")
        if dataset_format == "sharegpt":
            role = SHAREGPT_ROLES.get(turn.get("from"))
            if role is None:
                raise RowRefused("unknown_role", f"row {row_id}: sharegpt role {turn.get('from')!r} is not one of "
                                 f"{sorted(SHAREGPT_ROLES)}.")
            content = turn.get("value") or ""
            if turn.get("from") == "function_call":
                # Qwen's tool-call layout, as Qwen templates render an assistant `tool_calls` entry
                content = f"<tool_call>\n{content}\n</tool_call>"
        else:
            role, content = turn.get("role"), turn.get("content")
            if turn.get("reasoning_content"):
                # Qwen3's layout of a reply with reasoning, as its chat template writes `reasoning_content`
                if role != "assistant" or not isinstance(content, str):
                    raise RowRefused("bad_reasoning", f"row {row_id}: reasoning_content needs an assistant turn with "
                                     "string content.")
                reasoning = turn["reasoning_content"].strip("\n")
                content = f"<think>\n{reasoning}\n</think>\n\n" + content.lstrip("\n")
        turns.append({"role": role, "content": content})
    if row.get("system") and not (turns and turns[0]["role"] == "system"):
        # LLaMA-Factory's `system` column (a system turn in the conversation takes precedence)
        turns.insert(0, {"role": "system", "content": row["system"]})
    if row.get("tools"):
        raise RowRefused("tools", f"row {row_id}: tool descriptions ('tools') are not supported by this recipe; "
                         "drop the column or the row.")

    media = {kind: _media_entries(row.get(column), kind, row_id) for kind, column in MEDIA_COLUMNS.items()}
    tags = dict.fromkeys(MEDIA_TYPES, 0)
    for turn in turns:
        for text in _texts_of(turn["content"]):
            for match in PLACEHOLDER.finditer(text):
                tags[match.group(1)] += 1
    for kind in MEDIA_TYPES:
        if tags[kind] != len(media[kind]):
            raise RowRefused(
                "placeholder_mismatch",
                f"row {row_id}: {tags[kind]} <{kind}> placeholder(s) in the text but {len(media[kind])} "
                f"{MEDIA_COLUMNS[kind]} given; each <{kind}> tag takes one entry of '{MEDIA_COLUMNS[kind]}', in "
                "order.",
            )

    def resolve(path: str) -> str:
        if base_dir is None or os.path.isabs(path) or "://" in path:
            return path
        return os.path.join(base_dir, path)

    queues = {kind: iter(entries) for kind, entries in media.items()}
    conversation = []
    if system_prompt and not (turns and turns[0]["role"] == "system"):
        conversation.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    for turn in turns:
        if turn["role"] not in ("system", "user", "assistant", "tool"):
            raise RowRefused("unknown_role", f"row {row_id}: role {turn['role']!r} is not one of system, user, "
                             "assistant, tool.")
        content = turn["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if parts is None:
            raise RowRefused("empty_turn", f"row {row_id}: a {turn['role']} turn has no content.")
        normalized = []
        for part in parts:
            kind = _part_kind(part, row_id)
            if kind == "text":
                normalized.extend(_split_tags(part["text"], queues, resolve))
            elif kind == "video":
                video = part["video"]
                normalized.append({"type": "video", "video": [resolve(p) for p in video] if isinstance(video, list)
                                   else [resolve(video)]})
            else:
                normalized.append({"type": kind, kind: resolve(part[kind])})
        if turn["role"] == "assistant" and any(part["type"] != "text" for part in normalized):
            raise RowRefused("media_in_reply", f"row {row_id}: an assistant turn holds media; the Thinker only "
                             "produces text, so media belong in user turns.")
        conversation.append({"role": turn["role"], "content": normalized})
    return conversation


def load_conversation_dataset(
    path_or_name: str,
    *,
    split: str = "train",
    config_name: str | None = None,
    system_prompt: str | None = None,
    check_media: bool = True,
    dataset_format: str = "auto",
    media_dir: str | None = None,
    use_audio_in_video: bool = False,
    report: DatasetReport | None = None,
) -> Dataset:
    """Load a conversation dataset into a `Dataset` with `conversations` (native layout) and `row_id` columns.

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
            Refuse the rows whose local media files do not exist. Unreadable files are caught later, by the collator.
        dataset_format (`str`, *optional*, defaults to `"auto"`):
            One of `DATASET_FORMATS`, or `"auto"` to detect it from the first rows (logged).
        media_dir (`str`, *optional*):
            Folder relative media paths are resolved against (default: the data file's folder, or the dataset folder).
        use_audio_in_video (`bool`, *optional*, defaults to `False`):
            Refuse the rows with a video that has no sound track (frame lists included), which
            `--use_audio_in_video` cannot honour.
        report (`DatasetReport`, *optional*):
            Filled with the detected format, the row count and the refused rows by reason. Every refused row is
            counted there (and the first ones logged) whether or not a report is given.
    """
    if os.path.isfile(path_or_name):
        base_dir = os.path.dirname(os.path.abspath(path_or_name))
        with open(path_or_name, encoding="utf-8") as f:
            if path_or_name.endswith(".jsonl"):
                rows = [json.loads(line) for line in f if line.strip()]
            else:
                rows = json.load(f)
    else:
        rows = load_dataset(path_or_name, name=config_name, split=split).to_list()
        base_dir = path_or_name if os.path.isdir(path_or_name) else None
    base_dir = media_dir or base_dir
    report = report if report is not None else DatasetReport(name=path_or_name)
    if dataset_format == "auto":
        dataset_format = detect_dataset_format(rows)
        logger.info(
            f"{path_or_name}: detected the {dataset_format!r} dataset format ({FORMAT_NAMES[dataset_format]})."
        )
    elif dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format={dataset_format!r} is not one of 'auto', {', '.join(DATASET_FORMATS)}.")
    report.dataset_format, report.num_rows = dataset_format, len(rows)

    kept = []
    for row_id, row in enumerate(rows):
        try:
            conversation = row_to_conversation(row, row_id, dataset_format, base_dir, system_prompt)
            if check_media:
                missing = [
                    path for path in media_paths(conversation) if "://" not in path and not os.path.exists(path)
                ]
                if missing:
                    raise RowRefused("missing_media", f"row {row_id}: media files not found: {missing[:3]}.")
            if use_audio_in_video:
                _check_video_sound(conversation, row_id)
        except RowRefused as error:
            report.refuse(row_id, error)
            continue
        kept.append({"conversations": conversation, "row_id": row_id})
    if report.num_refused:
        logger.warning(report.summary())
    if not kept:
        raise ValueError(f"No trainable row left in {path_or_name}.\n{report.summary()}")
    return Dataset.from_list(kept)


def _turns_of(row: dict, row_id: int) -> list[dict]:
    for key in ("conversations", "messages"):
        if row.get(key) is not None:
            return row[key]
    raise ValueError(f"Row {row_id} has neither a 'conversations' nor a 'messages' list: keys {sorted(row)}.")


def _texts_of(content: str | list[dict] | None) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [part["text"] for part in content or [] if part.get("text") is not None and _kind_or_none(part) == "text"]


def _kind_or_none(part: dict) -> str | None:
    if part.get("type") is not None:
        return part["type"]
    present = [key for key in ("text", *MEDIA_TYPES) if part.get(key) is not None]
    return present[0] if len(present) == 1 else None


def _part_kind(part: dict, row_id: int) -> str:
    """A part's kind: its `type`, or its only non-empty key; one kind per part."""
    kind = _kind_or_none(part)
    if kind not in ("text", *MEDIA_TYPES):
        raise RowRefused("bad_part", f"row {row_id}: content part {part!r} is not one of text, audio, image, video.")
    others = [key for key in ("text", *MEDIA_TYPES) if key != kind and part.get(key) is not None]
    if others or part.get(kind) is None:
        raise RowRefused("bad_part", f"row {row_id}: content part {part!r} must hold exactly one of text, audio, "
                         f"image, video (its type {kind!r}).")
    return kind


def _media_entries(value, kind: str, row_id: int) -> list[str]:
    """The paths of an `audios`/`images`/`videos` column: a list of paths or of `{"path": ...}` entries."""
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    paths = []
    for entry in value:
        path = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(path, str) or not path:
            raise RowRefused("bad_media_entry", f"row {row_id}: {MEDIA_COLUMNS[kind]} entry {str(entry)[:80]!r} is "
                             "not a file path (in-memory media are not supported; give paths).")
        paths.append(path)
    return paths


def _split_tags(text: str, queues: dict, resolve) -> list[dict]:
    """Split a text at its media tags into text and media parts, taking the media from `queues` in order."""
    parts, position = [], 0
    for match in PLACEHOLDER.finditer(text):
        if match.start() > position:
            parts.append({"type": "text", "text": text[position : match.start()]})
        kind = match.group(1)
        path = resolve(next(queues[kind]))
        parts.append({"type": kind, kind: [path] if kind == "video" else path})
        position = match.end()
    if position < len(text) or not parts:
        parts.append({"type": "text", "text": text[position:]})
    return parts


def _check_video_sound(conversation: list[dict], row_id: int) -> None:
    for turn in conversation:
        for part in turn["content"]:
            if part["type"] != "video":
                continue
            paths = part["video"]
            if len(paths) != 1 or _is_image_file(paths[0]):
                raise RowRefused("video_without_audio", f"row {row_id}: a video given as {len(paths)} frame images "
                                 "has no sound track, which --use_audio_in_video needs; give the video file.")
            if not has_audio_stream(paths[0]):
                raise RowRefused("video_without_audio", f"row {row_id}: the video {paths[0]!r} has no sound track, "
                                 "which --use_audio_in_video needs.")


def _is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def has_audio_stream(path: str) -> bool:
    """Whether a video file has an audio stream (asked of ffprobe)."""
    _require_ffmpeg(path)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index", "-of", "csv=p=0", path],
        capture_output=True, text=True, check=True,
    )
    return bool(probe.stdout.strip())


def load_video_audio(path: str, sampling_rate: int) -> np.ndarray:
    """Decode the sound track of a video file to mono float32 at `sampling_rate` with the ffmpeg command line."""
    _require_ffmpeg(path)
    if not has_audio_stream(path):
        raise RuntimeError(f"The video {path!r} has no sound track, which use_audio_in_video needs.")
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", path, "-vn", "-ac", "1", "-ar", str(sampling_rate), "-f", "f32le", "-"],
        capture_output=True, check=True,
    )
    return np.frombuffer(decoded.stdout, dtype=np.float32).copy()


def _require_ffmpeg(path: str) -> None:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise RuntimeError(f"Decoding the video {path!r} needs the ffmpeg and ffprobe programs; install ffmpeg.")


def load_audio(path: str, sampling_rate: int) -> np.ndarray:
    """Decode an audio file with soundfile to mono float32 at `sampling_rate` (the Omni wing's reader: empty,
    non-finite and truncated files raise)."""
    waveform, rate = read_audio(path)
    return resample(waveform, rate, sampling_rate)


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
    if len(paths) == 1 and not _is_image_file(paths[0]):
        frames = _decode_video_file(paths[0], fps)
    else:
        frames = np.stack([np.asarray(load_image(path)) for path in paths])
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    # The vision tower patches frames in pairs (temporal_patch_size 2): an odd count is padded by the processor.
    return frames


def _decode_video_file(path: str, fps: float) -> np.ndarray:
    _require_ffmpeg(path)
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
