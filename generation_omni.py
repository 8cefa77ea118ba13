# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Generation with the Omni model: structurally valid speech by construction, a duration limit, a fast audio head, an
audio streamer, and long-text helpers (sentence splitting, crossfaded joins).

- [`OmniConstrainedLogitsProcessor`]: inside an audio span every id lies in the block of its frame position and
  audio-end is allowed only at a frame boundary; inside a text span only text ids are allowed.
- [`OmniMaxDurationCriteria`]: stops a row whose audio span reaches a duration in seconds, logging the cut.
- [`omni_sample`]: the decoding loop `OmniForCausalLM.generate` uses by default (a `custom_generate` callable). It
  equals transformers' sampling / greedy loop, except that while every unfinished row is inside an audio span it
  scores only the one allowed block of `codebook_size` ids (plus audio-end) instead of the whole vocabulary.
- [`OmniAudioStreamer`]: a `BaseStreamer` that yields waveform chunks while audio tokens arrive.
- [`split_sentences`], [`CrossfadeJoiner`], [`crossfade_join`], [`generate_speech`]: long text, piece by piece.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from queue import Queue

import numpy as np
import torch
from transformers.generation import (
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GENERATION_MODES_MAPPING, GenerateDecoderOnlyOutput
from transformers.utils import logging

from .configuration_omni import OmniConfig


logger = logging.get_logger(__name__)

# Processors that act on any subset of the vocabulary the same way (they only see scores and the ids they gather),
# so the fast path may run them on the one allowed audio block.
_BLOCK_SAFE_PROCESSORS = (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
)


# ---------------------------------------------------------------------------------------------- span state
class OmniSpanState:
    """
    Where each row of a batch stands in the Omni format, computed from its ids with tensor ops only.

    Attributes:
        in_audio (`torch.BoolTensor` `(batch,)`): the last `<|audio_start|>` is not closed by an `<|audio_end|>`.
        audio_length (`torch.LongTensor` `(batch,)`): audio ids generated since that `<|audio_start|>`.
        in_text (`torch.BoolTensor` `(batch,)`): the last `<|text_start|>` is not closed (and not in audio).
    """

    def __init__(self, config: OmniConfig, input_ids: torch.LongTensor):
        layout = config.token_layout
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)

        def last(token_id: int | None) -> torch.Tensor:
            if token_id is None:
                return torch.full(input_ids.shape[:1], -1, device=input_ids.device, dtype=torch.long)
            return torch.where(input_ids == token_id, positions, -1).amax(dim=1)

        audio_start, audio_end = last(config.audio_start_token_id), last(config.audio_end_token_id)
        text_start, text_end = last(config.text_start_token_id), last(config.text_end_token_id)
        self.in_audio = (audio_start >= 0) & (audio_start > audio_end)
        after_start = positions[None, :] > audio_start[:, None]
        self.audio_length = (layout.is_audio(input_ids) & after_start).sum(dim=1) * self.in_audio
        self.in_text = (text_start >= 0) & (text_start > text_end) & ~self.in_audio
        self.frame_position = self.audio_length % layout.tokens_per_frame
        self.at_frame_boundary = self.in_audio & (self.frame_position == 0) & (self.audio_length > 0)


