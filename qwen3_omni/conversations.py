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
are resolved against the data file's folder (or `--media_dir`); URLs, folders and empty files are refused as media.
A video is a file or a frame list (`[path, ...]`, ms-swift's form) in every format.

With `use_audio_in_video`, a video's sound is taken as each peer takes it (see `row_to_conversation`): in LLaMA-Factory
rows, a `<video>` followed by an `<audio>` pairs that audio with the video as its sound track; otherwise the sound
track inside the video file is used (Qwen's `process_mm_info`, ms-swift); a row where neither holds is refused.

Every text field is checked for control-token strings (`<|im_start|>`, `<|audio_pad|>`, the tokenizer's special
tokens), which the tokenizer would read as the tokens themselves: such rows are refused (`control_token_in_text`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from datasets import Dataset, load_dataset
from transformers.utils import logging


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
SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "observation": "tool",
    "function_call": "assistant",
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Qwen3-Omni's role markers, media pads and media brackets: text holding them would be tokenized as the tokens
# themselves (a fake turn boundary, a media slot without media). The tokenizer's own special tokens are added to these.
QWEN_CONTROL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|audio_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
)
# Marks a parsed JSON object that held a key twice (see `_object_keeping_duplicates`).
DUPLICATE_KEYS = "\x00duplicate_keys"
# Reasons counted against --max_skipped_fraction while training (the collator's counts)
SKIP_KEYS = ("num_skipped_media", "num_dropped_too_long")


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
    def from_value(cls, value: ModalityLossWeights | dict | str | None) -> ModalityLossWeights:
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
            if part.get("video_audio"):
                paths.append(part["video_audio"])
    return paths


def template_conversation(conversation: list[dict]) -> list[dict]:
    """The conversation as a chat template must see it: each part holds `type` and its own key only.

    Qwen's templates pick a part's kind by key presence (`'image' in content`), and rows that went through `datasets`
    come back with every part key present and `None` (Arrow structs share one schema), which such a template would
    render as an image placeholder. Only `type` and the key it names are kept (a video's paired `video_audio` is the
    video's sound, inside the video's placeholder).
    """
    turns = []
    for turn in conversation:
        content = turn["content"]
        if not isinstance(content, str):
            content = [{"type": part["type"], part["type"]: part[part["type"]]} for part in content]
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
    def num_skipped_while_training(self) -> int:
        """Rows the collator did not train: unreadable media, or overlong rows dropped."""
        return sum(self.collator_counts.get(key, 0) for key in SKIP_KEYS)

    @property
    def refused_fraction(self) -> float:
        """Rows not trained over rows read: refused at load plus skipped while training, over the file's rows plus
        the rows read again after the first pass (later epochs), so that a row skipped every epoch keeps its share."""
        rows_read = self.num_rows + max(0, self.collator_counts.get("num_rows_seen", 0) - self.num_kept)
        return (self.num_refused + self.num_skipped_while_training) / rows_read if rows_read else 0.0

    @property
    def num_kept(self) -> int:
        return self.num_rows - self.num_refused

    def to_dict(self) -> dict:
        return {
            "dataset": self.name,
            "format": self.dataset_format,
            "num_rows": self.num_rows,
            "num_kept": self.num_rows - self.num_refused,
            "num_refused": self.num_refused,
            "refused": {
                reason: {
                    "count": len(ids),
                    "first_row_ids": ids[: self.max_listed_ids],
                    "first_message": self.first_messages[reason],
                }
                for reason, ids in sorted(self.refused.items())
            },
            # The collator's counts: rows seen, skipped (unreadable media), dropped or truncated (overlong) while
            # training, and optimizer steps left out because no row of theirs had a label
            "while_training": dict(self.collator_counts),
        }

    def summary(self) -> str:
        """One line per reason, e.g. `placeholder_mismatch: 2 rows (first ids [3, 7])`."""
        lines = [
            f"{self.name} ({self.dataset_format} format): kept {self.num_rows - self.num_refused} of "
            f"{self.num_rows} rows, refused {self.num_refused}."
        ]
        for reason, ids in sorted(self.refused.items()):
            lines.append(
                f"  {reason}: {len(ids)} rows (first ids {ids[: self.max_listed_ids]}); e.g. "
                f"{self.first_messages[reason]}"
            )
        for key, count in sorted(self.collator_counts.items()):
            if count:
                lines.append(f"  {key} while training: {count}")
        return "\n".join(lines)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    def check(self, max_refused_fraction: float) -> None:
        """Raise [`TooManyRowsSkipped`] when more than `max_refused_fraction` of the rows read were refused at load
        or skipped while training."""
        if self.refused_fraction <= max_refused_fraction:
            return
        skipped = self.num_skipped_while_training
        what = (
            f"{self.num_refused} of {self.num_rows} rows ({self.refused_fraction:.1%}) were refused"
            if not skipped
            else f"{self.num_refused} rows refused at load and {skipped} skipped while training "
            f"({self.refused_fraction:.1%} of the rows read)"
        )
        raise TooManyRowsSkipped(
            f"{self.name}: {what}, more than --max_skipped_fraction={max_refused_fraction}. Fix the rows or raise the "
            f"limit.\n{self.summary()}"
        )


class TooManyRowsSkipped(ValueError):
    """More rows were refused or skipped than `--max_skipped_fraction` allows; the message holds the summary."""


def detect_dataset_format(rows: list[dict], sample_size: int = 100) -> str:
    """The format of a list of rows, from its first `sample_size` rows (see `DATASET_FORMATS`).

    A row decides `sharegpt` when its turns have `from`/`value`, `tagged` when it has an `audios`/`images`/`videos`
    list or a string turn with a `<audio>`/`<image>`/`<video>` tag, and `native` when a turn has a list of content
    parts. Text-only string turns decide nothing. `native` and `tagged` rows are read the same way (typed parts and
    tagged strings both work), so together they make `tagged`; only `sharegpt` cannot mix with them.
    """
    decided: dict[str, int] = {}
    for index, row in enumerate(rows[:sample_size]):
        try:
            turns = [turn for turn in _turns_of(row, index) if isinstance(turn, dict)]
        except RowRefused:
            continue  # refused when the row is read
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
        raise ValueError(
            f"The rows mix dataset formats: {found}. Use one format per file, or force one with "
            f"--dataset_format {{{','.join(DATASET_FORMATS)}}}."
        )
    return "sharegpt" if "sharegpt" in decided else "tagged" if "tagged" in decided else "native"


def row_to_conversation(
    row: dict,
    row_id: int,
    dataset_format: str,
    base_dir: str | None = None,
    system_prompt: str | None = None,
    *,
    use_audio_in_video: bool = False,
    control_tokens: Iterable[str] = QWEN_CONTROL_TOKENS,
) -> list[dict]:
    """Convert one row of `dataset_format` to the native layout, or raise [`RowRefused`].

    Text with `<audio>`, `<image>` or `<video>` tags is split into parts that take the row's `audios`, `images` and
    `videos` entries in order; the number of tags of each kind must equal the number of entries given. Relative media
    paths are joined to `base_dir`; URLs are refused. A video part holds a list of paths (one video file, or frames).

    With `use_audio_in_video`, a row of a peer format whose every `<video>` is followed, later in its turn, by an
    `<audio>`, with as many audios as videos, follows LLaMA-Factory's convention (its Qwen-Omni plugin): audio `i` is
    video `i`'s sound track, kept as the video part's `video_audio` and fed once, interleaved into the video's
    placeholder. A `sharegpt` (LLaMA-Factory) row with videos and audios that does not pair them so is refused
    (`video_audio_pairing`), as LLaMA-Factory refuses it. Other rows take the sound track from the video file.

    A row whose text holds one of `control_tokens` is refused (`control_token_in_text`), as is a row with no assistant
    turn (`no_assistant_turn`).
    """
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format={dataset_format!r} is not one of {DATASET_FORMATS}.")
    turns = _row_turns(row, row_id, dataset_format)
    media = {kind: _media_entries(row.get(column), kind, row_id) for kind, column in MEDIA_COLUMNS.items()}
    _check_placeholder_counts(turns, media, row_id)
    paired = (
        use_audio_in_video
        and dataset_format != "native"
        and _pairs_video_with_audio(turns, media, row_id, required=dataset_format == "sharegpt")
    )
    resolve = _media_path_resolver(base_dir, row_id)
    queues = {kind: iter(entries) for kind, entries in media.items()}
    conversation = []
    if system_prompt and not (turns and turns[0]["role"] == "system"):
        conversation.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    for turn in turns:
        conversation.append({"role": turn["role"], "content": _native_parts(turn, row_id, queues, resolve, paired)})
    _check_control_tokens(conversation, row_id, control_tokens)
    return conversation


def _row_turns(row: dict, row_id: int, dataset_format: str) -> list[dict]:
    """The row's turns as `{"role", "content"}`, its `system` column first when it has no system turn; a row with
    `tools` or without an assistant turn is refused."""
    turn_keys = {"from", "value"} if dataset_format == "sharegpt" else {"role", "content", "reasoning_content"}
    turns = [_role_and_content(turn, row_id, dataset_format, turn_keys) for turn in _turns_of(row, row_id)]
    if row.get("system") and not (turns and turns[0]["role"] == "system"):
        # LLaMA-Factory's `system` column (a system turn in the conversation takes precedence)
        turns.insert(0, {"role": "system", "content": row["system"]})
    if row.get("tools"):
        raise RowRefused(
            "tools",
            f"row {row_id}: tool descriptions ('tools') are not supported by this recipe; drop the column or the row.",
        )
    if not any(turn["role"] == "assistant" for turn in turns):
        raise RowRefused(
            "no_assistant_turn",
            f"row {row_id}: no assistant turn, so nothing to learn; add the reply or drop the row.",
        )
    return turns


def _role_and_content(turn, row_id: int, dataset_format: str, turn_keys: set[str]) -> dict:
    """One turn of `dataset_format` as `{"role", "content"}`: a sharegpt role mapped, a function call or reasoning
    laid out as Qwen's templates write them."""
    if not isinstance(turn, dict):
        raise RowRefused("bad_turn", f"row {row_id}: turn {str(turn)[:80]!r} is not a JSON object.")
    unknown = sorted(key for key, value in turn.items() if key not in turn_keys and value is not None)
    if unknown:
        # e.g. TRL `tool_calls` or ms-swift's per-turn `loss`: training without them would not be what was asked
        raise RowRefused(
            "unsupported_turn_key",
            f"row {row_id}: turn keys {unknown} are not supported by this "
            f"recipe ({dataset_format} turns take {sorted(turn_keys)}).",
        )
    if dataset_format == "sharegpt":
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            raise RowRefused(
                "unknown_role",
                f"row {row_id}: sharegpt role {turn.get('from')!r} is not one of {sorted(SHAREGPT_ROLES)}.",
            )
        content = turn.get("value") or ""
        if turn.get("from") == "function_call":
            # Qwen's tool-call layout, as Qwen templates render an assistant `tool_calls` entry
            content = f"<tool_call>\n{content}\n</tool_call>"
        return {"role": role, "content": content}
    role, content = turn.get("role"), turn.get("content")
    if turn.get("reasoning_content"):
        # Qwen3's layout of a reply with reasoning, as its chat template writes `reasoning_content`
        if role != "assistant" or not isinstance(content, str):
            raise RowRefused(
                "bad_reasoning",
                f"row {row_id}: reasoning_content needs an assistant turn with string content.",
            )
        reasoning = turn["reasoning_content"].strip("\n")
        content = f"<think>\n{reasoning}\n</think>\n\n" + content.lstrip("\n")
    return {"role": role, "content": content}


def _check_placeholder_counts(turns: list[dict], media: dict[str, list], row_id: int) -> None:
    """Refuse a row whose `<audio>` / `<image>` / `<video>` tags are not as many as its entries of that kind."""
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


def _media_path_resolver(base_dir: str | None, row_id: int) -> Callable[[str], str]:
    """A media path joined to `base_dir` when relative; a URL or inline data is refused (local files only)."""

    def resolve(path: str) -> str:
        if "://" in path or path.startswith("data:"):
            raise RowRefused(
                "remote_media",
                f"row {row_id}: the media path {path!r} is a URL or inline data; this "
                "recipe reads local files only: download it and give its path.",
            )
        if base_dir is None or os.path.isabs(path):
            return path
        return os.path.join(base_dir, path)

    return resolve


def _native_parts(turn: dict, row_id: int, queues: dict, resolve: Callable[[str], str], paired: bool) -> list[dict]:
    """A turn's content as native typed parts: tagged text split into text and the next media entries, media paths
    resolved; an unknown role, an empty turn or media in a reply are refused."""
    if turn["role"] not in ("system", "user", "assistant", "tool"):
        raise RowRefused(
            "unknown_role", f"row {row_id}: role {turn['role']!r} is not one of system, user, assistant, tool."
        )
    content = turn["content"]
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if parts is None:
        raise RowRefused("empty_turn", f"row {row_id}: a {turn['role']} turn has no content.")
    normalized = []
    for part in parts:
        kind = _part_kind(part, row_id)
        if kind == "text":
            normalized.extend(_split_tags(part["text"], queues, resolve, paired))
        elif kind == "video":
            video = part["video"]
            normalized.append(
                {
                    "type": "video",
                    "video": [resolve(p) for p in video] if isinstance(video, list) else [resolve(video)],
                }
            )
        else:
            normalized.append({"type": kind, kind: resolve(part[kind])})
    if turn["role"] == "assistant" and any(part["type"] != "text" for part in normalized):
        raise RowRefused(
            "media_in_reply",
            f"row {row_id}: an assistant turn holds media; the Thinker only "
            "produces text, so media belong in user turns.",
        )
    return normalized


def control_token_strings(tokenizer=None) -> tuple[str, ...]:
    """The strings refused in text: Qwen3-Omni's control tokens and the tokenizer's special added tokens (not its
    plain added tokens such as `<think>`, which replies may hold)."""
    tokens = set(QWEN_CONTROL_TOKENS)
    if tokenizer is not None:
        tokens.update(token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
        tokens.update(tokenizer.all_special_tokens)
    return tuple(sorted(tokens))


def _check_control_tokens(conversation: list[dict], row_id: int, control_tokens: Iterable[str]) -> None:
    pattern = re.compile("|".join(re.escape(token) for token in sorted(control_tokens, key=len, reverse=True)))
    for turn in conversation:
        for part in turn["content"]:
            found = pattern.search(part["text"]) if part["type"] == "text" else None
            if found:
                raise RowRefused(
                    "control_token_in_text",
                    f"row {row_id}: the {turn['role']} text holds the control token {found.group()!r} (at "
                    f"{part['text'][max(0, found.start() - 20) : found.end() + 20]!r}), which the tokenizer would "
                    "read as the token itself; remove it from the data.",
                )


def _pairs_video_with_audio(turns: list[dict], media: dict, row_id: int, required: bool) -> bool:
    """Whether a row pairs its videos with its audios as LLaMA-Factory's Qwen-Omni plugin does with
    `use_audio_in_video`: as many audios as videos, and each `<video>` followed later in its turn by an `<audio>`.
    With `required` (LLaMA-Factory's own format), a row with videos and audios that breaks this is refused."""
    if not media["video"] or not media["audio"]:
        return False
    problem = None
    if len(media["video"]) != len(media["audio"]):
        problem = f"{len(media['video'])} videos but {len(media['audio'])} audios"
    for turn in turns:
        for text in _texts_of(turn["content"]):
            pending = 0
            for match in PLACEHOLDER.finditer(text):
                if match.group(1) == "video":
                    pending += 1
                elif match.group(1) == "audio":
                    if pending == 0:
                        problem = problem or "an <audio> that follows no <video>"
                    pending = max(0, pending - 1)
            if pending:
                problem = problem or "a <video> with no <audio> after it in its turn"
    if problem is None:
        return True
    if required:
        raise RowRefused(
            "video_audio_pairing",
            f"row {row_id}: with --use_audio_in_video, LLaMA-Factory's convention pairs each <video> with the next "
            f"<audio> of its turn (the audio is the video's sound track), but this row has {problem}; pair them, or "
            "drop the audios to use the sound tracks inside the video files.",
        )
    return False


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
    control_tokens: Iterable[str] = QWEN_CONTROL_TOKENS,
    report: DatasetReport | None = None,
) -> Dataset:
    """Load a conversation dataset into a `Dataset` with `conversations` (native layout) and `row_id` columns.

    Args:
        path_or_name (`str`):
            A `.json` (a list of rows) or `.jsonl` file, or anything `datasets.load_dataset` takes (folder, Hub id).
            A file that is not UTF-8 or not valid JSON is refused with its file name and line.
        split (`str`, *optional*, defaults to `"train"`):
            Split to load (ignored for a single file).
        config_name (`str`, *optional*):
            Dataset config of a Hub dataset.
        system_prompt (`str`, *optional*):
            System turn prepended to every conversation that has none.
        check_media (`bool`, *optional*, defaults to `True`):
            Refuse the rows whose media paths are not existing, non-empty files. Unreadable files are caught later,
            by the collator (skipped and counted against `--max_skipped_fraction`).
        dataset_format (`str`, *optional*, defaults to `"auto"`):
            One of `DATASET_FORMATS`, or `"auto"` to detect it from the first rows (logged).
        media_dir (`str`, *optional*):
            Folder relative media paths are resolved against (default: the data file's folder, or the dataset folder).
        use_audio_in_video (`bool`, *optional*, defaults to `False`):
            Pair LLaMA-Factory's `<video><audio>` as the video's sound (see [`row_to_conversation`]), and refuse the
            rows with a video that has neither a paired audio nor a sound track (frame lists included).
        control_tokens (`Iterable[str]`, *optional*):
            Strings refused in text (see [`control_token_strings`]); Qwen3-Omni's control tokens by default.
        report (`DatasetReport`, *optional*):
            Filled with the detected format, the row count and the refused rows by reason. Every refused row is
            counted there (and the first ones logged) whether or not a report is given.
    """
    rows, base_dir = _read_rows(path_or_name, split, config_name)
    base_dir = media_dir or base_dir
    report = report if report is not None else DatasetReport(name=path_or_name)
    report.num_rows = len(rows)
    if dataset_format == "auto":
        dataset_format = detect_dataset_format([row for row in rows if isinstance(row, dict)])
        logger.info(
            f"{path_or_name}: detected the {dataset_format!r} dataset format ({FORMAT_NAMES[dataset_format]})."
        )
    elif dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format={dataset_format!r} is not one of 'auto', {', '.join(DATASET_FORMATS)}.")
    report.dataset_format = dataset_format

    kept = []
    for row_id, row in enumerate(rows):
        try:
            conversation = _checked_conversation(
                row,
                row_id,
                dataset_format,
                base_dir,
                system_prompt,
                check_media=check_media,
                use_audio_in_video=use_audio_in_video,
                control_tokens=control_tokens,
            )
        except RowRefused as error:
            report.refuse(row_id, error)
            continue
        kept.append({"conversations": conversation, "row_id": row_id})
    if report.num_refused:
        logger.warning(report.summary())
    if not kept:
        raise TooManyRowsSkipped(f"No trainable row left in {path_or_name}.\n{report.summary()}")
    return Dataset.from_list(kept)


def _read_rows(path_or_name: str, split: str, config_name: str | None) -> tuple[list, str | None]:
    """The rows of a JSON / JSON Lines file or of a `datasets` source, and the folder their media paths are relative
    to (the file's folder, the dataset folder, or None for a Hub dataset)."""
    if os.path.isfile(path_or_name):
        return read_json_rows(path_or_name), os.path.dirname(os.path.abspath(path_or_name))
    rows = load_dataset(path_or_name, name=config_name, split=split).to_list()
    return rows, path_or_name if os.path.isdir(path_or_name) else None


def _checked_conversation(
    row,
    row_id: int,
    dataset_format: str,
    base_dir: str | None,
    system_prompt: str | None,
    *,
    check_media: bool,
    use_audio_in_video: bool,
    control_tokens: Iterable[str],
) -> list[dict]:
    """One row as a native conversation, or [`RowRefused`]: not an object, a key given twice, what
    [`row_to_conversation`] refuses, and (when asked) missing media files or videos without sound."""
    if not isinstance(row, dict):
        raise RowRefused("not_an_object", f"row {row_id}: {str(row)[:80]!r} is not a JSON object.")
    duplicates = _duplicate_keys(row)
    if duplicates:
        raise RowRefused(
            "duplicate_key",
            f"row {row_id}: the key(s) {duplicates} appear twice in one JSON "
            "object, and which value is meant is unknown; keep one.",
        )
    conversation = row_to_conversation(
        row,
        row_id,
        dataset_format,
        base_dir,
        system_prompt,
        use_audio_in_video=use_audio_in_video,
        control_tokens=control_tokens,
    )
    if check_media:
        _check_media_files(conversation, row_id)
    if use_audio_in_video:
        _check_video_sound(conversation, row_id)
    return conversation


def read_json_rows(path: str) -> list:
    """The rows of a `.jsonl` file (one JSON value a line) or of a `.json` file (a list), with one-line errors that
    name the file, the line and the fix for text that is not UTF-8, invalid JSON, or a `.json` file that is not a
    list. A JSON object holding a key twice is marked for [`load_conversation_dataset`] to refuse its row."""
    with open(path, "rb") as f:
        raw = f.read()
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path}, line {number}: not UTF-8 (byte 0x{line[error.start]:02x} at column {error.start + 1}); "
                "re-save the file as UTF-8."
            ) from None
    text = raw.decode("utf-8-sig")
    if path.endswith(".jsonl"):
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line, object_pairs_hook=_object_keeping_duplicates))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}): "
                    f"{line[:60]!r}; fix or remove the line."
                ) from None
        return rows
    try:
        rows = json.loads(text, object_pairs_hook=_object_keeping_duplicates)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg}); fix the file (a .json "
            "file holds one list of rows; one row per line goes in a .jsonl file)."
        ) from None
    if isinstance(rows, list):
        return rows
    kind = f"one JSON object (keys {sorted(rows)[:5]})" if isinstance(rows, dict) else f"a {type(rows).__name__}"
    raise ValueError(
        f"{path} holds {kind}, not a list of rows; put the rows in a list ([{{...}}, ...]) or one row "
        "per line in a .jsonl file."
    )


