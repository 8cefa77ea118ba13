# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Clip tables for both wings: [`load_audio_text_rows`] reads a speech corpus (a Hugging Face dataset, a JSONL /
JSON / CSV / TSV table of audio paths and transcripts, a folder with such a metadata file, or a LibriSpeech /
LibriTTS tree) into rows `{"id", "audio", "text", "speaker"}` without decoding audio; [`read_clips`] turns a
speaker's rows into [`VoiceClip`]s and refuses unusable ones; [`check_sampling_rates`] refuses one speaker's clips at
mixed rates; [`count_skip_reasons`] is the one rule for counting skipped rows by reason."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

from .audio import audio_path, read_sampling_rate


logger = logging.get_logger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
METADATA_NAMES = ("metadata.jsonl", "metadata.json", "metadata.csv", "metadata.tsv")


def _rows_from_table(
    path: Path, audio_column: str, text_column: str, speaker_column: str | None, allow_missing_text: bool = False
) -> list[dict]:
    """Rows of a JSONL / JSON / CSV / TSV metadata file; relative audio paths are resolved against its folder. A row
    without `text_column` raises, or gets an empty text when `allow_missing_text`."""
    # Read here rather than with load_dataset("json" / "csv"): its errors name neither the file's line nor the fix.
    if path.suffix == ".jsonl":
        records = []
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path} line {line_number} is not valid JSON ({error.msg} column {error.colno}): fix or "
                        "remove that line; each line must be one JSON object."
                    ) from None
                if not isinstance(record, dict):
                    raise ValueError(
                        f"{path} line {line_number} holds a JSON {type(record).__name__}, not an object with the "
                        "audio and text columns."
                    )
                records.append(record)
    elif path.suffix == ".json":
        records = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(records, dict):
            records = records.get("data", records.get("rows", []))
    elif path.suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as handle:
            records = list(csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        raise ValueError(f"{path} is not a .jsonl, .json, .csv or .tsv metadata file.")
    rows = []
    for index, record in enumerate(records):
        if audio_column not in record or (text_column not in record and not allow_missing_text):
            raise ValueError(
                f"{path} row {index} has the columns {sorted(record)}, but the audio column {audio_column!r} and the "
                f"text column {text_column!r} are required. Pass the right names with --audio_column / --text_column."
            )
        audio = record[audio_column]
        if isinstance(audio, str) and not os.path.isabs(audio):
            audio = str(path.parent / audio)
        speaker = record.get(speaker_column) if speaker_column else None
        rows.append(
            {
                "id": str(record.get("id", f"{path.stem}-{index}")),
                "audio": audio,
                "text": record.get(text_column, ""),
                "speaker": None if speaker is None else str(speaker),
            }
        )
    return rows


def _rows_from_tree(root: Path) -> list[dict]:
    """
    Rows of a LibriSpeech tree (`<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` with `<id> <TEXT>` lines beside
    the flac files) or a LibriTTS-style tree (each `<id>.wav` beside `<id>.normalized.txt`, `<id>.original.txt`,
    `<id>.txt` or `<id>.lab`). The speaker is the first part of the id (LibriSpeech, LibriTTS) or the parent folder.
    """
    rows = []
    for transcript_file in sorted(root.rglob("*.trans.txt")):
        for line in transcript_file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utterance, _, text = line.partition(" ")
            audio = next(
                (
                    transcript_file.parent / f"{utterance}{ext}"
                    for ext in AUDIO_EXTENSIONS
                    if (transcript_file.parent / f"{utterance}{ext}").exists()
                ),
                transcript_file.parent / f"{utterance}.flac",
            )
            rows.append({"id": utterance, "audio": str(audio), "text": text, "speaker": utterance.split("-")[0]})
    if rows:
        return rows
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        stem = audio.with_suffix("")
        transcript = next(
            (
                Path(f"{stem}{ext}")
                for ext in (".normalized.txt", ".original.txt", ".txt", ".lab")
                if Path(f"{stem}{ext}").exists()
            ),
            None,
        )
        # an audio file without a transcript is a row with an empty text: skipped and listed, not ignored
        text = transcript.read_text(encoding="utf-8").strip() if transcript else ""
        speaker = audio.stem.split("_")[0] if "_" in audio.stem and audio.parent == root else audio.parent.name
        if audio.parent != root and audio.parent.parent != root:
            speaker = audio.relative_to(root).parts[0]
        rows.append({"id": audio.stem, "audio": str(audio), "text": text, "speaker": speaker})
    return rows


def load_audio_text_rows(
    source: str | os.PathLike,
    audio_column: str = "audio",
    text_column: str = "text",
    speaker_column: str | None = "speaker",
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
    allow_missing_text: bool = False,
):
    """
    Read a speech corpus into rows `{"id", "audio", "text", "speaker"}` without decoding any audio.

    Args:
        source (`str` or `os.PathLike`):
            One of: a JSONL / JSON / CSV / TSV file of audio paths (relative to the file) and transcripts; a folder
            holding `metadata.jsonl` (or `.json` / `.csv` / `.tsv`); a LibriSpeech or LibriTTS folder tree; a folder
            written by `datasets.Dataset.save_to_disk`; a folder of data files or a Hub id that
            `datasets.load_dataset` reads (its audio column is cast to `Audio(decode=False)`, so audio stays bytes
            or paths and is decoded by [`read_audio`], without FFmpeg).
        audio_column, text_column (`str`): names of the audio and transcript columns.
        speaker_column (`str`, *optional*): name of the speaker column; rows get `speaker=None` if it is absent.
        split (`str`): split of a `datasets` source.
        dataset_config (`str`, *optional*): configuration name of a Hub dataset.
        streaming (`bool`): stream a `datasets` source instead of downloading it whole (an `IterableDataset`).
        allow_missing_text (`bool`): give a metadata-file row that lacks `text_column` an empty text instead of
            raising, so that the caller counts and reports it with the other untranscribed rows (voice fine-tuning
            refuses them all in one error). A `datasets` source still needs the column.

    Returns:
        `datasets.Dataset` (or `IterableDataset` when streaming a `datasets` source) with the columns `id`, `audio`
        (path string, or `{"path", "bytes"}`), `text`, `speaker`.

    Raises:
        `ValueError` naming the available columns when `audio_column` or `text_column` is missing (see
        `allow_missing_text`), and when the source holds no rows.
    """
    import datasets

    rows = _local_rows(Path(source), audio_column, text_column, speaker_column, allow_missing_text)
    if rows is not None:
        if not rows:
            raise ValueError(f"{source} holds no audio rows.")
        return datasets.Dataset.from_list(rows)
    dataset = _datasets_source(source, split, dataset_config, streaming)
    return _audio_text_columns(dataset, source, split, audio_column, text_column, speaker_column)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists())


