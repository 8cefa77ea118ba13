# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Generation with the Omni model: structurally valid speech by construction, a duration limit and a fast audio head.

- [`OmniGenerationMixin`]: `generate` for Omni models. It overrides `GenerationMixin`'s hooks (as transformers' Dia
  and CSM models do): `_get_logits_processor` adds the Omni constraint, `_get_stopping_criteria` the duration limit,
  `_sample` scores only the one allowed block of `codebook_size` ids (plus audio-end) while every unfinished row is
  inside an audio span, and `_prepare_generated_length` checks the length against the model's positions.
- [`OmniSpanState`]: where each row stands in the Omni format, built once from the prompt and advanced by one token
  per step.
- [`OmniConstrainedLogitsProcessor`]: inside an audio span every id lies in the block of its frame position and
  audio-end is allowed only at a frame boundary; inside a text span only text ids are allowed.
- [`OmniMaxDurationCriteria`]: stops a row whose audio span reaches a duration in seconds, logging the cut.

The audio streamer (`OmniAudioStreamer`) lives with the codec in `modeling_snac.py`; long text, piece by piece, is
library code (`qwen_omni.omni.speech`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
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

    def select(self, rows: torch.LongTensor) -> None:
        """Keep only `rows` of the batch (a continuous batch dropping finished rows)."""
        self.in_audio, self._text_open = self.in_audio[rows], self._text_open[rows]
        self._audio_since_start = self._audio_since_start[rows]

    def extend(self, other: OmniSpanState) -> None:
        """Append the rows of `other` (rows joining a continuous batch; both describe sequences of one length,
        left-padded where needed: padding is outside every span)."""
        if other.length != self.length:
            raise ValueError(f"span states of lengths {self.length} and {other.length} cannot be joined")
        self.in_audio = torch.cat([self.in_audio, other.in_audio])
        self._text_open = torch.cat([self._text_open, other._text_open])
        self._audio_since_start = torch.cat([self._audio_since_start, other._audio_since_start])


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
            config.tts_token_id,
            config.asr_token_id,
            config.text_start_token_id,
            config.audio_start_token_id,
            config.audio_end_token_id,
            config.pad_token_id,
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
        in_block = (vocab[None, :] >= block_lo[:, None]) & (
            vocab[None, :] < (block_lo + self.layout.codebook_size)[:, None]
        )
        audio_allowed = in_block | (
            (vocab == self.config.audio_end_token_id)[None, :] & state.at_frame_boundary[:, None]
        )
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
        if (
            isinstance(max_duration, bool)
            or not isinstance(max_duration, (int, float))
            or not 0 < max_duration < math.inf
        ):
            raise ValueError(f"max_duration={max_duration!r} must be a positive, finite number of seconds, e.g. 20.0.")
        self.max_duration = float(max_duration)
        self.config = config
        self.max_frames = max(1, math.floor(self.max_duration * config.codec_sampling_rate / config.samples_per_frame))
        self.max_audio_tokens = self.max_frames * config.token_layout.tokens_per_frame
        self.cut_rows: set[int] = set()

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
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
    model,
    hidden: torch.Tensor,
    input_ids: torch.LongTensor,
    state: OmniSpanState,
    logits_processor: LogitsProcessorList,
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
    else:  # one product per frame position present (gathering a block per row would copy it per row)
        code_logits = hidden.new_empty(hidden.shape[0], size)
        for frame_position in position.unique().tolist():
            rows = (position == frame_position).nonzero()[:, 0]
            code_logits[rows] = hidden[rows] @ blocks[frame_position].T
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
        The decoding step is compiled when transformers' own loop would compile it (a static cache on an accelerator,
        or a `compile_config` that allows the device).
        Falls back to `GenerationMixin._sample` when the fast head is off or cannot apply (see the class docstring).
        """
        if not self._fast_head_applies(logits_processor, generation_config, synced_gpus):
            return super()._sample(
                input_ids,
                logits_processor,
                stopping_criteria,
                generation_config,
                synced_gpus=synced_gpus,
                streamer=streamer,
                **model_kwargs,
            )

        pad_token_id = generation_config._pad_token_tensor
        has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        if pad_token_id is not None:
            pad_token_id = pad_token_id.to(input_ids.device)
        state = OmniSpanState(self.config, input_ids)
        span_users = [p for p in (*logits_processor, *stopping_criteria) if isinstance(p, _SpanStateUser)]
        for user in span_users:
            user.span_state = state

        # transformers' rule for a compiled decoding step (a static cache on an accelerator, or `compile_config`
        # allowing every device): the base model's call compiled, the prefill eager
        decode_forward = (
            self._compiled_base_model_call(generation_config.compile_config)
            if self._valid_auto_compile_criteria(model_kwargs, generation_config)
            else self.model
        )
        outputs = self._prefill(input_ids, generation_config, model_kwargs)
        hidden = None  # the last hidden state, set by each decode step below
        next_logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=input_ids.device)
        try:
            with self._optimize_model_for_decode():
                while True:
                    model_kwargs = self._update_model_kwargs_for_generation(outputs, model_kwargs)
                    del outputs
                    scores, candidates = next_token_scores(
                        self, input_ids, state, logits_processor, hidden, next_logits, unfinished
                    )
                    next_tokens = choose_tokens(scores, candidates, generation_config.do_sample)
                    if has_eos_stopping_criteria:
                        next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
                    input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
                    state.advance(next_tokens)
                    if streamer is not None:
                        streamer.put(next_tokens.cpu())
                    unfinished = unfinished & ~stopping_criteria(input_ids, scores)
                    if unfinished.max() == 0:
                        break
                    outputs = self._decode_step(input_ids, model_kwargs, decode_forward)
                    hidden, next_logits = outputs.last_hidden_state[:, -1], None
        finally:
            for user in span_users:
                user.span_state = None
        if streamer is not None:
            streamer.end()
        if generation_config.return_dict_in_generate:
            return GenerateDecoderOnlyOutput(sequences=input_ids, past_key_values=model_kwargs.get("past_key_values"))
        return input_ids

    def _fast_head_applies(self, logits_processor: LogitsProcessorList, generation_config, synced_gpus: bool) -> bool:
        """Whether `_sample` can score audio on the allowed block (see the class docstring)."""
        wants_outputs = generation_config.return_dict_in_generate and any(
            getattr(generation_config, name)
            for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
        )
        return (
            generation_config.fast_audio_head
            and any(isinstance(p, OmniConstrainedLogitsProcessor) for p in logits_processor)
            and not wants_outputs
            and not synced_gpus
            and _block_scoring_supported(logits_processor)
        )

    def _compiled_base_model_call(self, compile_config) -> Callable:
        """`get_compiled_call` for the base model (the fast head computes what it needs of the head itself): compiled
        once per `CompileConfig`."""
        compile_config = compile_config or self._default_compile_config()
        cached = getattr(self, "_compiled_base_model", None)
        if cached is None or cached[0] != compile_config:
            cached = self._compiled_base_model = (
                compile_config,
                torch.compile(self.model.__call__, **compile_config.to_dict()),
            )
        return cached[1]

    def _decode_step(self, input_ids: torch.LongTensor, model_kwargs: dict, forward: Callable):
        """One decoding step of the base model (`forward`: its call, or the compiled one), without the head (the
        next scores choose what of it to compute)."""
        model_inputs = self.prepare_inputs_for_generation(
            input_ids, next_sequence_length=1 if model_kwargs["use_cache"] else None, **model_kwargs
        )
        model_inputs.pop("logits_to_keep", None)
        return forward(**model_inputs)


def next_token_scores(
    model,
    input_ids: torch.LongTensor,
    state: OmniSpanState,
    logits_processor: LogitsProcessorList,
    hidden: torch.Tensor | None,
    logits: torch.Tensor | None,
    unfinished: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Processed scores of the next token: over the allowed audio block (`audio_block_scores`) when no full `logits`
    are at hand and every unfinished row is inside an audio span, else over the vocabulary (`logits`, or the full
    head on `hidden`) through every processor.

    Returns:
        `(scores, candidate_ids)`: `candidate_ids` maps the block's columns to vocabulary ids (`None` for full scores).
    """
    in_audio = state.in_audio if unfinished is None else state.in_audio | (unfinished == 0)
    if logits is None and bool(in_audio.all()):
        return audio_block_scores(model, hidden, input_ids, state, logits_processor)
    if logits is None:
        logits = model.lm_head(hidden).float()
    return logits_processor(input_ids, logits), None


def choose_tokens(scores: torch.Tensor, candidate_ids: torch.Tensor | None, do_sample: bool) -> torch.LongTensor:
    """Each row's next id `(batch,)`: sampled from the scores or their argmax, mapped through `candidate_ids`."""
    if do_sample:
        choice = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
    else:
        choice = scores.argmax(dim=-1, keepdim=True)
    return (candidate_ids.gather(1, choice) if candidate_ids is not None else choice)[:, 0]


__all__ = [
    "OmniConstrainedLogitsProcessor",
    "OmniGenerationMixin",
    "OmniMaxDurationCriteria",
    "OmniSpanState",
    "audio_block_scores",
    "choose_tokens",
    "next_token_scores",
]
