# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Generation with the Omni model: structurally valid speech by construction, a duration limit, a fast audio head, an
audio streamer, and long text.

- [`OmniGenerationMixin`]: `generate` for Omni models. It overrides `GenerationMixin`'s hooks (as transformers' Dia
  and CSM models do): `_get_logits_processor` adds the Omni constraint, `_get_stopping_criteria` the duration limit,
  `_sample` scores only the one allowed block of `codebook_size` ids (plus audio-end) while every unfinished row is
  inside an audio span, and `_prepare_generated_length` checks the length against the model's positions.
- [`OmniSpanState`]: where each row stands in the Omni format, built once from the prompt and advanced by one token
  per step.
- [`OmniConstrainedLogitsProcessor`]: inside an audio span every id lies in the block of its frame position and
  audio-end is allowed only at a frame boundary; inside a text span only text ids are allowed.
- [`OmniMaxDurationCriteria`]: stops a row whose audio span reaches a duration in seconds, logging the cut.
- [`OmniAudioStreamer`]: a `BaseStreamer` that yields waveform chunks while audio tokens arrive, decoding each frame
  once (the codec's layers keep their state between chunks).
- [`split_sentences`], [`CrossfadeJoiner`], [`crossfade_join`], [`generate_speech`]: long text, piece by piece.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from queue import Queue

import numpy as np
import torch
import torch.nn.functional as F
from transformers.generation import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    GenerationMixin,
    LogitNormalization,
    LogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import logging

from .configuration_omni import OmniConfig


logger = logging.get_logger(__name__)

# Processors that treat any subset of the vocabulary alike (they see only scores, and the ids they gather): the fast
# head runs them on the allowed block, with ids renumbered inside it.
_BLOCK_LOCAL_PROCESSORS = (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    TypicalLogitsWarper,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
)
# Processors whose output is `scores + bias(input_ids)` (the bias may be -inf: a ban): the fast head reads the bias
# of its candidate ids from one call on zeros.
_ADDITIVE_PROCESSORS = (
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    SuppressTokensLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SequenceBiasLogitsProcessor,
    NoBadWordsLogitsProcessor,
)
# `generate` arguments of the Omni models (stored on the generation config, so a checkpoint may set defaults)
_OMNI_GENERATE_ARGUMENTS = {"max_duration": None, "constrained": True, "fast_audio_head": True}


# ---------------------------------------------------------------------------------------------- span state
class OmniSpanState:
    """
    Where each row of a batch stands in the Omni format. Built once from the ids (tensor ops only), then kept up to
    date by [`~OmniSpanState.advance`], one generated token per step.

    Attributes:
        in_audio (`torch.BoolTensor` `(batch,)`): the last `<|audio_start|>` is not closed by an `<|audio_end|>`.
        audio_length (`torch.LongTensor` `(batch,)`): audio ids generated since that `<|audio_start|>` (0 outside audio).
        in_text (`torch.BoolTensor` `(batch,)`): the last `<|text_start|>` is not closed (and not in audio).
        length (`int`): length of the sequences this state describes.
    """

    def __init__(self, config: OmniConfig, input_ids: torch.LongTensor):
        self.config = config
        self.layout = config.token_layout
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)

        def last(token_id: int | None) -> torch.Tensor:
            if token_id is None:
                return torch.full(input_ids.shape[:1], -1, device=input_ids.device, dtype=torch.long)
            return torch.where(input_ids == token_id, positions, -1).amax(dim=1)

        audio_start, audio_end = last(config.audio_start_token_id), last(config.audio_end_token_id)
        text_start, text_end = last(config.text_start_token_id), last(config.text_end_token_id)
        self.in_audio = (audio_start >= 0) & (audio_start > audio_end)
        self._text_open = (text_start >= 0) & (text_start > text_end)
        after_start = positions[None, :] > audio_start[:, None]
        self._audio_since_start = (self.layout.is_audio(input_ids) & after_start).sum(dim=1)
        self.length = input_ids.shape[1]

    @property
    def audio_length(self) -> torch.LongTensor:
        return self._audio_since_start * self.in_audio

    @property
    def in_text(self) -> torch.BoolTensor:
        return self._text_open & ~self.in_audio

    @property
    def frame_position(self) -> torch.LongTensor:
        return self.audio_length % self.layout.tokens_per_frame

    @property
    def at_frame_boundary(self) -> torch.BoolTensor:
        audio_length = self.audio_length
        return self.in_audio & (audio_length % self.layout.tokens_per_frame == 0) & (audio_length > 0)

    def advance(self, next_tokens: torch.LongTensor) -> None:
        """Update the state for one more token per row (`(batch,)`), as a full rebuild from the longer ids would."""
        config = self.config
        audio_started = next_tokens == config.audio_start_token_id
        self._audio_since_start = torch.where(
            audio_started, 0, self._audio_since_start + self.layout.is_audio(next_tokens).long()
        )
        self.in_audio = (self.in_audio | audio_started) & (next_tokens != config.audio_end_token_id)
        self._text_open = (self._text_open | (next_tokens == config.text_start_token_id)) & (
            next_tokens != config.text_end_token_id
        )
        self.length += 1