def _object_keeping_duplicates(pairs: list[tuple]) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            obj.setdefault(DUPLICATE_KEYS, []).append(key)
        obj[key] = value
    return obj


def _duplicate_keys(value) -> list[str]:
    """The keys marked as duplicated anywhere in a parsed JSON value."""
    if isinstance(value, dict):
        found = list(value.get(DUPLICATE_KEYS, []))
        return found + [key for item in value.values() for key in _duplicate_keys(item)]
    if isinstance(value, list):
        return [key for item in value for key in _duplicate_keys(item)]
    return []


def _check_media_files(conversation: list[dict], row_id: int) -> None:
    for path in media_paths(conversation):
        if not os.path.exists(path):
            raise RowRefused("missing_media", f"row {row_id}: media file not found: {path!r}.")
        if not os.path.isfile(path):
            raise RowRefused(
                "media_not_a_file",
                f"row {row_id}: the media path {path!r} is a folder, not a file; "
                "name the file (a video given as frames is a list of image paths).",
            )
        if os.path.getsize(path) == 0:
            raise RowRefused("empty_media", f"row {row_id}: the media file {path!r} is empty (0 bytes).")


def _turns_of(row: dict, row_id: int) -> list[dict]:
    for key in ("conversations", "messages"):
        if row.get(key) is not None:
            if not isinstance(row[key], list):
                raise RowRefused("bad_turn", f"row {row_id}: '{key}' is not a list of turns.")
            return row[key]
    raise RowRefused(
        "no_turns",
        f"row {row_id} has neither a 'conversations' nor a 'messages' list: keys "
        f"{sorted(key for key in row if key != DUPLICATE_KEYS)}.",
    )


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
        raise RowRefused(
            "bad_part",
            f"row {row_id}: content part {part!r} must hold exactly one of text, audio, "
            f"image, video (its type {kind!r}).",
        )
    return kind