def _local_rows(
    path: Path, audio_column: str, text_column: str, speaker_column: str | None, allow_missing_text: bool
) -> list[dict] | None:
    """The rows of a table file, of a folder's metadata table or of a LibriSpeech-style tree; None for a source that
    `datasets` reads."""
    if path.is_file():
        return _rows_from_table(path, audio_column, text_column, speaker_column, allow_missing_text)
    if path.is_dir() and not _is_saved_dataset(path):
        metadata = next((path / name for name in METADATA_NAMES if (path / name).exists()), None)
        if metadata is not None:
            return _rows_from_table(metadata, audio_column, text_column, speaker_column, allow_missing_text)
        if any(path.rglob("*.trans.txt")) or any(p.suffix.lower() in AUDIO_EXTENSIONS for p in path.rglob("*")):
            return _rows_from_tree(path)
    return None


def _datasets_source(source: str | os.PathLike, split: str, dataset_config: str | None, streaming: bool):
    """A `save_to_disk` folder's split, or what `datasets.load_dataset` reads from a folder or a Hub id."""
    import datasets

    path = Path(source)
    if not _is_saved_dataset(path):
        return datasets.load_dataset(str(source), dataset_config, split=split, streaming=streaming)
    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"{source} has the splits {list(dataset)}, not {split!r}; pass --dataset_split.")
        dataset = dataset[split]
    return dataset.to_iterable_dataset() if streaming else dataset