class OmniConstrainedLogitsProcessor(LogitsProcessor):
    r"""
    Keeps generation structurally valid (vectorised over batch and vocabulary; rows in different states are fine).

    - Inside an audio span (after `<|audio_start|>`, before `<|audio_end|>`): the next id must lie in the id block of
      its position in the frame (see [`SNACTokenLayout`]); `<|audio_end|>` is allowed only at a frame boundary after
      at least one whole frame.
    - Inside a text span (after `<|text_start|>`, e.g. a transcript): only text ids, `<|text_end|>` and EOS; no audio
      ids and no structural special tokens.
    - Elsewhere: unconstrained.

    Args:
        config ([`OmniConfig`]): gives the token layout and the special-token ids.
    """

    def __init__(self, config: OmniConfig):
        self.config = config
        self.layout = config.token_layout
        structural = [
            config.tts_token_id, config.asr_token_id, config.text_start_token_id,
            config.audio_start_token_id, config.audio_end_token_id, config.pad_token_id,
        ]
        allowed_in_text = {config.text_end_token_id, config.eos_token_id} if isinstance(config.eos_token_id, int) else {config.text_end_token_id}
        self.banned_in_text = sorted({i for i in structural if i is not None} - allowed_in_text)

    def allowed_mask(self, input_ids: torch.LongTensor, vocab_size: int) -> torch.BoolTensor:
        """`(batch, vocab_size)` mask of the ids each row may generate next."""
        state = OmniSpanState(self.config, input_ids)
        vocab = torch.arange(vocab_size, device=input_ids.device)
        block_lo = self.layout.audio_token_offset + state.frame_position * self.layout.codebook_size
        in_block = (vocab[None, :] >= block_lo[:, None]) & (vocab[None, :] < (block_lo + self.layout.codebook_size)[:, None])
        audio_allowed = in_block | ((vocab == self.config.audio_end_token_id)[None, :] & state.at_frame_boundary[:, None])
        text_allowed = vocab < self.layout.audio_token_offset
        if self.banned_in_text:
            text_allowed &= ~torch.isin(vocab, torch.tensor(self.banned_in_text, device=vocab.device))
        mask = torch.ones(input_ids.shape[0], vocab_size, dtype=torch.bool, device=input_ids.device)
        mask = torch.where(state.in_audio[:, None], audio_allowed, mask)
        return torch.where(state.in_text[:, None], text_allowed[None, :], mask)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(~self.allowed_mask(input_ids, scores.shape[-1]), -float("inf"))


class OmniMaxDurationCriteria(StoppingCriteria):
    r"""
    Stops a row once its current audio span holds `max_duration` seconds of whole frames. The cut is logged (with the
    rows it hit); the sequence keeps the audio made so far, which `OmniProcessor.decode` turns into a waveform.

    Args:
        max_duration (`float`): seconds of audio per span, e.g. `20.0`.
        config ([`OmniConfig`]): gives the codec's sampling rate and frame length.
    """

    def __init__(self, max_duration: float, config: OmniConfig):
        if not max_duration or max_duration <= 0:
            raise ValueError(f"max_duration={max_duration!r} must be a positive number of seconds, e.g. 20.0.")
        self.max_duration = float(max_duration)
        self.config = config
        self.max_frames = max(1, math.floor(self.max_duration * config.codec_sampling_rate / config.samples_per_frame))
        self.max_audio_tokens = self.max_frames * config.token_layout.tokens_per_frame
        self.cut_rows: set[int] = set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs) -> torch.BoolTensor:
        state = OmniSpanState(self.config, input_ids)
        done = state.in_audio & (state.audio_length >= self.max_audio_tokens)
        new_rows = set(done.nonzero().flatten().tolist()) - self.cut_rows
        if new_rows:
            self.cut_rows |= new_rows
            logger.warning(
                f"Speech of batch row(s) {sorted(new_rows)} reached max_duration={self.max_duration}s "
                f"({self.max_frames} frames) and was cut there; the audio made so far is returned. Raise "
                "`max_duration` for longer speech."
            )
        return done