def _media_entries(value, kind: str, row_id: int) -> list[str | list[str]]:
    """The entries of an `audios`/`images`/`videos` column: paths or `{"path": ...}` entries, and for videos also
    frame lists (`[path, ...]`, ms-swift's form)."""
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    entries = []
    for entry in value:
        path = entry.get("path") if isinstance(entry, dict) else entry
        frames = (
            kind == "video"
            and isinstance(path, list)
            and path
            and all(isinstance(frame, str) and frame for frame in path)
        )
        if not frames and (not isinstance(path, str) or not path):
            raise RowRefused(
                "bad_media_entry",
                f"row {row_id}: {MEDIA_COLUMNS[kind]} entry {str(entry)[:80]!r} is "
                "not a file path"
                + (" or a list of frame paths" if kind == "video" else "")
                + " (in-memory media are not supported; give paths).",
            )
        entries.append(path)
    return entries


def _split_tags(text: str, queues: dict, resolve, paired: bool) -> list[dict]:
    """Split a text at its media tags into text and media parts, taking the media from `queues` in order. With
    `paired`, each `<audio>` tag is the sound of a `<video>` before it: the video part takes the audio as its
    `video_audio`, and the tag itself makes no part."""
    parts, position = [], 0
    for match in PLACEHOLDER.finditer(text):
        if match.start() > position:
            parts.append({"type": "text", "text": text[position : match.start()]})
        position = match.end()
        kind = match.group(1)
        if kind == "audio" and paired:
            continue
        entry = next(queues[kind])
        if kind == "video":
            part = {
                "type": "video",
                "video": [resolve(path) for path in entry] if isinstance(entry, list) else [resolve(entry)],
            }
            if paired:
                part["video_audio"] = resolve(next(queues["audio"]))
            parts.append(part)
        else:
            parts.append({"type": kind, kind: resolve(entry)})
    if position < len(text) or not parts:
        parts.append({"type": "text", "text": text[position:]})
    return parts


