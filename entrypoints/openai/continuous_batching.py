# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Continuous batching of speech for the embedded engine: a request that arrives while others are being generated
joins them at the next decoding step (its prompt is prefilled on its own, then its row decodes with the others), and
a row that ends or is cancelled leaves at once, freeing its place.

It is the decoding of `OmniGenerationMixin._sample` (the Omni constraint and the fast audio head, the processors
`generate` prepares from the same settings) with rows of different lengths in one batch: the batch is left-padded to
one length (KV cache, ids, attention mask), each row keeps its own positions, and leading columns that only padding
uses are cut when rows leave. Settings whose processors need the true length of each row (`min_new_tokens`,
`no_repeat_ngram_size`, ...) or anything the fast head does not serve are reported by `SpeechDecoding.unsupported`;
the engine generates those with `generate`, batch by batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.utils import logging

from qwen_omni.generation_omni import (
    OmniConstrainedLogitsProcessor,
    OmniMaxDurationCriteria,
    OmniSpanState,
    _block_scoring_supported,
    choose_tokens,
    next_token_scores,
)


logger = logging.get_logger(__name__)


class SpeechDecoding:
    """
    What the speech rows of one batch key share, prepared as `generate` prepares it from the same settings: the
    generation config, the logits processors (the Omni constraint among them), the stop ids and the duration limit.
    `unsupported` says why these settings cannot be decoded here (`None` when they can).
    """

    def __init__(self, model, generate_kwargs: dict):
        self.model = model
        config, model_kwargs = model._prepare_generation_config(None, **generate_kwargs)
        model._prepare_special_tokens(config, True, device=model.device)
        self.config = config
        self.has_default_max_length = (  # as `generate` decides it
            generate_kwargs.get("max_length") is None and model.generation_config.max_length is None
        )
        self.processors = model._get_logits_processor(config, device=model.device, model_kwargs={})
        self.constraint = next(p for p in self.processors if isinstance(p, OmniConstrainedLogitsProcessor))
        self.eos_ids = config._eos_token_tensor
        self.max_audio_tokens = (
            None
            if config.max_duration is None
            else OmniMaxDurationCriteria(config.max_duration, model.config).max_audio_tokens
        )
        reasons = []
        if model_kwargs:
            reasons.append(f"model arguments {sorted(model_kwargs)}")
        if config.num_beams != 1:
            reasons.append(f"num_beams={config.num_beams}")
        if not (config.constrained and config.fast_audio_head):
            reasons.append("constrained=False or fast_audio_head=False")
        if not _block_scoring_supported(self.processors):
            reasons.append(f"logits processors {[type(p).__name__ for p in self.processors]}")
        if config.stop_strings or config.max_time is not None:
            reasons.append("stop_strings / max_time")
        layers = {type(layer).__name__ for layer in DynamicCache(config=model.config).layers}
        if layers != {DynamicLayer.__name__}:  # rows are joined and trimmed column by column: full attention only
            reasons.append(f"cache layers {sorted(layers)}")
        self.unsupported = "; ".join(reasons) or None

    def max_new_tokens(self, prompt_length: int) -> int:
        """New tokens a row with this prompt may make (`generate`'s own length rule, the model's positions
        included)."""
        config = self.model._prepare_generated_length(
            copy.copy(self.config),
            has_default_max_length=self.has_default_max_length,
            has_default_min_length=True,
            model_input_name="input_ids",
            input_ids_length=prompt_length,
            inputs_tensor=None,
        )
        return config.max_length - prompt_length


def _padding(mask: torch.Tensor) -> torch.Tensor | None:
    """The attention mask, or `None` when no row is padded (as `generate` drops an all-ones mask: the model then
    skips building one, and attention runs as it does for a single unpadded sequence)."""
    return None if bool(mask[:, 0].all()) else mask


@dataclass(eq=False)
class _Row:
    job: object  # a `GenerationJob`
    stream: int  # its stream in the decoding process
    max_new_tokens: int
    new_tokens: int = 0


class _Rows:
    """Rows decoded together: the KV cache, ids and attention mask left-padded to one length (the last column is
    each row's newest token, not yet in the cache), and their span state."""

    def __init__(self, rows: list[_Row], ids: torch.Tensor, mask: torch.Tensor, cache, state: OmniSpanState):
        self.rows, self.ids, self.mask, self.cache, self.state = rows, ids, mask, cache, state

    def __len__(self) -> int:
        return len(self.rows)

    def left_pad(self, columns: int, pad_id: int) -> None:
        if columns <= 0:
            return
        self.ids = torch.nn.functional.pad(self.ids, (columns, 0), value=pad_id)
        self.mask = torch.nn.functional.pad(self.mask, (columns, 0), value=0)
        for layer in self.cache.layers:
            layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, columns, 0))
            layer.values = torch.nn.functional.pad(layer.values, (0, 0, columns, 0))
        self.state.length += columns

    def extend(self, other: _Rows, pad_id: int) -> None:
        self.left_pad(other.ids.shape[1] - self.ids.shape[1], pad_id)
        other.left_pad(self.ids.shape[1] - other.ids.shape[1], pad_id)
        self.rows += other.rows
        self.ids, self.mask = torch.cat([self.ids, other.ids]), torch.cat([self.mask, other.mask])
        for layer, joining in zip(self.cache.layers, other.cache.layers):
            layer.keys = torch.cat([layer.keys, joining.keys])
            layer.values = torch.cat([layer.values, joining.values])
        self.state.extend(other.state)

    def keep(self, keep: list[int]) -> None:
        """Keep these rows, then cut the leading columns that are padding in every row left."""
        index = torch.tensor(keep, dtype=torch.long, device=self.ids.device)
        self.rows = [self.rows[i] for i in keep]
        self.ids, self.mask = self.ids[index], self.mask[index]
        self.cache.batch_select_indices(index)
        self.state.select(index)
        if not keep:
            return
        unused = int((self.mask.sum(dim=0) == 0).int().cumprod(dim=0).sum())
        if unused:
            self.ids, self.mask = self.ids[:, unused:], self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
            self.state.length -= unused