class _SpanStateUser:
    """Holds the [`OmniSpanState`] that `OmniGenerationMixin._sample` keeps for its batch; any other caller (beam
    search, a standalone call) gets a state rebuilt from its ids."""

    config: OmniConfig
    span_state: OmniSpanState | None = None

    def state_for(self, input_ids: torch.LongTensor) -> OmniSpanState:
        state = self.span_state
        if state is not None and state.length == input_ids.shape[1] and state.in_audio.shape[0] == input_ids.shape[0]:
            return state
        return OmniSpanState(self.config, input_ids)


class OmniConstrainedLogitsProcessor(_SpanStateUser, LogitsProcessor):
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
        allowed_in_text = {config.text_end_token_id}
        if isinstance(config.eos_token_id, int):
            allowed_in_text.add(config.eos_token_id)
        self.banned_in_text = sorted({i for i in structural if i is not None} - allowed_in_text)

    def allowed_mask(self, input_ids: torch.LongTensor, vocab_size: int) -> torch.BoolTensor:
        """`(batch, vocab_size)` mask of the ids each row may generate next."""
        state = self.state_for(input_ids)
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


class OmniMaxDurationCriteria(_SpanStateUser, StoppingCriteria):
    r"""
    Stops a row once its current audio span holds `max_duration` seconds of whole frames. The cut is logged (with the
    rows it hit); the sequence keeps the audio made so far, which `OmniProcessor.decode` turns into a waveform.

    Args:
        max_duration (`float`): seconds of audio per span, e.g. `20.0`.
        config ([`OmniConfig`]): gives the codec's sampling rate and frame length.
    """

    def __init__(self, max_duration: float, config: OmniConfig):
        if isinstance(max_duration, bool) or not isinstance(max_duration, (int, float)) or not 0 < max_duration < math.inf:
            raise ValueError(f"max_duration={max_duration!r} must be a positive, finite number of seconds, e.g. 20.0.")
        self.max_duration = float(max_duration)
        self.config = config
        self.max_frames = max(1, math.floor(self.max_duration * config.codec_sampling_rate / config.samples_per_frame))
        self.max_audio_tokens = self.max_frames * config.token_layout.tokens_per_frame
        self.cut_rows: set[int] = set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs) -> torch.BoolTensor:
        state = self.state_for(input_ids)
        done = state.in_audio & (state.audio_length >= self.max_audio_tokens)
        if done.any():
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
def _block_scoring_supported(logits_processor: LogitsProcessorList) -> bool:
    """Whether the fast head can apply every processor exactly on the allowed block."""
    known = (*_BLOCK_LOCAL_PROCESSORS, *_ADDITIVE_PROCESSORS, OmniConstrainedLogitsProcessor)
    return all(isinstance(processor, known) for processor in logits_processor)


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
        logits_processor: the prepared processors, all of them block-local or additive (see
            `_block_scoring_supported`); the Omni constraint is what the block is, so it is skipped.

    Returns:
        `(scores, candidate_ids)`, both `(batch, codebook_size + 2)`: float32 scores and the vocabulary id of each
        column (the dummy column maps to audio-end; its score is -inf).
    """
    config, layout = model.config, state.layout
    size = layout.codebook_size
    weight = model.lm_head.weight
    blocks = weight[layout.audio_token_offset : layout.vocab_end].view(layout.tokens_per_frame, size, -1)
    position = state.frame_position
    hidden = hidden.to(weight.dtype)
    if hidden.shape[0] == 1:
        code_logits = hidden @ blocks[int(position[0])].T
    else:
        code_logits = torch.bmm(blocks[position], hidden[:, :, None])[:, :, 0]
    end_logits = hidden @ weight[config.audio_end_token_id][:, None]
    end_logits = end_logits.masked_fill(~state.at_frame_boundary[:, None], -float("inf"))
    dummy = torch.full_like(end_logits, -float("inf"))
    scores = torch.cat([code_logits, end_logits, dummy], dim=-1).float()

    block_start = layout.audio_token_offset + position * size
    columns = torch.arange(size + 2, device=hidden.device)
    candidate_ids = torch.where(
        columns[None, :] >= size, config.audio_end_token_id, block_start[:, None] + columns[None, :]
    )
    local_ids = None
    for processor in logits_processor:
        if isinstance(processor, OmniConstrainedLogitsProcessor):
            continue
        if isinstance(processor, _ADDITIVE_PROCESSORS):
            bias = processor(input_ids, torch.zeros(input_ids.shape[0], weight.shape[0], device=scores.device))
            scores = scores + bias.gather(1, candidate_ids)
            continue
        if local_ids is None:  # the ids as the block sees them: its own codes, audio-end, anything else (dummy)
            local_ids = input_ids - block_start[:, None]
            local_ids = torch.where((local_ids >= 0) & (local_ids < size), local_ids, size + 1)
            local_ids = local_ids.masked_fill(input_ids == config.audio_end_token_id, size)
        scores = processor(local_ids, scores)
    return scores, candidate_ids


class OmniGenerationMixin(GenerationMixin):
    r"""
    `generate` for Omni models: transformers' own, with speech-aware hooks. Everything `GenerationMixin.generate`
    accepts works (sampling settings, `min_new_tokens`, `streamer=`, `return_dict_in_generate`, beam search, ...);
    the defaults live in the checkpoint's `generation_config.json`. Three more arguments (also readable from the
    generation config):

    - `max_duration` (`float`, *optional*): stop each row's speech after this many seconds (whole frames). A cut row
      keeps the audio made so far and the cut is logged (see [`OmniMaxDurationCriteria`]).
    - `constrained` (`bool`, defaults to `True`): add [`OmniConstrainedLogitsProcessor`]: inside an audio span every
      id lies in its frame position's block and audio-end comes only at a frame boundary; inside a transcript only
      text ids.
    - `fast_audio_head` (`bool`, defaults to `True`): while every unfinished row is inside an audio span, compute
      only the allowed block of the head (`codebook_size` + 1 of the vocabulary's rows) and run the processors on it
      (same greedy tokens, same sampling distribution, several times less work per audio token). It serves
      transformers' sampling and greedy decoding with the standard processors (penalties, `min_new_tokens`,
      `no_repeat_ngram_size`, `suppress_tokens`, bad words, sequence bias, all warpers); any other processor, and
      requests for per-step scores, logits, attentions or hidden states, use the full head.
    """

    def _prepare_generation_config(self, generation_config, **kwargs):
        omni_arguments = {name: kwargs.pop(name) for name in _OMNI_GENERATE_ARGUMENTS if name in kwargs}
        length_given = any(kwargs.get(name) is not None for name in ("max_new_tokens", "max_length"))
        generation_config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        for name, default in _OMNI_GENERATE_ARGUMENTS.items():
            setattr(generation_config, name, omni_arguments.get(name, getattr(generation_config, name, default)))
        generation_config._omni_length_given = length_given
        return generation_config, model_kwargs

    def _prepare_generated_length(self, generation_config, *args, input_ids_length: int, **kwargs):
        """transformers' length preparation, then the check against the model's positions: a prompt plus the
        requested `max_new_tokens` that do not fit raise; a checkpoint default that does not fit is lowered, with a
        warning."""
        generation_config = super()._prepare_generated_length(
            generation_config, *args, input_ids_length=input_ids_length, **kwargs
        )
        positions = getattr(self.config, "max_position_embeddings", None)
        if positions is None or generation_config.max_length <= positions:
            return generation_config
        new_tokens = generation_config.max_length - input_ids_length
        if input_ids_length >= positions:
            raise ValueError(
                f"The prompt holds {input_ids_length} tokens, but the model has {positions} positions "
                "(max_position_embeddings): nothing can be generated. Shorten the prompt (speak long text sentence "
                "by sentence, as `generate_speech` in generation_omni.py does) or use a shorter voice prompt."
            )
        if getattr(generation_config, "_omni_length_given", False):
            raise ValueError(
                f"The prompt ({input_ids_length} tokens) + max_new_tokens={new_tokens} = {generation_config.max_length} "
                f"tokens exceeds the model's {positions} positions (max_position_embeddings). Set max_new_tokens <= "
                f"{positions - input_ids_length} (or a max_duration in seconds), or shorten the prompt (speak long text "
                "sentence by sentence, as `generate_speech` in generation_omni.py does)."
            )
        logger.warning(
            f"The default max_new_tokens={new_tokens} + the prompt's {input_ids_length} tokens exceed the model's "
            f"{positions} positions (max_position_embeddings): generating at most {positions - input_ids_length} new "
            "tokens. Pass max_new_tokens (or max_duration) to choose."
        )
        generation_config.max_length = positions
        if generation_config.max_new_tokens is not None:
            generation_config.max_new_tokens = positions - input_ids_length
        return generation_config

    def _get_logits_processor(self, generation_config, *args, logits_processor=None, **kwargs) -> LogitsProcessorList:
        logits_processor = LogitsProcessorList(logits_processor or [])
        if generation_config.constrained and not any(
            isinstance(processor, OmniConstrainedLogitsProcessor) for processor in logits_processor
        ):
            # custom processors run after transformers' own and before the warpers: the constraint masks the scores
            # that top-k / top-p then see, as the fast head does
            logits_processor.append(OmniConstrainedLogitsProcessor(self.config))
        return super()._get_logits_processor(generation_config, *args, logits_processor=logits_processor, **kwargs)

    def _get_stopping_criteria(self, generation_config, stopping_criteria=None, **kwargs) -> StoppingCriteriaList:
        criteria = super()._get_stopping_criteria(generation_config, stopping_criteria=stopping_criteria, **kwargs)
        if generation_config.max_duration is not None:
            criteria.append(OmniMaxDurationCriteria(generation_config.max_duration, self.config))
        return criteria

    def _sample(
        self,
        input_ids: torch.LongTensor,
        logits_processor: LogitsProcessorList,
        stopping_criteria: StoppingCriteriaList,
        generation_config,
        synced_gpus: bool = False,
        streamer: BaseStreamer | None = None,
        **model_kwargs,
    ):
        r"""
        transformers' sampling / greedy loop, with the fast audio head: while every unfinished row is inside an audio
        span, only the allowed block of the head is computed and the processors and sampling run on
        `codebook_size + 2` candidates instead of the whole vocabulary (a 4096-row block is ~5% of a 79k-row head,
        and the warpers, top-p's sort included, shrink alike). The span state is built once and advanced per token.
        Falls back to `GenerationMixin._sample` when the fast head is off or cannot apply (see the class docstring).
        """
        constraint = next((p for p in logits_processor if isinstance(p, OmniConstrainedLogitsProcessor)), None)
        wants_outputs = generation_config.return_dict_in_generate and any(
            getattr(generation_config, name)
            for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
        )
        if (
            not generation_config.fast_audio_head
            or constraint is None
            or wants_outputs
            or synced_gpus
            or not _block_scoring_supported(logits_processor)
        ):
            return super()._sample(
                input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=synced_gpus,
                streamer=streamer, **model_kwargs,
            )

        pad_token_id = generation_config._pad_token_tensor
        has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
        do_sample = generation_config.do_sample
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        if pad_token_id is not None:
            pad_token_id = pad_token_id.to(input_ids.device)
        state = OmniSpanState(self.config, input_ids)
        span_users = [p for p in (*logits_processor, *stopping_criteria) if isinstance(p, _SpanStateUser)]
        for user in span_users:
            user.span_state = state

        outputs = self._prefill(input_ids, generation_config, model_kwargs)
        next_logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
        try:
            with self._optimize_model_for_decode():
                while True:
                    model_kwargs = self._update_model_kwargs_for_generation(outputs, model_kwargs)
                    del outputs
                    if next_logits is None and bool((state.in_audio | (unfinished == 0)).all()):
                        scores, candidates = audio_block_scores(self, hidden, input_ids, state, logits_processor)
                    else:
                        if next_logits is None:
                            next_logits = self.lm_head(hidden).float()
                        scores, candidates = logits_processor(input_ids, next_logits), None
                    if do_sample:
                        choice = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
                    else:
                        choice = scores.argmax(dim=-1, keepdim=True)
                    next_tokens = (candidates.gather(1, choice) if candidates is not None else choice)[:, 0]
                    if has_eos_stopping_criteria:
                        next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
                    input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
                    state.advance(next_tokens)
                    if streamer is not None:
                        streamer.put(next_tokens.cpu())
                    unfinished = unfinished & ~stopping_criteria(input_ids, scores)
                    if unfinished.max() == 0:
                        break
                    model_inputs = self.prepare_inputs_for_generation(
                        input_ids, next_sequence_length=1 if model_kwargs["use_cache"] else None, **model_kwargs
                    )
                    model_inputs.pop("logits_to_keep", None)
                    outputs = self.model(**model_inputs)
                    hidden, next_logits = outputs.last_hidden_state[:, -1], None
        finally:
            for user in span_users:
                user.span_state = None
        if streamer is not None:
            streamer.end()
        if generation_config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(sequences=input_ids, past_key_values=model_kwargs.get("past_key_values"))
        return input_ids


# ---------------------------------------------------------------------------------------------- streaming
# A SNAC decoder run layer by layer on successive pieces of its input: every layer keeps what it still needs of its
# past input (a convolution its last `dilation * (kernel - 1)` steps, an upsampling layer its last step, a windowed
# attention layer its unfinished window), so each frame is decoded once and the joined output equals the full decode.
class _ConvLayer:
    """A stride-1 `Conv1d` with 'same' padding, as all of SNAC's decoder convolutions are."""

    def __init__(self, conv: torch.nn.Conv1d):
        self.span = conv.dilation[0] * (conv.kernel_size[0] - 1)
        if conv.stride[0] != 1 or 2 * conv.padding[0] != self.span:
            raise NotImplementedError(f"only stride-1 'same' convolutions stream, got {conv}")
        self.weight = conv.weight.detach()  # weight norm computed once
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.dilation, self.groups, self.padding = conv.dilation[0], conv.groups, conv.padding[0]
        self.history: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        if self.history is None:  # the full decode's left zero padding
            self.history = x.new_zeros(*x.shape[:2], self.padding)
        x = torch.cat([self.history, x], dim=-1)
        if final:
            x = F.pad(x, (0, self.padding))
        self.history = x[..., x.shape[-1] - min(self.span, x.shape[-1]) :]
        if x.shape[-1] <= self.span:
            return x.new_zeros(x.shape[0], self.weight.shape[0], 0)
        return F.conv1d(x, self.weight, self.bias, dilation=self.dilation, groups=self.groups)


class _TransposedConvLayer:
    """SNAC's upsampling `ConvTranspose1d` (kernel `2 * stride`) as one matrix product per piece: input step `i`
    writes a patch of `2 * stride` output steps, whose first half completes output block `i` (with the previous
    input's second half) and whose second half is carried to the next piece; the full decode's crop (`padding`) is
    applied at both ends of the stream."""

    def __init__(self, conv: torch.nn.ConvTranspose1d):
        self.stride = conv.stride[0]
        if conv.kernel_size[0] != 2 * self.stride or conv.dilation[0] != 1 or conv.groups != 1:
            raise NotImplementedError(f"only kernel_size == 2 * stride, ungrouped upsampling streams, got {conv}")
        weight = conv.weight.detach()  # (in_channels, out_channels, 2 * stride)
        self.out_channels = weight.shape[1]
        self.matrix = weight.reshape(weight.shape[0], -1)
        self.bias = None if conv.bias is None else conv.bias.detach()[:, None]
        self.crop = conv.padding[0]
        self.carry: torch.Tensor | None = None  # the last input's second half
        self.inputs = self.raw_position = 0

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        batch, stride = x.shape[0], self.stride
        blocks = []
        if x.shape[-1]:
            patches = (x.transpose(1, 2) @ self.matrix).view(batch, x.shape[-1], self.out_channels, 2 * stride)
            first, second = patches[..., :stride], patches[..., stride:]
            if self.carry is not None:
                first = first + torch.cat([self.carry[:, None], second[:, :-1]], dim=1)
            else:
                first = first + F.pad(second[:, :-1], (0, 0, 0, 0, 1, 0))
            blocks.append(first)
            self.carry = second[:, -1]
            self.inputs += x.shape[-1]
        if final and self.carry is not None:  # the last block: the last input's second half, nothing after it
            blocks.append(self.carry[:, None])
        if not blocks:
            return x.new_zeros(batch, self.out_channels, 0)
        raw = torch.cat(blocks, dim=1).permute(0, 2, 1, 3).reshape(batch, self.out_channels, -1)
        if self.bias is not None:
            raw = raw + self.bias
        low = max(0, self.crop - self.raw_position)
        high = raw.shape[-1]
        if final:  # the full decode's output is raw[crop : crop + inputs * stride]
            high = min(high, self.crop + self.inputs * stride - self.raw_position)
        self.raw_position += raw.shape[-1]
        return raw[..., low:high]


class _ResidualLayer:
    """SNAC's `ResidualUnit`: `x + block(x)`, with `x` held back until the block's output for it is ready."""

    def __init__(self, layers: list):
        self.layers = layers
        self.pending: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        self.pending = x if self.pending is None else torch.cat([self.pending, x], dim=-1)
        y = _run_layers(self.layers, x, final)
        out = self.pending[..., : y.shape[-1]] + y
        self.pending = self.pending[..., y.shape[-1] :]
        return out


class _NoiseLayer:
    """The feature extractor's position-locked decoder noise, at the absolute step of each piece."""

    def __init__(self, noise_module: torch.nn.Module):
        self.module = noise_module
        self.position = 0

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        if not x.shape[-1]:
            return x
        noise = self.module._noise(self.position, x.shape[-1], x.device, x.dtype)
        self.position += x.shape[-1]
        return x + noise * self.module.linear(x)


class _WindowedAttentionLayer:
    """SNAC's `LocalMHA`: attention inside fixed windows, run on each window once it is whole."""

    def __init__(self, attention: torch.nn.Module):
        self.module, self.window = attention, attention.window_size
        self.pending: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        self.pending = x if self.pending is None else torch.cat([self.pending, x], dim=-1)
        whole = self.pending.shape[-1] // self.window * self.window
        out = self.module(self.pending[..., :whole]) if whole else self.pending[..., :0]
        self.pending = self.pending[..., whole:]
        return out


class _PointwiseLayer:
    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        return self.module(x) if x.shape[-1] else x


def _run_layers(layers: list, x: torch.Tensor, final: bool) -> torch.Tensor:
    for layer in layers:
        x = layer(x, final)
    return x


def _lookahead(layers: list, rate: int) -> tuple[float, int]:
    """Steps of the decoder's input (latent steps) that an output step waits for, and the output rate (output steps
    per input step), for layers that start at `rate`."""
    steps = 0.0
    for layer in layers:
        if isinstance(layer, _ResidualLayer):
            inner, rate = _lookahead(layer.layers, rate)
            steps += inner
        elif isinstance(layer, _ConvLayer):
            steps += layer.padding / rate
        elif isinstance(layer, _TransposedConvLayer):
            steps += 1 / rate
            rate *= layer.stride
        elif isinstance(layer, _WindowedAttentionLayer):
            steps += layer.window / rate
    return steps, rate


def _streaming_layers(module: torch.nn.Module) -> list:
    """The layers of a SNAC decoder as streaming layers; `NotImplementedError` names a module that cannot stream."""
    from snac.attention import LocalMHA
    from snac.layers import DecoderBlock, ResidualUnit, Snake1d

    if isinstance(module, torch.nn.Sequential):
        return [layer for child in module for layer in _streaming_layers(child)]
    if isinstance(module, DecoderBlock):
        return _streaming_layers(module.block)
    if isinstance(module, ResidualUnit):
        return [_ResidualLayer(_streaming_layers(module.block))]
    if isinstance(module, (Snake1d, torch.nn.Tanh)):
        return [_PointwiseLayer(module)]
    if isinstance(module, torch.nn.ConvTranspose1d):
        return [_TransposedConvLayer(module)]
    if isinstance(module, torch.nn.Conv1d):
        return [_ConvLayer(module)]
    if isinstance(module, LocalMHA):
        return [_WindowedAttentionLayer(module)]
    if hasattr(module, "_noise") and hasattr(module, "linear"):
        return [_NoiseLayer(module)]
    raise NotImplementedError(f"no streaming rule for {type(module).__name__}")


class _AudioCodec:
    """What streaming needs of a processor's codec: its `audio_tokenizer` (a `SNACAudioTokenizer`) and token layout."""

    def __init__(self, processor):
        self.layout = processor.token_layout
        self.module = processor.audio_tokenizer
        self.samples_per_frame = self.module.config.samples_per_frame
        self.frames_per_window = self.module.config.frames_per_window
        self.device = self.module.device

    def decode_window(self, codes: list[torch.Tensor], frame_offset: int) -> torch.Tensor:
        """Decode the codes of a window of frames that starts at absolute frame `frame_offset` (1-D waveform)."""
        with torch.inference_mode():
            return self.module.decode(codes, frame_offset=frame_offset).audio_values.float().cpu()


class SNACStreamingDecoder:
    r"""
    Decodes a stream of SNAC frames piece by piece: every frame is decoded once, each decoder layer keeping the
    little of its past input it still needs, and the joined output equals the full decode of all frames
    (float rounding aside), first and last frame included. Output comes as soon as it no longer depends on frames to
    come (`lookahead_frames` later; 3 for the 24 kHz SNAC).

    Args:
        processor ([`OmniProcessor`]): gives the codec (its `audio_tokenizer`) and the token layout.

    Raises:
        `NotImplementedError` for a codec with a layer that has no streaming rule.
    """

    def __init__(self, processor):
        self.codec = processor if isinstance(processor, _AudioCodec) else _AudioCodec(processor)
        self.layout = self.codec.layout
        self.quantizer = self.codec.module.quantizer
        self.layers = _streaming_layers(self.codec.module.decoder.model)
        latent_steps, _ = _lookahead(self.layers, 1)
        # frames that must follow a frame before all of its audio is final
        self.lookahead_frames = math.ceil(latent_steps / self.layout.vq_strides[0])
        self.frames = self.samples = 0

    def push(self, frame_ids: torch.Tensor, final: bool = False) -> np.ndarray:
        """
        Decode the next whole frames (1-D audio ids, possibly none); `final=True` ends the stream.

        Returns:
            The waveform samples now final (1-D float32, possibly empty).
        """
        layout, codec = self.layout, self.codec
        self.frames += frame_ids.numel() // layout.tokens_per_frame
        if final:  # as the full decode: code 0 up to whole attention windows, trimmed off below
            padding = -self.frames % codec.frames_per_window
            zero_frame = torch.tensor([layout.block_start(p) for p in range(layout.tokens_per_frame)])
            frame_ids = torch.cat([frame_ids.long(), zero_frame.repeat(padding)])
        with torch.inference_mode():
            if frame_ids.numel():
                latent = self.quantizer.from_codes([code[None].to(codec.device) for code in layout.ids_to_codes(frame_ids)])
            else:
                latent = torch.zeros(1, self.quantizer.quantizers[0].out_proj.out_channels, 0, device=codec.device)
            audio = _run_layers(self.layers, latent, final)[0, 0]
        if final:
            audio = audio[: self.frames * codec.samples_per_frame - self.samples]
        self.samples += audio.shape[-1]
        return audio.float().cpu().numpy()


class OmniAudioStreamer(BaseStreamer):
    r"""
    Streams speech while `generate` runs: pass it as `streamer=` and iterate over it (from another thread), or give
    an `on_chunk` callback. Each chunk is a 1-D float32 numpy waveform at the codec's sampling rate; the chunks of a
    stream joined equal the full decode of the same tokens and have exactly its length.

    By default every frame is decoded once: the codec's layers keep their state between chunks
    ([`SNACStreamingDecoder`]), so streaming costs about what one decode of the whole speech costs, and audio comes
    out as soon as it is final (for SNAC, a little more than two frames after its frame).

    With `right_context_frames` set, each chunk is instead decoded inside a window of `left_context_frames` before
    and `right_context_frames` after it (decoder noise locked to the absolute frame), the way Orpheus streams: the
    latency is fixed, but the windows overlap, so decoding costs `(left + chunk + right) / chunk` full decodes, and
    too little right context changes the audio near each join. Relative RMS error against the full decode with the
    24 kHz SNAC: right context 1 frame 3.7e-3, 2 frames 2.5e-5, 4 frames 2e-7.

    The stream ends at a non-audio id (e.g. `<|audio_end|>`) or at the end of generation; a trailing partial frame
    is dropped with a log, as `OmniProcessor.decode` does. The prompt (the first `put`) is not streamed. Batch size
    1 only (as transformers' streamers).

    Args:
        processor ([`OmniProcessor`]): gives the codec (its `audio_tokenizer`) and the token layout.
        chunk_frames (`int`, *optional*, defaults to 1): frames decoded per codec call; more frames per call cost
            less per frame (fewer, larger calls) and add `chunk_frames - 1` frames of latency.
        right_context_frames (`int`, *optional*): decode overlapping windows with this look-ahead instead of
            streaming the codec's state (see above).
        left_context_frames (`int`, *optional*, defaults to 4): frames of context before each window (windowed
            decoding only).
        on_chunk (`Callable[[np.ndarray], None]`, *optional*): called with each chunk (e.g. to write a file).
        timeout (`float`, *optional*): seconds the iterator waits for the next chunk before raising `queue.Empty`.
    """

    def __init__(
        self,
        processor,
        chunk_frames: int = 1,
        right_context_frames: int | None = None,
        left_context_frames: int = 4,
        on_chunk: Callable[[np.ndarray], None] | None = None,
        timeout: float | None = None,
    ):
        for name, value, least in (
            ("chunk_frames", chunk_frames, 1), ("right_context_frames", right_context_frames, 0),
            ("left_context_frames", left_context_frames, 0),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name}={value!r} must be an integer >= {least}.")
        self.codec = _AudioCodec(processor)
        self.layout = self.codec.layout
        self.chunk_frames = chunk_frames
        self.on_chunk = on_chunk
        self.timeout = timeout
        self.queue: Queue = Queue()
        self.windowed = right_context_frames is not None
        lookahead = None
        if not self.windowed:
            try:
                lookahead = SNACStreamingDecoder(self.codec).lookahead_frames
            except NotImplementedError as error:
                logger.warning(
                    f"This codec cannot be decoded layer by layer ({error}); streaming overlapping windows with 4 "
                    "frames of context instead."
                )
                self.windowed, right_context_frames = True, 4
        window = self.codec.frames_per_window
        self.window = window
        self.left_context = math.ceil(left_context_frames / window) * window
        # frames of look-ahead before a frame's audio goes out: the decoder's own when streaming its state; for
        # windows, the requested context, at least two attention windows (so windows align as in the full decode)
        self.right_context = lookahead if lookahead is not None else max(right_context_frames, 2 * window if window > 1 else 0)
        self._decoder: SNACStreamingDecoder | None = None
        self._seen_prompt = False
        self.samples_emitted = 0  # by this streamer, all spans together
        self._reset()

    def _reset(self) -> None:
        self.codes_ids: list[int] = []  # audio ids of whole frames so far
        self.pending: list[int] = []  # ids of the frame being built
        self.emitted_frames = 0
        self._decoder = None

    @property
    def num_frames(self) -> int:
        """Whole frames received in the current span."""
        return len(self.codes_ids) // self.layout.tokens_per_frame

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError(f"OmniAudioStreamer streams one sequence; got a batch of {value.shape[0]}. Use batch size 1.")
        if not self._seen_prompt:  # the first call holds the prompt (possibly a voice prompt's audio): not streamed
            self._seen_prompt = True
            return
        layout = self.layout
        for token in value.flatten().tolist():
            if layout.audio_token_offset <= token < layout.vocab_end:
                self.pending.append(token)
                if len(self.pending) == layout.tokens_per_frame:
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
        if self.windowed:
            self._emit_windows(final)
            return
        ready = self.num_frames - self.emitted_frames
        if not final and ready < self.chunk_frames:
            return
        if self._decoder is None:
            self._decoder = SNACStreamingDecoder(self.codec)
        tokens_per_frame = self.layout.tokens_per_frame
        frame_ids = torch.tensor(self.codes_ids[self.emitted_frames * tokens_per_frame :], dtype=torch.long)
        self.emitted_frames = self.num_frames
        self._send(self._decoder.push(frame_ids, final=final))

    def _emit_windows(self, final: bool) -> None:
        total = self.num_frames
        ready = total if final else total - self.right_context
        while ready - self.emitted_frames >= (1 if final else self.chunk_frames):
            start = self.emitted_frames
            stop = min(ready, start + self.chunk_frames) if not final else ready
            window_start = max(0, (start - self.left_context) // self.window * self.window)
            window_stop = total if final else min(total, stop + self.right_context)
            tokens_per_frame = self.layout.tokens_per_frame
            frame_ids = torch.tensor(self.codes_ids[window_start * tokens_per_frame : window_stop * tokens_per_frame])
            audio = self.codec.decode_window(self.layout.ids_to_codes(frame_ids), window_start)
            samples_per_frame = self.codec.samples_per_frame
            self.emitted_frames = stop
            self._send(audio[(start - window_start) * samples_per_frame : (stop - window_start) * samples_per_frame].numpy())

    def _send(self, chunk: np.ndarray) -> None:
        if chunk.size:
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
    processor_kwargs = {k: generate_kwargs.pop(k) for k in list(generate_kwargs) if k.startswith("voice_prompt")}
    if processor_kwargs.get("voice_prompt_audio") is not None and processor_kwargs.get("voice_prompt_ids") is None:
        # encoded once here, not again for every piece
        processor_kwargs["voice_prompt_ids"] = processor.encode_voice_prompt(
            processor_kwargs.pop("voice_prompt_audio"), processor_kwargs.pop("voice_prompt_sampling_rate", None)
        )
    pieces = [(index, piece) for index, t in enumerate(texts) for piece in split_sentences(t, max_chars)]
    if not pieces:
        raise ValueError(f"Nothing to speak: the text {text!r} is empty.")

    def prompt(batch: list[str]):
        return processor(text=batch, speaker=speaker, return_tensors="pt", **processor_kwargs).to(model.device)

    def no_audio(index: int, piece: str) -> None:
        logger.warning(f"The model produced no audio for the piece {piece!r} of text {index}; it is skipped.")

    if on_chunk is not None:
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
                no_audio(index, piece)
        emit(joiner.finish())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    waveforms_by_text: list[list[np.ndarray]] = [[] for _ in texts]
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start : start + batch_size]
        inputs = prompt([piece for _, piece in batch])
        sequences = model.generate(**inputs, **generate_kwargs)
        for (index, piece), sequence in zip(batch, sequences):
            waveform = processor.decode_audio(sequence[inputs["input_ids"].shape[1] :])
            if waveform is None or not waveform.size:
                no_audio(index, piece)
                continue
            waveforms_by_text[index].append(waveform)
    joined = [crossfade_join(w, processor.sampling_rate, crossfade_ms) for w in waveforms_by_text]
    return joined[0] if isinstance(text, str) else joined


__all__ = [
    "CrossfadeJoiner",
    "OmniAudioStreamer",
    "OmniConstrainedLogitsProcessor",
    "OmniGenerationMixin",
    "OmniMaxDurationCriteria",
    "OmniSpanState",
    "SNACStreamingDecoder",
    "audio_block_scores",
    "crossfade_join",
    "generate_speech",
    "split_sentences",
]