def _check_video_sound(conversation: list[dict], row_id: int) -> None:
    for turn in conversation:
        for part in turn["content"]:
            if part["type"] != "video" or part.get("video_audio"):
                continue
            paths = part["video"]
            if is_frame_list(paths):
                raise RowRefused(
                    "video_without_audio",
                    f"row {row_id}: a video given as {len(paths)} frame images "
                    "has no sound track, which --use_audio_in_video needs; give the video file, or pair "
                    "an audio with it (<video><audio>, LLaMA-Factory's convention).",
                )
            try:
                sound = has_audio_stream(paths[0])
            except ValueError as error:
                raise RowRefused("unreadable_media", f"row {row_id}: {error}") from None
            if not sound:
                raise RowRefused(
                    "video_without_audio",
                    f"row {row_id}: the video {paths[0]!r} has no sound track, "
                    "which --use_audio_in_video needs; give a video with its sound, or pair an audio "
                    "with it (<video><audio> and 'audios', LLaMA-Factory's convention).",
                )


def has_audio_stream(path: str) -> bool:
    """Whether a video file has an audio stream, asked of PyAV as `qwen-omni-utils` asks it."""
    import av

    try:
        with av.open(path) as container:
            return any(stream.type == "audio" for stream in container.streams)
    except av.error.FFmpegError as error:
        raise ValueError(f"the video {path!r} cannot be opened: {error}") from None