def _audio_text_columns(dataset, source, split: str, audio_column: str, text_column: str, speaker_column: str | None):
    """`dataset` with the columns `id`, `audio` (undecoded), `text`, `speaker` only; missing audio or transcript
    columns are refused, naming the ones it has."""
    import datasets

    columns = list(dataset.column_names or dataset.features or [])
    missing = [name for name in (audio_column, text_column) if name not in columns]
    if missing:
        raise ValueError(
            f"The dataset {source} (split {split!r}) has the columns {columns}, not {missing}. Name its audio and "
            "transcript columns with --audio_column / --text_column."
        )
    if isinstance(dataset.features.get(audio_column) if dataset.features else None, datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    has_speaker = speaker_column is not None and speaker_column in columns
    has_id = "id" in columns

    def to_row(example: dict, index: int) -> dict:
        speaker = example[speaker_column] if has_speaker else None
        return {
            "id": str(example["id"]) if has_id else f"row-{index}",
            "audio": example[audio_column],
            "text": example[text_column],
            "speaker": None if speaker is None else str(speaker),
        }

    # the original columns are dropped before the new ones are written, so overlapping names are fine
    return dataset.map(to_row, with_indices=True, remove_columns=columns)


def count_skip_reasons(skipped: list[dict]) -> dict[str, int]:
    """How many skipped entries each reason has; a reason is the text of an entry's `reason` before its first ':'
    (the rest names the particular value)."""
    return dict(Counter(entry["reason"].split(":")[0] for entry in skipped))


@dataclass
class VoiceClip:
    """One training example: where its audio is, what is said and who says it."""

    audio: str | dict
    """A file path or a `{"path", "bytes"}` value, decoded by [`~common.audio.read_audio`]."""
    text: str
    speaker: str | None


def read_clips(
    dataset: str | os.PathLike,
    speaker: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    speaker_column: str | None = "speaker",
    split: str = "train",
    dataset_config: str | None = None,
) -> list[VoiceClip]:
    """
    Read a speaker's (audio, transcript) clips from any source that `train/prepare_data.py` reads (see
    [`load_audio_text_rows`]): a folder with `metadata.jsonl` / `.json` / `.csv` / `.tsv` (audio
    paths relative to it), such a file, a LibriSpeech / LibriTTS tree, a `save_to_disk` folder or a Hub dataset.

    Unlike data preparation, which skips and lists unusable rows, a voice is learned from few clips: any clip without
    a transcript, audio or speaker name is refused before training.

    Args:
        dataset: the source.
        speaker: speaker name for clips without one.
        audio_column, text_column, speaker_column: the source's column names.
        split, dataset_config: split and configuration of a `datasets` source.

    Raises:
        `ValueError` naming the clips that have no transcript or no audio file, or no speaker name.
    """
    rows = load_audio_text_rows(
        dataset,
        audio_column,
        text_column,
        speaker_column,
        split=split,
        dataset_config=dataset_config,
        allow_missing_text=True,
    )
    clips, no_text, no_audio = [], [], []
    for row in rows:
        audio, text = row["audio"], row["text"]
        name = audio_path(audio) or row["id"]
        has_bytes = isinstance(audio, dict) and audio.get("bytes")
        if not has_bytes and not (name and os.path.isfile(name)):
            no_audio.append(str(name))
            continue
        if not isinstance(text, str) or not text.strip():
            no_text.append(str(name))
            continue
        clips.append(VoiceClip(audio, text.strip(), row["speaker"] or speaker))
    if no_text:
        raise ValueError(
            f"{len(no_text)} of {len(rows)} clips in {dataset} have no transcript (e.g. {no_text[:3]}); every clip "
            f"needs its words in the column {text_column!r} (name another with VoiceSFTArguments.text_column). "
            "Transcribe them (e.g. with train/evaluate.py's ASR or Whisper) or remove those rows."
        )
    if no_audio:
        raise ValueError(
            f"{len(no_audio)} of {len(rows)} rows in {dataset} name no existing audio file (e.g. {no_audio[:3]}); give "
            f"each row an audio path in the column {audio_column!r}, absolute or relative to the metadata file."
        )
    unnamed = [str(audio_path(clip.audio)) for clip in clips if not clip.speaker]
    if unnamed:
        raise ValueError(
            f"{len(unnamed)} clips have no speaker name (e.g. {unnamed[:2]}); the prompt is '{{speaker}}: {{text}}'. "
            f"Add a {speaker_column or 'speaker'!r} column to the metadata or pass a speaker name "
            "(VoiceSFTArguments.speaker)."
        )
    return clips


def check_sampling_rates(clips: list[VoiceClip], allow_mixed: bool = False) -> dict[str, int]:
    """
    The sampling rate of each speaker's clips. One speaker's clips at several rates usually come from different
    recording chains, and the voice learned would be a mixture of them: refused unless `allow_mixed`.

    Returns:
        `{speaker: rate}` (the most common rate when mixed rates are allowed).
    """
    rates: dict[str, Counter] = defaultdict(Counter)
    examples: dict[tuple[str, int], str] = {}
    for clip in clips:
        rate = read_sampling_rate(clip.audio)
        rates[clip.speaker][rate] += 1
        examples.setdefault((clip.speaker, rate), str(audio_path(clip.audio)))
    mixed = {speaker: counts for speaker, counts in rates.items() if len(counts) > 1}
    if mixed and not allow_mixed:
        details = "; ".join(
            f"{speaker!r}: "
            + ", ".join(
                f"{count} clips at {rate} Hz (e.g. {examples[(speaker, rate)]})"
                for rate, count in counts.most_common()
            )
            for speaker, counts in mixed.items()
        )
        target = max(next(iter(mixed.values())))
        raise ValueError(
            f"One speaker's clips come at several sampling rates: {details}. Mixed rates usually mean mixed recording "
            f"setups, which blur the voice. Resample them to one rate first (e.g. `sox in.flac -r {target} out.flac`), "
            "or accept the mixture with VoiceSFTArguments.allow_mixed_sampling_rates=True (each clip is then resampled "
            "to the codec's rate)."
        )
    for speaker, counts in mixed.items():
        logger.warning(f"Speaker {speaker!r} has clips at {dict(counts)} Hz; all are resampled to the codec's rate.")
    return {speaker: counts.most_common(1)[0][0] for speaker, counts in rates.items()}
