# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Long text, piece by piece: [`split_sentences`], [`CrossfadeJoiner`], [`crossfade_join`] and [`generate_speech`],
which speaks texts of any length with an Omni model (batched, or streamed through an [`OmniAudioStreamer`])."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from transformers.utils import logging

from ..modeling_snac import OmniAudioStreamer


logger = logging.get_logger(__name__)


_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """
    Split `text` at sentence ends (`.`, `!`, `?`, `;`, `:` followed by space, or newlines), then merge neighbours while
    they fit in `max_chars`. A sentence longer than `max_chars` is split at commas, then spaces.
    """
    pieces = []
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        while len(sentence) > max_chars:
            cut = max(sentence.rfind(", ", 0, max_chars), sentence.rfind(" ", 0, max_chars))
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[: cut + 1].strip())
            sentence = sentence[cut + 1 :].strip()
        if sentence:
            pieces.append(sentence)
    merged: list[str] = []
    for piece in pieces:
        if merged and len(merged[-1]) + 1 + len(piece) <= max_chars:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


class CrossfadeJoiner:
    r"""
    Joins consecutive waveforms (or streams of chunks) with a short linear crossfade, holding back only the last
    `crossfade` samples of the current segment. `push` returns what is final; `finish` returns the held tail.

    Args:
        sampling_rate (`int`): of the audio. crossfade_ms (`float`, *optional*, defaults to 30): overlap length.
    """

    def __init__(self, sampling_rate: int, crossfade_ms: float = 30.0):
        self.overlap = int(round(sampling_rate * crossfade_ms / 1000))
        self.tail = np.zeros(0, dtype=np.float32)
        self.fading_in: np.ndarray | None = None  # the previous segment's tail, waiting for the next segment's head

    def new_segment(self) -> None:
        """Mark the start of the next segment: its first samples are crossfaded with the held tail."""
        if self.tail.size:
            self.fading_in = self.tail
            self.tail = np.zeros(0, dtype=np.float32)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self.tail, np.asarray(chunk, dtype=np.float32)])
        out = []
        if self.fading_in is not None:
            if audio.size < self.fading_in.size:  # wait for enough of the new segment
                self.tail = audio
                return np.zeros(0, dtype=np.float32)
            n = self.fading_in.size
            ramp = np.linspace(0.0, 1.0, n + 2, dtype=np.float32)[1:-1]
            out.append(self.fading_in * (1 - ramp) + audio[:n] * ramp)
            audio, self.fading_in = audio[n:], None
        keep = min(self.overlap, audio.size)
        out.append(audio[: audio.size - keep])
        self.tail = audio[audio.size - keep :]
        return np.concatenate(out)

    def finish(self) -> np.ndarray:
        rest = [self.fading_in] if self.fading_in is not None else []
        rest.append(self.tail)
        self.fading_in, self.tail = None, np.zeros(0, dtype=np.float32)
        return np.concatenate(rest)


