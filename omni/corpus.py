# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Speech corpora -> SNAC token datasets, done once.

- [`load_audio_text_rows`] reads a corpus into a `datasets` dataset with the columns `id`, `audio`, `text`,
  `speaker` (audio left undecoded: a path or `{"path", "bytes"}`), from a Hugging Face dataset (Hub id or local
  folder, including `save_to_disk` folders), a JSONL / JSON / CSV / TSV file of audio paths and transcripts, a folder
  with such a metadata file, or a LibriSpeech / LibriTTS folder tree.
- [`read_audio`] decodes one audio value (wav / flac / ogg / mp3) with soundfile: no FFmpeg, no torchcodec.
- [`prepare_dataset`] decodes, resamples and encodes the rows with a [`SNACAudioTokenizer`] in length-sorted
  batches and writes the codes as an Arrow dataset, shard by shard, so that a second run skips finished shards.
  Rows it cannot use are skipped, counted and listed in `summary.json`.
- [`load_prepared_dataset`] opens what `prepare_dataset` wrote.

Prepared rows hold `audio_codes`: the SNAC codes in the frame order of [`SNACTokenLayout`] with
`audio_token_offset=0`, i.e. `position * codebook_size + code`. A model's vocabulary ids are
`audio_codes + audio_token_offset`, so one prepared corpus serves every tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from ..common.audio import read_audio, resample
from ..common.clips import count_skip_reasons
from ..feature_extraction_omni import SNACFeatureExtractor
from ..modeling_snac import SNACAudioTokenizer
from ..processing_omni import PAD_TOKEN, SPECIAL_TOKENS, encode_audio, utterance_problem


logger = logging.get_logger(__name__)

PREPARE_INFO_NAME = "prepare_info.json"
SUMMARY_NAME = "summary.json"
SHARDS_DIR = "shards"
# bump when the layout of prepared rows or the rules for keeping them change, so that old shards are not reused
# (2: rows whose text or speaker holds a control-token string are skipped)
PREPARE_FORMAT_VERSION = 2
# the control tokens every Omni tokenizer has; `utterance_problem` also refuses anything of the `<|...|>` form
CONTROL_TOKEN_STRINGS = (*SPECIAL_TOKENS.values(), PAD_TOKEN)


# ---------------------------------------------------------------------------------------------------- reading rows