def is_frame_list(paths: list[str]) -> bool:
    """Whether a video part's paths are frame images rather than one video file."""
    return len(paths) != 1 or os.path.splitext(paths[0])[1].lower() in IMAGE_EXTENSIONS


def decode_media(
    conversation: list[dict], *, use_audio_in_video: bool = False, fps: float = 2.0, max_frames: int | None = None
) -> dict:
    """Decode a conversation's media as Qwen's inference path does, with `qwen-omni-utils` (`process_audio_info` and
    `process_vision_info`, which `process_mm_info` runs): audio with librosa at 16 kHz, images and frames resized to
    its pixel budgets, video files sampled at `fps` (at most `max_frames` frames), frame lists taken whole at `fps`.

    With `use_audio_in_video`, each video also gives an audio: its paired `video_audio` file where the row pairs one
    (LLaMA-Factory's convention), else the sound track of the video file, as `process_mm_info` reads it.

    Returns a dict with `audios` (in the order their tokens appear), `audio_sources` (for each audio, the index of the
    video it is the sound of, or `None`), `images`, `videos` and `video_fps` (each video's sampling rate).
    """
    from qwen_omni_utils import process_audio_info, process_vision_info

    _ensure_video_file_reader()
    audio_parts, audio_sources, vision_parts = [], [], []
    for turn in conversation:
        for part in [] if isinstance(turn["content"], str) else turn["content"]:
            if part["type"] == "audio":
                audio_parts.append({"type": "audio", "audio": part["audio"]})
                audio_sources.append(None)
            elif part["type"] == "image":
                vision_parts.append({"type": "image", "image": part["image"]})
            elif part["type"] == "video":
                paths = part["video"]
                if is_frame_list(paths):
                    element = {"type": "video", "video": list(paths), "sample_fps": fps}
                else:
                    element = {"type": "video", "video": paths[0], "fps": fps}
                    if max_frames is not None:
                        element["max_frames"] = max_frames
                if use_audio_in_video:
                    if part.get("video_audio"):
                        audio_parts.append({"type": "audio", "audio": part["video_audio"]})
                    elif is_frame_list(paths):
                        raise ValueError(f"A video given as frame images has no sound track: {paths[:2]}")
                    else:
                        audio_parts.append({"type": "video", "video": paths[0]})
                    audio_sources.append(sum(p["type"] == "video" for p in vision_parts))
                vision_parts.append(element)
    audios = None
    if audio_parts:
        audios = process_audio_info([{"role": "user", "content": audio_parts}], use_audio_in_video)
    images, videos, video_kwargs = (
        process_vision_info([{"role": "user", "content": vision_parts}], return_video_kwargs=True)
        if vision_parts
        else (None, None, {"fps": []})
    )
    return {
        "audios": audios,
        "audio_sources": audio_sources,
        "images": images,
        "videos": videos,
        "video_fps": video_kwargs["fps"],
    }