# ---------------------------------------------------------------------------------------------- fast decoding
def audio_block_scores(
    model, hidden: torch.Tensor, input_ids: torch.LongTensor, state: OmniSpanState, logits_processor: LogitsProcessorList
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Processed next-token scores over the allowed audio candidates only: the `codebook_size` ids of each row's frame
    position, then `<|audio_end|>` (-inf unless at a frame boundary), then a dummy column (-inf) that absorbs ids the
    penalty processors gather from outside the block.

    Args:
        hidden (`torch.Tensor` `(batch, hidden_size)`): the last hidden state of each row.
        input_ids: the sequences so far; state: their [`OmniSpanState`] (every row in an audio span).
        logits_processor: the prepared processors; only [`_BLOCK_SAFE_PROCESSORS`] and the Omni constraint (which the
            block enforces by itself) may be in it.

    Returns:
        `(scores, candidate_ids)`, both `(batch, codebook_size + 2)`: float32 scores and the vocabulary id of each
        column (the dummy column maps to audio-end; its score is -inf).
    """
    config, layout = model.config, model.config.token_layout
    size = layout.codebook_size
    weight = model.lm_head.weight
    blocks = weight[layout.audio_token_offset : layout.vocab_end].view(layout.tokens_per_frame, size, -1)
    position = state.frame_position
    hidden = hidden.to(weight.dtype)
    if hidden.shape[0] == 1 or bool((position == position[0]).all()):
        code_logits = hidden @ blocks[int(position[0])].T
    else:
        code_logits = torch.bmm(blocks[position], hidden[:, :, None])[:, :, 0]
    end_logits = hidden @ weight[config.audio_end_token_id][:, None]
    end_logits = end_logits.masked_fill(~state.at_frame_boundary[:, None], -float("inf"))
    dummy = torch.full_like(end_logits, -float("inf"))
    scores = torch.cat([code_logits, end_logits, dummy], dim=-1).float()

    block_start = layout.audio_token_offset + position * size
    local_ids = input_ids - block_start[:, None]
    local_ids = torch.where((local_ids >= 0) & (local_ids < size), local_ids, size + 1)
    local_ids = local_ids.masked_fill(input_ids == config.audio_end_token_id, size)
    for processor in logits_processor:
        if not isinstance(processor, OmniConstrainedLogitsProcessor):
            scores = processor(local_ids, scores)

    columns = torch.arange(size + 2, device=hidden.device)
    candidate_ids = block_start[:, None] + columns[None, :]
    candidate_ids = torch.where(columns[None, :] >= size, config.audio_end_token_id, candidate_ids)
    return scores, candidate_ids


def _supports_block_scoring(logits_processor: LogitsProcessorList) -> bool:
    return all(isinstance(p, (*_BLOCK_SAFE_PROCESSORS, OmniConstrainedLogitsProcessor)) for p in logits_processor)


def omni_sample(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria,
    generation_config,
    synced_gpus: bool = False,
    streamer: BaseStreamer | None = None,
    fast_audio_head: bool = True,
    omni_streamer: BaseStreamer | None = None,
    **model_kwargs,
):
    r"""
    Sampling / greedy decoding for Omni models (passed by `OmniForCausalLM.generate` as `custom_generate`).

    It is transformers' `_sample` loop with one change: while every unfinished row is inside an audio span (and the
    processors are all block-safe), only the allowed block of the head is computed and the processors and sampling
    run on `codebook_size + 2` candidates instead of the whole vocabulary. A 4096-row head is ~5% of a 79k-row one,
    and the warpers (top-p sorts!) shrink alike. Greedy decoding gives the same tokens as the full-head constrained
    path; sampling draws from the same distribution. Other modes (beam search, ...) and requests for per-step
    scores, logits, attentions or hidden states run transformers' own loops.

    Args:
        fast_audio_head (`bool`, *optional*, defaults to `True`): score only the allowed block inside audio spans.
        omni_streamer (`BaseStreamer`, *optional*): the streamer; `generate` does not hand `streamer` to a
            `custom_generate` callable, so `OmniForCausalLM.generate` passes it under this name, and the prompt is
            put here.
    """
    streamer = streamer if streamer is not None else omni_streamer
    if omni_streamer is not None:
        omni_streamer.put(input_ids.cpu())
    generation_mode = generation_config.get_generation_mode()
    wants_outputs = generation_config.return_dict_in_generate and any(
        getattr(generation_config, name) for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
    )
    if (
        generation_mode not in (GenerationMode.SAMPLE, GenerationMode.GREEDY_SEARCH)
        or wants_outputs
        or synced_gpus
        or not fast_audio_head
        or not _supports_block_scoring(logits_processor)
    ):
        method_name = GENERATION_MODES_MAPPING[generation_mode]
        extra = {"streamer": streamer} if streamer is not None else {}
        return getattr(GenerationMixin, method_name)(
            model, input_ids, logits_processor=logits_processor, stopping_criteria=stopping_criteria,
            generation_config=generation_config, synced_gpus=synced_gpus, **extra, **model_kwargs,
        )

    config = model.config
    pad_token_id = generation_config._pad_token_tensor
    has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    do_sample = generation_config.do_sample
    batch_size = input_ids.shape[0]
    unfinished = torch.ones(batch_size, dtype=torch.long, device=input_ids.device)
    if pad_token_id is not None:
        pad_token_id = pad_token_id.to(input_ids.device)

    outputs = model._prefill(input_ids, generation_config, model_kwargs)
    next_logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
    with model._optimize_model_for_decode():
        while True:
            model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs)
            state = OmniSpanState(config, input_ids)
            if next_logits is None and bool((state.in_audio | (unfinished == 0)).all()):
                scores, candidates = audio_block_scores(model, hidden, input_ids, state, logits_processor)
            else:
                if next_logits is None:
                    next_logits = model.lm_head(hidden).float()
                scores, candidates = logits_processor(input_ids, next_logits), None
            if do_sample:
                choice = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
            else:
                choice = scores.argmax(dim=-1, keepdim=True)
            next_tokens = (candidates.gather(1, choice) if candidates is not None else choice)[:, 0]
            if has_eos_stopping_criteria:
                next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
            input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            unfinished = unfinished & ~stopping_criteria(input_ids, scores)
            if unfinished.max() == 0:
                break
            model_inputs = model.prepare_inputs_for_generation(
                input_ids, next_sequence_length=1 if model_kwargs["use_cache"] else None, **model_kwargs
            )
            model_inputs.pop("logits_to_keep", None)
            outputs = model.model(**model_inputs)
            hidden, next_logits = outputs.last_hidden_state[:, -1], None
    if streamer is not None:
        streamer.end()
    if generation_config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=input_ids, past_key_values=model_kwargs.get("past_key_values"))
    return input_ids


# ---------------------------------------------------------------------------------------------- streaming
class OmniAudioStreamer(BaseStreamer):
    r"""
    Streams speech while `generate` runs: pass it as `streamer=` and iterate over it (from another thread), or give
    an `on_chunk` callback. Each chunk is a 1-D float32 numpy waveform at the codec's sampling rate.

    Every frame is decoded once its right context has arrived, inside a window of `left_context_frames` before and
    `right_context_frames` after it, with the decoder noise locked to the absolute frame position
    (`SNACFeatureExtractor.decode_codes(frame_offset=...)`), so the joins are seamless and the concatenated chunks
    match the full decode of the same tokens and have exactly its length (the first and last frames included). The
    stream ends at `<|audio_end|>` or at the end of generation; a trailing partial frame is dropped with a log, as
    `OmniProcessor.decode` does. Batch size 1 only (as transformers' streamers).

    Args:
        processor ([`OmniProcessor`] or [`SNACFeatureExtractor`]): gives the codec and the token layout.
        left_context_frames (`int`, *optional*, defaults to 4): frames of codec context before each emitted frame.
        right_context_frames (`int`, *optional*, defaults to 4): frames of look-ahead; the first chunk is ready
            this many frames after the first frame. (For the decoder's receptive field 4 frames make the stream equal
            the full decode to float precision; codecs with local attention get at least two attention windows.)
        chunk_frames (`int`, *optional*, defaults to 1): frames per emitted chunk.
        on_chunk (`Callable[[np.ndarray], None]`, *optional*): called with each chunk (e.g. to write a file).
        timeout (`float`, *optional*): seconds the iterator waits for the next chunk before raising `queue.Empty`.
    """

    def __init__(
        self,
        processor,
        left_context_frames: int = 4,
        right_context_frames: int = 4,
        chunk_frames: int = 1,
        on_chunk: Callable[[np.ndarray], None] | None = None,
        timeout: float | None = None,
    ):
        self.feature_extractor = getattr(processor, "feature_extractor", processor)
        self.layout = self.feature_extractor.token_layout
        window = self.feature_extractor.frames_per_window
        # contexts are whole attention windows, so each decoded window is aligned as in the full decode
        self.left_context = math.ceil(left_context_frames / window) * window
        self.right_context = max(right_context_frames, 2 * window if window > 1 else 0)
        self.window = window
        self.chunk_frames = max(1, chunk_frames)
        self.on_chunk = on_chunk
        self.timeout = timeout
        self.queue: Queue = Queue()
        self.audio_end_token_id = getattr(processor, "audio_end_token_id", None)
        self._reset()
        self._seen_prompt = False

    def _reset(self) -> None:
        self.codes_ids: list[int] = []  # audio ids of whole frames so far
        self.pending: list[int] = []  # ids of the frame being built
        self.emitted_frames = 0
        self.samples_emitted = 0

    @property
    def num_frames(self) -> int:
        return len(self.codes_ids) // self.layout.tokens_per_frame

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError(f"OmniAudioStreamer streams one sequence; got a batch of {value.shape[0]}. Use batch size 1.")
        if not self._seen_prompt:  # the first call holds the prompt (possibly a voice prompt's audio): not streamed
            self._seen_prompt = True
            return
        for token in value.flatten().tolist():
            if self.layout.is_audio(torch.tensor(token)):
                self.pending.append(token)
                if len(self.pending) == self.layout.tokens_per_frame:
                    self.codes_ids += self.pending
                    self.pending = []
                    self._emit(final=False)
            elif self.codes_ids or self.pending:
                self._finish_span()

    def _finish_span(self) -> None:
        if self.pending:
            logger.warning(f"Dropped {len(self.pending)} audio tokens of an incomplete frame at the end of the stream.")
            self.pending = []
        self._emit(final=True)
        self._reset()

    def _emit(self, final: bool) -> None:
        total = self.num_frames
        ready = total if final else total - self.right_context
        while ready - self.emitted_frames >= (1 if final else self.chunk_frames):
            start = self.emitted_frames
            stop = min(ready, start + self.chunk_frames) if not final else ready
            window_start = max(0, (start - self.left_context) // self.window * self.window)
            window_stop = total if final else min(total, stop + self.right_context)
            frame_ids = torch.tensor(self.codes_ids[window_start * self.layout.tokens_per_frame : window_stop * self.layout.tokens_per_frame])
            audio = self.feature_extractor.decode_codes(self.layout.ids_to_codes(frame_ids), frame_offset=window_start)
            spf = self.feature_extractor.samples_per_frame
            chunk = audio[(start - window_start) * spf : (stop - window_start) * spf].numpy()
            self.emitted_frames = stop
            self.samples_emitted += chunk.shape[0]
            self.on_audio_chunk(chunk)

    def on_audio_chunk(self, chunk: np.ndarray) -> None:
        """Hands a chunk to `on_chunk` and to the iterator."""
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        self.queue.put(chunk)

    def end(self) -> None:
        if self.codes_ids or self.pending:
            self._finish_span()
        self._seen_prompt = False
        self.queue.put(None)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            chunk = self.queue.get(timeout=self.timeout)
            if chunk is None:
                return
            yield chunk


# ---------------------------------------------------------------------------------------------- long text
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
    **generate_kwargs,
) -> np.ndarray | list[np.ndarray]:
    r"""
    Speak texts of any length: each text is split into sentences ([`split_sentences`]), the pieces of all texts are
    generated as left-padded batches of `batch_size`, and each text's pieces are joined with crossfades.

    Args:
        model ([`OmniForCausalLM`]), processor ([`OmniProcessor`]).
        text (`str` or `list[str]`): the text(s) to speak. speaker (`str`, *optional*): speaker name prefix.
        generate_kwargs: passed to `model.generate` (e.g. `max_duration`, `do_sample`, `voice_prompt_*` go to the
            processor: see [`OmniProcessor.__call__`]).

    Returns:
        One 1-D float32 waveform per text (a single one for a `str`).
    """
    texts = [text] if isinstance(text, str) else list(text)
    processor_kwargs = {k: generate_kwargs.pop(k) for k in list(generate_kwargs) if k.startswith("voice_prompt")}
    pieces = [(index, piece) for index, t in enumerate(texts) for piece in split_sentences(t, max_chars)]
    if not pieces:
        raise ValueError(f"Nothing to speak: the text {text!r} is empty.")
    waveforms_by_text: list[list[np.ndarray]] = [[] for _ in texts]
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start : start + batch_size]
        inputs = processor(text=[p for _, p in batch], speaker=speaker, return_tensors="pt", **processor_kwargs).to(model.device)
        sequences = model.generate(**inputs, **generate_kwargs)
        for (index, _), sequence in zip(batch, sequences):
            waveform = processor.decode_audio(sequence[inputs["input_ids"].shape[1] :])
            if waveform is None:
                logger.warning(f"The model produced no audio for a piece of text {index}; it is skipped.")
                continue
            waveforms_by_text[index].append(waveform)
    joined = [crossfade_join(w, processor.sampling_rate, crossfade_ms) for w in waveforms_by_text]
    return joined[0] if isinstance(text, str) else joined


__all__ = [
    "CrossfadeJoiner",
    "OmniAudioStreamer",
    "OmniConstrainedLogitsProcessor",
    "OmniMaxDurationCriteria",
    "OmniSpanState",
    "audio_block_scores",
    "crossfade_join",
    "generate_speech",
    "omni_sample",
    "split_sentences",
]