class ContinuousSpeechBatch:
    """
    The speech rows being generated, one decoding step at a time (see the module docstring). `add` prefills jobs and
    makes their first token; `step` makes one more token for every row. Each row's ids go to the decoding process
    once per step; a row that ends (an end id, its length, its duration, its job cancelled) leaves the batch.

    Args:
        model: the Omni model. processor: its processor (padding). decoding: the [`SpeechDecoding`] of the batch key.
        decoder: the [`SpeechDecodeProcess`] that streams the audio.
    """

    def __init__(self, model, processor, decoding: SpeechDecoding, decoder):
        self.model, self.processor, self.decoding, self.decoder = model, processor, decoding, decoder
        self.pad_id = int(model.config.pad_token_id)
        self.batch: _Rows | None = None

    def __len__(self) -> int:
        return 0 if self.batch is None else len(self.batch)

    @property
    def jobs(self) -> list:
        return [] if self.batch is None else [row.job for row in self.batch.rows]

    def add(self, jobs: list) -> None:
        """Prefill the jobs' prompts (together), make each one's first token (through the fast audio head when every
        prompt ends in an audio span, as speech prompts do: the full head's processors over the vocabulary cost ~5 ms
        a row), and join them to the batch."""
        model = self.model
        inputs = self.processor.pad([job.prompt_ids for job in jobs], padding_side="left").to(model.device)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        hidden = model.model(
            input_ids=ids,
            attention_mask=_padding(mask),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state[:, -1]
        rows = [_Row(job, self.decoder.open(job), self.decoding.max_new_tokens(len(job.prompt_ids))) for job in jobs]
        joining = _Rows(rows, ids, mask, cache, OmniSpanState(model.config, ids))
        try:
            self._next_tokens(joining, hidden=hidden)
        except Exception:
            for row in rows:
                self.decoder.close(row.stream)
            raise
        if len(joining) == 0:
            return
        if self.batch is None:
            self.batch = joining
        else:
            self.batch.extend(joining, self.pad_id)

    def step(self) -> None:
        """One more token for every row of the batch."""
        batch = self.batch
        cancelled = [i for i, row in enumerate(batch.rows) if row.job.cancelled]
        if cancelled:
            for i in cancelled:
                self.decoder.close(batch.rows[i].stream)
            batch.keep([i for i in range(len(batch)) if i not in set(cancelled)])
            if not len(batch):
                self.batch = None
                return
        positions = batch.mask.sum(dim=-1, keepdim=True) - 1  # each row's newest token
        hidden = self.model.model(
            input_ids=batch.ids[:, -1:],
            attention_mask=_padding(batch.mask),
            position_ids=positions,
            past_key_values=batch.cache,
            use_cache=True,
        ).last_hidden_state[:, -1]
        self._next_tokens(batch, hidden=hidden)

    def _next_tokens(self, batch: _Rows, logits: torch.Tensor | None = None, hidden: torch.Tensor | None = None):
        """Choose each row's next token (from full `logits`, or from `hidden` through the fast audio head when every
        row is in an audio span), append it, send it to the decoder, and drop the rows that ended."""
        decoding, state = self.decoding, batch.state
        decoding.constraint.span_state = state  # the full head's constraint reads the rows' state, not the ids
        try:
            scores, candidates = next_token_scores(self.model, batch.ids, state, decoding.processors, hidden, logits)
        finally:
            decoding.constraint.span_state = None
        tokens = choose_tokens(scores, candidates, decoding.config.do_sample)
        batch.ids = torch.cat([batch.ids, tokens[:, None]], dim=-1)
        batch.mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        state.advance(tokens)
        ended = torch.zeros_like(tokens, dtype=torch.bool)
        if decoding.eos_ids is not None:
            ended |= torch.isin(tokens, decoding.eos_ids)
        cut = torch.zeros_like(ended)
        if decoding.max_audio_tokens is not None:
            cut = state.in_audio & (state.audio_length >= decoding.max_audio_tokens)
        step, keep = [], []
        for i, (row, token, row_ended, row_cut) in enumerate(
            zip(batch.rows, tokens.tolist(), ended.tolist(), cut.tolist())
        ):
            row.new_tokens += 1
            row.job.generated_ids.append(token)
            done = row_ended or row_cut or row.new_tokens >= row.max_new_tokens
            if row_cut:
                logger.warning(
                    f"request {row.job.request_id}: speech reached max_duration={decoding.config.max_duration}s "
                    "and was cut there; the audio made so far is returned."
                )
            step.append((row.stream, [token], done))
            if not done:
                keep.append(i)
        self.decoder.send(step)
        if len(keep) < len(batch):
            batch.keep(keep)
            if batch is self.batch and not keep:
                self.batch = None