def _ensure_video_file_reader() -> None:
    """Give `qwen-omni-utils` a video file reader where it has none.

    It reads files with torchcodec or decord when installed, else with `torchvision.io.read_video`, which recent
    torchvision releases removed. That reader decoded every frame with PyAV; `_read_video_pyav` does the same and
    samples the frames as `qwen-omni-utils` does (`smart_nframes`, evenly spaced indices).
    """
    import torchvision.io
    from qwen_omni_utils.v2_5 import vision_process

    if not hasattr(torchvision.io, "read_video"):
        vision_process.VIDEO_READER_BACKENDS["torchvision"] = _read_video_pyav


def _read_video_pyav(element: dict):
    """`qwen-omni-utils`' torchvision reader on PyAV: `(frames (T, C, H, W) uint8, metadata, sample_fps)`."""
    import av
    import numpy as np
    import torch
    from qwen_omni_utils.v2_5 import vision_process

    path = element["video"]
    path = path.removeprefix("file://")
    with av.open(path) as container:
        stream = container.streams.video[0]
        video_fps = float(stream.average_rate)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"No video frame could be decoded from {path!r}.")
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    total_frames = len(video)
    nframes = vision_process.smart_nframes(element, total_frames=total_frames, video_fps=video_fps)
    indices = torch.linspace(0, total_frames - 1, nframes).round().long()
    sample_fps = nframes / max(total_frames, 1e-6) * video_fps
    metadata = {"fps": video_fps, "frames_indices": indices, "total_num_frames": total_frames, "video_backend": "pyav"}
    return video[indices], metadata, sample_fps