def crossfade_join(waveforms: Sequence[np.ndarray], sampling_rate: int, crossfade_ms: float = 30.0) -> np.ndarray:
    """Concatenate waveforms with `crossfade_ms` linear crossfades (each join shortens the total by the overlap)."""
    joiner = CrossfadeJoiner(sampling_rate, crossfade_ms)
    out = []
    for waveform in waveforms:
        joiner.new_segment()
        out.append(joiner.push(waveform))
    out.append(joiner.finish())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def generate_speech(
    model,
    processor,
    text: str | Sequence[str],
    speaker: str | None = None,
    max_chars: int = 200,
    batch_size: int = 8,
    crossfade_ms: float = 30.0,
    on_chunk: Callable[[np.ndarray], None] | None = None,
    **generate_kwargs,
) -> np.ndarray | list[np.ndarray]:
    r"""
    Speak texts of any length: each text is split into pieces at sentence ends ([`split_sentences`]), the pieces are
    generated, and each text's pieces are joined with crossfades ([`CrossfadeJoiner`]).

    - Without `on_chunk`, the pieces of all texts are generated as left-padded batches of `batch_size`.
    - With `on_chunk` (one text), the pieces are generated one after another through an [`OmniAudioStreamer`], and
      each part of the joined waveform is handed to `on_chunk` as soon as it is final (what `qwen-omni speak` does
      to write a file while speaking). The parts joined equal the returned waveform.

    A piece for which the model makes no audio is skipped with a warning.

    Args:
        model ([`OmniForCausalLM`]), processor ([`OmniProcessor`]).
        text (`str` or `list[str]`): the text(s) to speak. speaker (`str`, *optional*): speaker name prefix.
        max_chars (`int`, *optional*, defaults to 200): longest piece generated at once.
        batch_size (`int`, *optional*, defaults to 8): pieces per `generate` call (without `on_chunk`).
        crossfade_ms (`float`, *optional*, defaults to 30): overlap of consecutive pieces.
        on_chunk (`Callable[[np.ndarray], None]`, *optional*): stream the speech of one text to this callback.
        generate_kwargs: passed to `model.generate` (e.g. `max_duration`, `do_sample`); `voice_prompt_*` go to the
            processor (see [`OmniProcessor.__call__`]).

    Returns:
        One 1-D float32 waveform per text (a single one for a `str`).
    """
    texts = [text] if isinstance(text, str) else list(text)
    if on_chunk is not None and len(texts) != 1:
        raise ValueError(f"generate_speech streams one text at a time (on_chunk); got {len(texts)} texts.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
    processor_kwargs = _voice_prompt_kwargs(processor, generate_kwargs)
    pieces = [(index, piece) for index, t in enumerate(texts) for piece in split_sentences(t, max_chars)]
    if not pieces:
        raise ValueError(f"Nothing to speak: the text {text!r} is empty.")

    def prompt(batch: list[str]):
        return processor(text=batch, speaker=speaker, return_tensors="pt", **processor_kwargs).to(model.device)

    if on_chunk is not None:
        return _stream_pieces(model, processor, pieces, prompt, crossfade_ms, on_chunk, generate_kwargs)
    waveforms_by_text = _generate_pieces(model, processor, pieces, len(texts), prompt, batch_size, generate_kwargs)
    joined = [crossfade_join(w, processor.sampling_rate, crossfade_ms) for w in waveforms_by_text]
    return joined[0] if isinstance(text, str) else joined


def _voice_prompt_kwargs(processor, generate_kwargs: dict) -> dict:
    """The `voice_prompt_*` entries taken out of `generate_kwargs` for the processor; a voice prompt given as audio is
    encoded here, once, not again for every piece."""
    processor_kwargs = {k: generate_kwargs.pop(k) for k in list(generate_kwargs) if k.startswith("voice_prompt")}
    if processor_kwargs.get("voice_prompt_audio") is not None and processor_kwargs.get("voice_prompt_ids") is None:
        processor_kwargs["voice_prompt_ids"] = processor.encode_voice_prompt(
            processor_kwargs.pop("voice_prompt_audio"), processor_kwargs.pop("voice_prompt_sampling_rate", None)
        )
    return processor_kwargs


def _warn_no_audio(index: int, piece: str) -> None:
    logger.warning(f"The model produced no audio for the piece {piece!r} of text {index}; it is skipped.")


def _stream_pieces(
    model,
    processor,
    pieces: list[tuple[int, str]],
    prompt: Callable,
    crossfade_ms: float,
    on_chunk: Callable[[np.ndarray], None],
    generate_kwargs: dict,
) -> np.ndarray:
    """One text's pieces generated one after another through an [`OmniAudioStreamer`], each final part of the joined
    waveform handed to `on_chunk`; the parts joined, returned."""
    joiner = CrossfadeJoiner(processor.sampling_rate, crossfade_ms)
    parts = []

    def emit(audio: np.ndarray) -> None:
        if audio.size:
            parts.append(audio)
            on_chunk(audio)

    for number, (index, piece) in enumerate(pieces, start=1):
        logger.info(f"[{number}/{len(pieces)}] {piece}")
        joiner.new_segment()
        streamer = OmniAudioStreamer(processor, on_chunk=lambda chunk: emit(joiner.push(chunk)))
        model.generate(**prompt([piece]), streamer=streamer, **generate_kwargs)
        if not streamer.samples_emitted:
            _warn_no_audio(index, piece)
    emit(joiner.finish())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _generate_pieces(
    model,
    processor,
    pieces: list[tuple[int, str]],
    num_texts: int,
    prompt: Callable,
    batch_size: int,
    generate_kwargs: dict,
) -> list[list[np.ndarray]]:
    """The pieces generated as left-padded batches of `batch_size`: each text's waveforms, in order."""
    waveforms_by_text: list[list[np.ndarray]] = [[] for _ in range(num_texts)]
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start : start + batch_size]
        inputs = prompt([piece for _, piece in batch])
        sequences = model.generate(**inputs, **generate_kwargs)
        for (index, piece), sequence in zip(batch, sequences):
            waveform = processor.decode_audio(sequence[inputs["input_ids"].shape[1] :])
            if waveform is None or not waveform.size:
                _warn_no_audio(index, piece)
                continue
            waveforms_by_text[index].append(waveform)
    return waveforms_by_text


__all__ = ["CrossfadeJoiner", "crossfade_join", "generate_speech", "split_sentences"]
