# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Training examples of the voice recipe: clips with their conversations, cached Thinker outputs, batches."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import Qwen3OmniMoeForConditionalGeneration

from .data import EncodedClip
from .forward import TalkerVoiceOutput, build_talker_sequence, conversation_ids, talker_voice_forward, thinker_outputs


@dataclass
class TalkerVoiceExample:
    """One training clip: prompt and full conversation ids, target codes and (when cached) the Thinker's outputs.

    A preserved speaker's example ([`build_preserve_examples`]) has that speaker's `speaker_codec_id` and, for speech
    cut at `preserve_max_frames`, the `next_code` the base spoke after its last frame; the new voice's clips have
    neither (their speaker is the one trained, their speech ends)."""

    prompt_ids: torch.Tensor
    sequence: torch.Tensor
    codes: torch.Tensor
    thinker_embed: torch.Tensor | None = None
    thinker_hidden: torch.Tensor | None = None
    speaker_codec_id: int | None = None
    next_code: int | None = None


def build_examples(
    clips: list[EncodedClip],
    processor,
    user_prompt_template: str = "Read this aloud: {text}",
    system_prompt: str | None = None,
) -> list[TalkerVoiceExample]:
    """Tokenise the clips' conversations (see [`conversation_ids`])."""
    examples = []
    for clip in clips:
        prompt_ids, answer_ids = conversation_ids(
            processor, clip.text, clip.prompt, user_prompt_template, system_prompt
        )
        examples.append(
            TalkerVoiceExample(
                prompt_ids=torch.tensor(prompt_ids), sequence=torch.tensor(prompt_ids + answer_ids), codes=clip.codes
            )
        )
    return examples


@torch.no_grad()
def cache_thinker_outputs(model: Qwen3OmniMoeForConditionalGeneration, examples: list[TalkerVoiceExample]) -> None:
    """Run the frozen Thinker once per clip and keep its outputs on the examples (on the CPU), in place."""
    device = model.thinker.device
    for example in examples:
        embed, hidden = thinker_outputs(model, example.sequence[None].to(device))
        example.thinker_embed, example.thinker_hidden = embed[0].cpu(), hidden[0].cpu()


@contextmanager
def adapters_disabled(model: nn.Module):
    """The model without its LoRA, which is the frozen base: PEFT's `disable_adapters` flag of each LoRA layer, set
    without `enable_adapters` (which would switch the adapters' `requires_grad` off and on in the middle of a step)."""
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    previous = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield model
    finally:
        for layer, value in zip(layers, previous):
            layer._disable_adapters = value


def talker_voice_examples_forward(
    model: Qwen3OmniMoeForConditionalGeneration,
    examples: list[TalkerVoiceExample],
    speaker_codec_id: int,
    preserve_weight: float = 1.0,
    preserve_loss: str = "codes",
) -> TalkerVoiceOutput:
    """[`talker_voice_forward`] on a batch of examples: the Thinker's outputs are the cached ones, or are computed
    here (frozen, without gradients) for examples that have none. The new voice's clips are spoken as
    `speaker_codec_id`, the preserved speakers' examples as their own speaker.

    The Talker's input is built in the weights' dtype even under mixed precision (transformers'
    `_get_talker_user_parts` writes the projected text into a buffer of the Thinker outputs' dtype, which autocast
    would break); the Talker and the code predictor then run under whatever autocast the caller set."""
    device = model.talker.device
    sequences = []
    with torch.autocast(device.type, enabled=False):
        for example in examples:
            sequence = example.sequence[None].to(device)
            if example.thinker_embed is None:
                thinker_embed, thinker_hidden = thinker_outputs(model, sequence)
            else:
                thinker_embed, thinker_hidden = example.thinker_embed[None], example.thinker_hidden[None]
            preserved = example.speaker_codec_id is not None
            sequences.append(
                build_talker_sequence(
                    model,
                    example.prompt_ids[None].to(device),
                    sequence,
                    thinker_embed.to(device),
                    thinker_hidden.to(device),
                    example.speaker_codec_id if preserved else speaker_codec_id,
                    example.codes.to(device),
                    example.next_code,
                    preserved,
                )
            )
    reference = None
    if preserve_loss == "kl" and any(sequence.preserved for sequence in sequences):
        with torch.no_grad(), adapters_disabled(model):
            reference = talker_voice_forward(model, [sequence for sequence in sequences if sequence.preserved])
    return talker_voice_forward(model, sequences, preserve_weight, reference)


def collate_talker_voice(examples: list[TalkerVoiceExample]) -> dict[str, list[TalkerVoiceExample]]:
    """The Talker input is built inside the loss (it needs the model's embeddings), so batches are lists."""
    return {"examples": examples}