# ---------------------------------------------------------------------------------------------------- decoding audio
def read_text_documents(path: str | os.PathLike) -> list[str]:
    """The documents of a text-only corpus file, one per line, checked line by line: blank lines are skipped, and so
    is a line that could not go into a sequence (a control-token string, see [`utterance_problem`]), both counted in
    one log line that names the first refused lines. A file that is not UTF-8 is refused with the line it fails on."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(
            f"--text_file {path}: line {line} is not valid UTF-8 ({error.reason}); re-encode the file as UTF-8."
        ) from None
    documents, blank, refused = [], 0, {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            blank += 1
            continue
        problem = utterance_problem(line, special_tokens=CONTROL_TOKEN_STRINGS, what=f"line {number}")
        if problem is not None:
            refused[number] = problem
            continue
        documents.append(line)
    message = f"--text_file {path}: {len(documents)} documents, {blank} blank lines skipped, {len(refused)} refused"
    if refused:
        first = list(refused.items())[:3]
        logger.warning(f"{message} (first: {'; '.join(problem for _, problem in first)}).")
    else:
        logger.info(f"{message}.")
    if not documents:
        raise ValueError(f"{message}: no document is left; give one text document per line.")
    return documents


def _decode_row(
    row: dict, sampling_rate: int, max_duration: float | None
) -> tuple[dict, np.ndarray | None, str | None]:
    """Decode and resample one row; returns (row, waveform or None, reason it was skipped or None)."""
    text = (row.get("text") or "").strip()
    if not text:
        return row, None, "empty transcript"
    problem = utterance_problem(text, row.get("speaker") or None, CONTROL_TOKEN_STRINGS, what="transcript")
    if problem is not None:
        return row, None, f"unusable text: {problem}"
    try:
        waveform, rate = read_audio(row["audio"])
    except Exception as error:  # noqa: BLE001 - any decoding failure skips the row, with its reason listed
        return row, None, f"unreadable audio: {type(error).__name__}: {error}"
    duration = waveform.size / rate
    if max_duration is not None and duration > max_duration:
        return row, None, f"longer than the limit: {duration:.2f} s > max_duration {max_duration} s"
    return row, resample(waveform, rate, sampling_rate), None


def _audio_label(audio: Any) -> str:
    if isinstance(audio, dict):
        return str(audio.get("path") or "<bytes>")
    return str(audio)


# ---------------------------------------------------------------------------------------------------- preparing
@dataclass
class PrepareSummary:
    """What [`prepare_dataset`] did: rows kept and skipped (with reasons), shards encoded and reused."""

    output_dir: str
    num_rows: int = 0
    num_kept: int = 0
    num_skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    shards_encoded: int = 0
    shards_reused: int = 0
    audio_seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def codec_fingerprint(audio_tokenizer: SNACAudioTokenizer) -> str:
    """A hash of the codec config and weights: prepared shards are reused only with the very same codec."""
    digest = hashlib.sha256(json.dumps(audio_tokenizer.config.snac_kwargs, sort_keys=True).encode())
    for name, tensor in sorted(audio_tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _shard_dir(output_dir: Path, index: int) -> Path:
    return output_dir / SHARDS_DIR / f"shard-{index:05d}"


def _iter_chunks(rows, shard_size: int, first_shard: int) -> Iterator[tuple[int, list[dict] | None]]:
    """(shard index, rows) for each shard; rows of shards before `first_shard` are not materialised."""
    import datasets

    if isinstance(rows, datasets.Dataset):
        for index, start in enumerate(range(0, len(rows), shard_size)):
            yield (
                index,
                (
                    None
                    if index < first_shard
                    else rows.select(range(start, min(start + shard_size, len(rows)))).to_list()
                ),
            )
        return
    iterator = iter(rows.skip(first_shard * shard_size) if first_shard else rows)
    index = first_shard
    while True:
        chunk = [row for _, row in zip(range(shard_size), iterator)]
        if not chunk:
            return
        yield index, chunk
        index += 1


def prepare_dataset(
    rows,
    output_dir: str | os.PathLike,
    audio_tokenizer: SNACAudioTokenizer,
    max_duration: float | None = 30.0,
    shard_size: int = 512,
    num_proc: int | None = None,
    device: str | torch.device | None = None,
    source_name: str | None = None,
    show_progress: bool = True,
    encode_batch_size: int = 8,
) -> PrepareSummary:
    """
    Encode speech rows into SNAC codes and write them as an Arrow dataset (see [`load_prepared_dataset`]).

    Rows are processed in shards of `shard_size`: each shard's audio is decoded and resampled (in `num_proc`
    worker processes), encoded by `audio_tokenizer` in length-sorted batches of `encode_batch_size`, and saved
    under `output_dir/shards/`. A run that finds a shard written with the same source, settings and codec weights
    skips it, so an interrupted or repeated run only does the missing work. `summary.json` lists every skipped row.

    Args:
        rows: output of [`load_audio_text_rows`] (`Dataset` or streaming `IterableDataset`).
        output_dir: folder to write to.
        audio_tokenizer ([`SNACAudioTokenizer`]): the codec (e.g. `processor.audio_tokenizer`).
        max_duration (`float`, *optional*): rows longer than this many seconds are skipped (and listed).
        shard_size (`int`): rows per shard (and per unit of resumable work).
        num_proc (`int`, *optional*): processes decoding and resampling audio in parallel.
        device: where the codec runs; defaults to CUDA when available.
        source_name (`str`, *optional*): name of the source, recorded in `prepare_info.json` and in the fingerprint.
        show_progress (`bool`): show a progress bar over rows.
        encode_batch_size (`int`): clips per codec call.

    Returns:
        [`PrepareSummary`]; it is also written to `output_dir/summary.json`.

    Raises:
        `ValueError` when no row could be used (the summary file is written first).
    """
    from tqdm.auto import tqdm

    if max_duration is not None and (isinstance(max_duration, bool) or not max_duration > 0):
        raise ValueError(f"max_duration={max_duration!r} must be a positive number of seconds (or None for no limit).")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    audio_tokenizer.to(device)
    # rows are held to `max_duration` here (longer ones skipped and listed): the front end's default limit, meant
    # for model inputs, must not refuse them
    feature_extractor = SNACFeatureExtractor(
        sampling_rate=audio_tokenizer.config.sampling_rate, max_duration_seconds=math.inf
    )
    layout = audio_tokenizer.token_layout
    info = {
        "format_version": PREPARE_FORMAT_VERSION,
        "source": source_name,
        "max_duration": max_duration,
        "shard_size": shard_size,
        "codec_fingerprint": codec_fingerprint(audio_tokenizer),
        "codec_config": audio_tokenizer.config.snac_kwargs,
        "sampling_rate": feature_extractor.sampling_rate,
        "vq_strides": layout.vq_strides,
        "codebook_size": layout.codebook_size,
        "tokens_per_frame": layout.tokens_per_frame,
    }
    info_file = output_dir / PREPARE_INFO_NAME
    previous = json.loads(info_file.read_text()) if info_file.exists() else None
    done: dict[str, dict] = {}
    if previous is not None and {k: v for k, v in previous.items() if k != "shards"} == info:
        done = previous.get("shards", {})
    elif previous is not None:
        logger.warning(f"{output_dir} was prepared with other settings or another codec; encoding everything again.")
    info["shards"] = done

    summary = PrepareSummary(output_dir=str(output_dir))
    for shard in done.values():
        summary.skipped.extend(shard["skipped"])
    total = len(rows) if hasattr(rows, "__len__") else None
    first_missing = 0
    while str(first_missing) in done:
        first_missing += 1
    summary.shards_reused += first_missing if not hasattr(rows, "__len__") else 0
    progress = tqdm(total=total, desc="prepare_data", unit="clip", disable=not show_progress)
    pool = None
    if num_proc and num_proc > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(num_proc)
    last_index = -1
    try:
        for index, chunk in _iter_chunks(rows, shard_size, first_missing):
            last_index = index
            if str(index) in done and (not done[str(index)]["num_kept"] or _shard_dir(output_dir, index).exists()):
                summary.shards_reused += 1
                progress.update(done[str(index)]["num_rows"])
                continue
            arguments = [(row, feature_extractor.sampling_rate, max_duration) for row in chunk]
            decoded = pool.starmap(_decode_row, arguments) if pool else [_decode_row(*a) for a in arguments]
            kept, skipped = [], []
            for row, waveform, reason in decoded:
                if reason is None:
                    kept.append((row, waveform))
                else:
                    skipped.append({"id": row["id"], "audio": _audio_label(row["audio"]), "reason": reason})
            records = _encode_shard(kept, feature_extractor, audio_tokenizer, encode_batch_size)
            if records:  # a shard whose rows were all skipped is only recorded in prepare_info.json
                _write_shard(records, _shard_dir(output_dir, index))
            done[str(index)] = {"num_rows": len(chunk), "num_kept": len(records), "skipped": skipped}
            summary.skipped.extend(skipped)
            summary.shards_encoded += 1
            info_file.write_text(json.dumps(info, indent=1))  # after each shard: an interrupted run resumes here
            progress.update(len(chunk))
    finally:
        progress.close()
        if pool is not None:
            pool.close()
    # a streamed source is not read again for the finished leading shards: they count as present
    last_index = max(last_index, first_missing - 1)
    # shards beyond the source's end (a source that shrank) must not be loaded
    info["shards"] = {k: v for k, v in sorted(done.items(), key=lambda kv: int(kv[0])) if int(k) <= last_index}
    info_file.write_text(json.dumps(info, indent=1))

    summary.num_rows = sum(shard["num_rows"] for shard in info["shards"].values())
    summary.num_kept = sum(shard["num_kept"] for shard in info["shards"].values())
    summary.skipped = [s for shard in info["shards"].values() for s in shard["skipped"]]
    summary.num_skipped = len(summary.skipped)
    summary.skipped_by_reason = count_skip_reasons(summary.skipped)
    if summary.num_kept:
        summary.audio_seconds = float(sum(load_prepared_dataset(output_dir)["duration"]))
    (output_dir / SUMMARY_NAME).write_text(json.dumps(summary.to_dict(), indent=1))
    (logger.warning if summary.num_skipped else logger.info)(
        f"prepare_data: {summary.num_kept} of {summary.num_rows} rows kept ({summary.audio_seconds:.1f} s of audio), "
        f"{summary.num_skipped} skipped {summary.skipped_by_reason or ''}; {summary.shards_encoded} shards encoded, "
        f"{summary.shards_reused} reused. Skipped rows are listed in {output_dir / SUMMARY_NAME}."
    )
    if not summary.num_kept:
        raise ValueError(
            f"No usable row in {source_name or 'the dataset'}: all {summary.num_rows} rows were skipped "
            f"({summary.skipped_by_reason}); see {output_dir / SUMMARY_NAME}. Check the paths, the transcript column "
            "and --max_duration."
        )
    return summary


def _encode_shard(
    kept: list[tuple[dict, np.ndarray]],
    feature_extractor: SNACFeatureExtractor,
    audio_tokenizer: SNACAudioTokenizer,
    batch_size: int,
) -> list[dict]:
    if not kept:
        return []
    # prepared rows hold layout ids with offset 0 (the codec's own numbering); the vocabulary offset is added later
    relative = audio_tokenizer.token_layout
    waveforms = [torch.from_numpy(w) for _, w in kept]
    codes = encode_audio(feature_extractor, audio_tokenizer, waveforms, feature_extractor.sampling_rate, batch_size)
    records = []
    for (row, waveform), clip_codes in zip(kept, codes):
        records.append(
            {
                "id": row["id"],
                "text": row["text"].strip(),
                "speaker": row.get("speaker"),
                "audio_codes": relative.codes_to_ids(clip_codes).to(torch.int32).tolist(),
                "duration": waveform.size / feature_extractor.sampling_rate,
            }
        )
    return records


def _write_shard(records: list[dict], shard_dir: Path) -> None:
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "text": datasets.Value("string"),
            "speaker": datasets.Value("string"),
            "audio_codes": datasets.List(datasets.Value("int32")),
            "duration": datasets.Value("float32"),
        }
    )
    dataset = datasets.Dataset.from_list(records, features=features)
    tmp_dir = shard_dir.with_name(shard_dir.name + ".tmp")
    dataset.save_to_disk(str(tmp_dir))
    if shard_dir.exists():
        import shutil

        shutil.rmtree(shard_dir)
    tmp_dir.rename(shard_dir)


def check_prepared_rows(rows, processor, source: str | os.PathLike) -> None:
    """
    Refuse prepared rows whose text or speaker `processor` cannot put into a sequence (see
    [`~OmniProcessor.utterance_problem`]), naming them, before training builds any sample. `prepare_dataset` skips
    such rows already; this catches folders prepared by an older version, and tokenizers whose special tokens are
    not of the `<|...|>` form.
    """
    unusable = []
    for row in rows.select_columns(["id", "text", "speaker"]) if hasattr(rows, "select_columns") else rows:
        problem = processor.utterance_problem(row["text"], row.get("speaker") or None, what="transcript")
        if problem is not None:
            unusable.append(f"row {row['id']!r}: {problem}")
    if unusable:
        listed = "; ".join(unusable[:5]) + ("; ..." if len(unusable) > 5 else "")
        raise ValueError(
            f"{len(unusable)} prepared rows of {source} cannot be used for training: {listed}. Prepare the corpus "
            "again with train/prepare_data.py (it skips such rows and lists them in summary.json), or fix their text."
        )


def is_prepared_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by [`prepare_dataset`]."""
    return (Path(path) / PREPARE_INFO_NAME).exists()


