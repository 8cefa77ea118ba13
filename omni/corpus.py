# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Speech corpora -> SNAC token datasets, done once.

- [`prepare_dataset`] decodes, resamples and encodes the rows of `common.clips.load_audio_text_rows` with a
  [`SNACAudioTokenizer`] in length-sorted batches and writes the codes as an Arrow dataset, shard by shard, so that a
  second run skips finished shards (`common.codec_cache`'s skip rules, codec fingerprint and resumable cache, shared
  with the Talker voice's codes; see docs/codec_cache.md). Rows it cannot use are skipped, counted and listed in
  `summary.json`.
- [`load_prepared_dataset`] opens what `prepare_dataset` wrote.

Prepared rows hold `audio_codes`: the SNAC codes in the frame order of [`SNACTokenLayout`] with
`audio_token_offset=0`, i.e. `position * codebook_size + code`. A model's vocabulary ids are
`audio_codes + audio_token_offset`, so one prepared corpus serves every tokenizer.
"""

from __future__ import annotations

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

from ..common.clips import count_skip_reasons
from ..common.codec_cache import ResumableCache, codec_fingerprint, read_clip_for_codec
from ..feature_extraction_omni import SNACFeatureExtractor
from ..modeling_snac import SNACAudioTokenizer
from ..processing_omni import PAD_TOKEN, SPECIAL_TOKENS, encode_audio, utterance_problem


logger = logging.get_logger(__name__)

PREPARE_INFO_NAME = "prepare_info.json"
SUMMARY_NAME = "summary.json"
SHARDS_DIR = "shards"
# bump when the layout of prepared rows or the rules for keeping them change, so that old shards are not reused
# (2: rows whose text or speaker holds a control-token string are skipped; 3: each finished shard is recorded in
# shards/shard-NNNNN.json, common.codec_cache's resumable cache)
PREPARE_FORMAT_VERSION = 3
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
    waveform, reason = read_clip_for_codec(row["audio"], sampling_rate, max_duration=max_duration)
    return row, waveform, reason


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


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _shard_dir(output_dir: Path, index: int) -> Path:
    return output_dir / SHARDS_DIR / _shard_name(index)


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
    settings = _prepare_settings(
        audio_tokenizer, feature_extractor.sampling_rate, source_name, max_duration, shard_size
    )
    cache = ResumableCache(
        output_dir, settings, info_name=PREPARE_INFO_NAME, entries_dir=SHARDS_DIR, index_keys=("shards",)
    )
    # shard records by index (as prepare_info.json's index lists them)
    done = {str(int(key.removeprefix("shard-"))): entry for key, entry in cache.entries().items()}
    summary = PrepareSummary(output_dir=str(output_dir))
    first_missing = 0
    while str(first_missing) in done:
        first_missing += 1
    summary.shards_reused += first_missing if not hasattr(rows, "__len__") else 0
    encoder = _ShardEncoder(output_dir, cache, feature_extractor, audio_tokenizer, max_duration, encode_batch_size)
    last_index = encoder.encode_missing(rows, shard_size, first_missing, done, summary, num_proc, show_progress)
    # a streamed source is not read again for the finished leading shards: they count as present
    last_index = max(last_index, first_missing - 1)
    # shards beyond the source's end (a source that shrank) must not be loaded
    shards = {k: v for k, v in sorted(done.items(), key=lambda kv: int(kv[0])) if int(k) <= last_index}
    cache.keep_only({_shard_name(int(k)) for k in shards})
    cache.write_info(shards=shards)
    _finish_summary(summary, shards, output_dir, source_name)
    return summary


def _prepare_settings(
    audio_tokenizer: SNACAudioTokenizer,
    sampling_rate: int,
    source_name: str | None,
    max_duration: float | None,
    shard_size: int,
) -> dict:
    """What shapes the prepared rows: a folder prepared with other settings is encoded again."""
    layout = audio_tokenizer.token_layout
    return {
        "format_version": PREPARE_FORMAT_VERSION,
        "source": source_name,
        "max_duration": max_duration,
        "shard_size": shard_size,
        "codec_fingerprint": codec_fingerprint(audio_tokenizer, audio_tokenizer.config.snac_kwargs),
        "codec_config": audio_tokenizer.config.snac_kwargs,
        "sampling_rate": sampling_rate,
        "vq_strides": layout.vq_strides,
        "codebook_size": layout.codebook_size,
        "tokens_per_frame": layout.tokens_per_frame,
    }


@dataclass
class _ShardEncoder:
    """Decodes (in worker processes), encodes and writes the shards not prepared yet, recording each when done."""

    output_dir: Path
    cache: ResumableCache
    feature_extractor: SNACFeatureExtractor
    audio_tokenizer: SNACAudioTokenizer
    max_duration: float | None
    encode_batch_size: int

    def encode_missing(
        self,
        rows,
        shard_size: int,
        first_missing: int,
        done: dict[str, dict],
        summary: PrepareSummary,
        num_proc: int | None,
        show_progress: bool,
    ) -> int:
        """Encode every shard of `rows` not in `done` (adding it there); returns the last shard index seen."""
        from tqdm.auto import tqdm

        total = len(rows) if hasattr(rows, "__len__") else None
        progress = tqdm(total=total, desc="prepare_data", unit="clip", disable=not show_progress)
        pool = None
        # not Dataset.map(num_proc=...): each shard's waveforms would go through Arrow and back, and its worker pool
        # would start again for every shard (this one lives for the whole run)
        if num_proc and num_proc > 1:
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(num_proc)
        last_index = -1
        try:
            for index, chunk in _iter_chunks(rows, shard_size, first_missing):
                last_index = index
                record = done.get(str(index))
                if record is not None and (not record["num_kept"] or _shard_dir(self.output_dir, index).exists()):
                    summary.shards_reused += 1
                    progress.update(record["num_rows"])
                    continue
                done[str(index)] = self.encode_shard(index, chunk, pool)
                summary.shards_encoded += 1
                progress.update(len(chunk))
        finally:
            progress.close()
            if pool is not None:
                pool.close()
        return last_index

    def encode_shard(self, index: int, chunk: list[dict], pool) -> dict:
        """Decode, encode and write one shard, then record it (an interrupted run resumes after it)."""
        arguments = [(row, self.feature_extractor.sampling_rate, self.max_duration) for row in chunk]
        decoded = pool.starmap(_decode_row, arguments) if pool else [_decode_row(*a) for a in arguments]
        kept, skipped = [], []
        for row, waveform, reason in decoded:
            if reason is None:
                kept.append((row, waveform))
            else:
                skipped.append({"id": row["id"], "audio": _audio_label(row["audio"]), "reason": reason})
        records = _encode_shard(kept, self.feature_extractor, self.audio_tokenizer, self.encode_batch_size)
        if records:  # a shard whose rows were all skipped is only recorded
            _write_shard(records, _shard_dir(self.output_dir, index))
        record = {"num_rows": len(chunk), "num_kept": len(records), "skipped": skipped}
        self.cache.put(_shard_name(index), record)
        return record


def _finish_summary(summary: PrepareSummary, shards: dict[str, dict], output_dir: Path, source_name: str | None):
    """Count the prepared folder's rows, write and log the summary; refuse a folder where no row was kept."""
    summary.num_rows = sum(shard["num_rows"] for shard in shards.values())
    summary.num_kept = sum(shard["num_kept"] for shard in shards.values())
    summary.skipped = [s for shard in shards.values() for s in shard["skipped"]]
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
    "is_prepared_dataset",
    "load_prepared_dataset",
    "prepare_dataset",
    "read_prepare_info",
]