def read_prepare_info(path: str | os.PathLike) -> dict:
    """The settings and codec description a prepared folder was written with."""
    return json.loads((Path(path) / PREPARE_INFO_NAME).read_text())


def load_prepared_dataset(path: str | os.PathLike):
    """
    The rows a [`prepare_dataset`] run wrote: a `datasets.Dataset` with `id`, `text`, `speaker`, `audio_codes`
    (layout ids with `audio_token_offset=0`; add the model's offset) and `duration` (seconds).
    """
    import datasets

    path = Path(path)
    if not is_prepared_dataset(path):
        raise ValueError(
            f"{path} is not a prepared dataset (no {PREPARE_INFO_NAME}); run train/prepare_data.py first."
        )
    shards = read_prepare_info(path).get("shards", {})
    parts = [
        datasets.load_from_disk(str(_shard_dir(path, int(i))))
        for i in sorted(shards, key=int)
        if shards[i]["num_kept"]
    ]
    if not parts:
        raise ValueError(f"The prepared dataset {path} holds no rows; see {path / SUMMARY_NAME} for what was skipped.")
    return datasets.concatenate_datasets(parts)


__all__ = [
    "PrepareSummary",
    "check_prepared_rows",
    "codec_fingerprint",
    "is_prepared_dataset",
    "load_prepared_dataset",
    "prepare_dataset",
    "read_prepare_info",
]
