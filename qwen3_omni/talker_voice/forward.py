# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The Talker's teacher-forced input built as `generate` builds it, and its two losses (`talker_voice_forward`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3OmniMoeForConditionalGeneration
from trl.trainer.utils import pad

from ..collator import IGNORE_INDEX


def conversation_ids(
    processor, text: str, prompt: str | None, user_prompt_template: str, system_prompt: str | None = None
) -> tuple[list[int], list[int]]:
    """`(prompt ids ending in '<|im_start|>assistant\\n', transcript ids + <|im_end|>)` of one clip, with the
    processor's chat template: the prompt is what `generate` receives, the rest what its Thinker would say."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    user_text = prompt if prompt else user_prompt_template.format(text=text)
    messages.append({"role": "user", "content": [{"type": "text", "text": user_text}]})
    prompt_text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer_ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return prompt_ids, answer_ids


@torch.no_grad()
def thinker_outputs(
    model: Qwen3OmniMoeForConditionalGeneration, sequence: torch.Tensor, **multimodal_inputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Thinker's input embeddings and `accept_hidden_layer` hidden states for `sequence` `(1, L)`, teacher-forced,
    without gradients; both `(1, L - 1, H)`: like `generate`, which never forwards the last generated token."""
    outputs = model.thinker(input_ids=sequence, output_hidden_states=True, use_cache=False, **multimodal_inputs)
    layer = model.config.talker_config.accept_hidden_layer
    return outputs.hidden_states[0][:, :-1], outputs.hidden_states[layer][:, :-1]


def talker_prompt_embeds(
    model: Qwen3OmniMoeForConditionalGeneration,
    prompt_ids: torch.Tensor,
    sequence: torch.Tensor,
    thinker_embed: torch.Tensor,
    thinker_hidden: torch.Tensor,
    speaker_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Talker's prompt for one conversation, as `Qwen3OmniMoeForConditionalGeneration.generate` builds it.

    Args:
        prompt_ids: `(1, P)` the prompt `generate` receives (ending in `<|im_start|>assistant\\n`).
        sequence: `(1, L)` the prompt followed by the Thinker's answer (ending in `<|im_end|>`).
        thinker_embed, thinker_hidden: `(1, L - 1, H)` from [`thinker_outputs`].
        speaker_id: codec id of the speaker.

    Returns:
        `(inputs_embeds (1, N, D), talker_input_ids (1, N), trailing_text_hidden (1, K, D), tts_pad_embed (1, 1, D))`.
    """
    config = model.config
    sequence_length = prompt_ids.shape[1]
    # `generate`'s user-turn selection for one unpadded row: positions whose last <|im_start|> opens a user turn
    positions = torch.arange(sequence_length, device=prompt_ids.device).unsqueeze(0)
    im_start_positions = torch.where(prompt_ids == config.im_start_token_id, positions, positions.new_full((), -1))
    previous_im_start = torch.cummax(im_start_positions, dim=-1).values.clamp_min(0)
    role_token_ids = prompt_ids.gather(1, (previous_im_start + 1).clamp_max(sequence_length - 1))
    user_mask = role_token_ids == config.user_token_id
    multimodal_mask = (
        (sequence == config.thinker_config.audio_token_id)
        | (sequence == config.thinker_config.image_token_id)
        | (sequence == config.thinker_config.video_token_id)
    )
    user_embeds = model._get_talker_user_parts(0, sequence_length, multimodal_mask, thinker_hidden, thinker_embed)
    user_embeds, user_ids = user_embeds[user_mask].unsqueeze(0), prompt_ids[user_mask].unsqueeze(0)

    assistant_start_mask = (prompt_ids[:, :-1] == config.im_start_token_id) & (
        prompt_ids[:, 1:] == config.assistant_token_id
    )
    assistant_start_index = torch.nonzero(assistant_start_mask[0], as_tuple=False).flatten()[-1].item()
    special_tokens = torch.tensor(
        [[config.tts_bos_token_id, config.tts_eos_token_id, config.tts_pad_token_id]], device=prompt_ids.device
    )
    tts_bos_embed, tts_eos_embed, tts_pad_embed = model.talker.text_projection(
        model.thinker.get_input_embeddings()(special_tokens)
    ).chunk(3, dim=1)
    assistant_embeds, assistant_ids, trailing_text_hidden = model._get_talker_assistant_parts(
        assistant_start_index,
        sequence.shape[1],
        speaker_id,
        thinker_embed,
        tts_pad_embed,
        tts_bos_embed,
        tts_eos_embed,
    )
    inputs_embeds = torch.cat((user_embeds, assistant_embeds), dim=1)
    talker_input_ids = torch.cat((user_ids, assistant_ids), dim=1)
    return inputs_embeds, talker_input_ids, trailing_text_hidden, tts_pad_embed


def codec_frame_embeds(talker: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """`(T, D)`: per frame, the sum of its codes' embeddings, as the Talker's `prepare_inputs_for_generation` does
    (codebook 0 by the Talker's `codec_embedding`, codebook `j` by `code_predictor.codec_embedding[j - 1]`)."""
    predictor_embeddings = talker.code_predictor.get_input_embeddings()
    parts = [talker.get_input_embeddings()(codes[:, :1])]
    parts += [predictor_embeddings[j - 1](codes[:, j : j + 1]) for j in range(1, codes.shape[1])]
    return torch.cat(parts, dim=1).sum(1)


@dataclass
class TalkerSequence:
    """One clip's teacher-forced Talker input: `inputs_embeds (N + T, D)`, `talker_input_ids (N + T,)`, `labels
    (N + T,)` (codebook 0 of the next frame, `codec_eos` after the last, -100 elsewhere) and the `codes (T, G)`;
    `preserved` for a preserved speaker's base codes (their loss is kept apart)."""

    inputs_embeds: torch.Tensor
    talker_input_ids: torch.Tensor
    labels: torch.Tensor
    codes: torch.Tensor
    preserved: bool = False


def build_talker_sequence(
    model: Qwen3OmniMoeForConditionalGeneration,
    prompt_ids: torch.Tensor,
    sequence: torch.Tensor,
    thinker_embed: torch.Tensor,
    thinker_hidden: torch.Tensor,
    speaker_id: int,
    codes: torch.Tensor,
    next_code: int | None = None,
    preserved: bool = False,
) -> TalkerSequence:
    """The Talker's whole teacher-forced input for one clip: [`talker_prompt_embeds`] followed by one step per codec
    frame (the frame's code embeddings plus the trailing text embedding the step consumes). After the last frame the
    Talker is taught `codec_eos`, or `next_code` (codebook 0 of the frame after, for speech cut short)."""
    config = model.config
    prompt_embeds, prompt_talker_ids, trailing_text_hidden, tts_pad_embed = talker_prompt_embeds(
        model, prompt_ids, sequence, thinker_embed, thinker_hidden, speaker_id
    )
    num_frames = codes.shape[0]
    text_per_step = trailing_text_hidden[0, :num_frames]
    if num_frames > text_per_step.shape[0]:
        padding = tts_pad_embed[0].expand(num_frames - text_per_step.shape[0], -1)
        text_per_step = torch.cat((text_per_step, padding), dim=0)
    step_embeds = codec_frame_embeds(model.talker, codes) + text_per_step
    inputs_embeds = torch.cat((prompt_embeds[0], step_embeds), dim=0)
    prompt_length = prompt_embeds.shape[1]
    talker_input_ids = torch.cat(
        (prompt_talker_ids[0], prompt_talker_ids.new_full((num_frames,), config.tts_pad_token_id))
    )
    labels = torch.full_like(talker_input_ids, IGNORE_INDEX)
    labels[prompt_length - 1 : prompt_length - 1 + num_frames] = codes[:, 0]
    labels[prompt_length - 1 + num_frames] = (
        config.talker_config.codec_eos_token_id if next_code is None else next_code
    )
    return TalkerSequence(inputs_embeds, talker_input_ids, labels, codes, preserved)


@dataclass
class TalkerVoiceOutput:
    loss: torch.Tensor
    talker_loss: torch.Tensor
    code_predictor_loss: torch.Tensor
    talker_logits: torch.Tensor
    """`(B, L, vocab)` the Talker's `codec_head` logits at every position."""
    code_predictor_logits: torch.Tensor
    """`(num_frames, G - 1, codebook)` the code predictor's logits for codebooks 1..G-1 of every frame, batch-major."""
    preserve_talker_loss: torch.Tensor | None = None
    """The two cross-entropies on the preserved speakers' rows (None when the batch has none)."""
    preserve_code_predictor_loss: torch.Tensor | None = None


def _group_means(losses: torch.Tensor, preserved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean of `losses` over the new voice's entries and over the preserved speakers' (None when there are none)."""
    voice = losses[~preserved].mean() if (~preserved).any() else losses.new_zeros(())
    return voice, losses[preserved].mean() if preserved.any() else None


def _kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Per position `KL(reference || model)` over the last dimension."""
    reference = F.log_softmax(reference_logits.float(), dim=-1)
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), reference, log_target=True, reduction="none").sum(-1)


def _code_predictor_logits_and_losses(
    talker: nn.Module, last_hidden: torch.Tensor, frame_positions: list[torch.Tensor], codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The code predictor teacher-forced on every frame: `(frames, G - 1, codebook)` logits for codebooks 1..G-1 and
    their cross-entropies. The hidden state that predicted a frame's codebook 0 conditions the code predictor for
    that frame: `frame_positions`, each row's labelled positions but its last (which predicts codec_eos)."""
    frame_hidden = torch.cat([last_hidden[row, positions] for row, positions in enumerate(frame_positions)])
    code_predictor = talker.code_predictor
    predictor_embeddings = code_predictor.get_input_embeddings()
    num_groups = codes.shape[1]
    predictor_inputs = [frame_hidden[:, None], talker.get_input_embeddings()(codes[:, :1])]
    predictor_inputs += [predictor_embeddings[j - 1](codes[:, j : j + 1]) for j in range(1, num_groups - 1)]
    if codes.shape[0]:
        predictor_hidden = code_predictor.model(inputs_embeds=torch.cat(predictor_inputs, dim=1)).last_hidden_state
        predictor_logits = torch.stack(
            [code_predictor.lm_head[j - 1](predictor_hidden[:, j]) for j in range(1, num_groups)], dim=1
        )
    else:  # a batch of preserved rows whose base speech all ends at once (the KL reference): no frame to predict
        predictor_logits = frame_hidden.new_zeros((0, num_groups - 1, code_predictor.config.vocab_size))
    predictor_losses = F.cross_entropy(
        predictor_logits.flatten(0, 1).float(), codes[:, 1:].flatten(), reduction="none"
    ).view(codes.shape[0], num_groups - 1)
    return predictor_logits, predictor_losses


def talker_voice_forward(
    model: Qwen3OmniMoeForConditionalGeneration,
    sequences: list[TalkerSequence],
    preserve_weight: float = 1.0,
    reference: TalkerVoiceOutput | None = None,
) -> TalkerVoiceOutput:
    """Forward the Talker and the code predictor on a batch of teacher-forced clips (right-padded) and compute both
    cross-entropies (mean over the predicted codes of the batch): over the new voice's clips, and apart over the
    preserved speakers' rows, which add `preserve_weight` times theirs to the loss. With `reference` (this forward
    of the frozen base on the preserved rows alone, in their order) the preserved rows' losses are the KL divergences
    from the base's distributions instead of cross-entropies on their codes."""
    talker = model.talker
    device = sequences[0].inputs_embeds.device
    # right-padded batch (TRL's pad, as the collators)
    inputs_embeds = pad([sequence.inputs_embeds for sequence in sequences])
    attention_mask = pad([torch.ones_like(sequence.labels) for sequence in sequences])
    labels = pad([sequence.labels for sequence in sequences], padding_value=IGNORE_INDEX)
    talker_input_ids = pad(
        [sequence.talker_input_ids for sequence in sequences], padding_value=model.config.tts_pad_token_id
    )
    outputs = talker(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        talker_input_ids=talker_input_ids,
        output_hidden_states=True,
        use_cache=False,
    )
    logits = outputs.logits
    target = labels != IGNORE_INDEX
    preserved_rows = torch.tensor([sequence.preserved for sequence in sequences], device=device)
    token_preserved = preserved_rows[:, None].expand_as(labels)[target]
    token_losses = F.cross_entropy(logits[target].float(), labels[target], reduction="none")
    if reference is not None:
        reference_target = torch.zeros(reference.talker_logits.shape[:2], dtype=torch.bool, device=device)
        for row, sequence in enumerate(sequence for sequence in sequences if sequence.preserved):
            reference_target[row, : len(sequence.labels)] = sequence.labels != IGNORE_INDEX
        token_losses = token_losses.clone()
        token_losses[token_preserved] = _kl_to_reference(
            logits[target][token_preserved], reference.talker_logits[reference_target]
        )
    talker_loss, preserve_talker_loss = _group_means(token_losses, token_preserved)

    frame_positions = [torch.nonzero(target[row]).flatten()[:-1] for row in range(len(sequences))]
    codes = torch.cat([sequence.codes for sequence in sequences]).to(device)
    predictor_logits, predictor_losses = _code_predictor_logits_and_losses(
        talker, outputs.hidden_states[0][-1], frame_positions, codes
    )
    frame_preserved = torch.cat(
        [preserved_rows[row].expand(len(positions)) for row, positions in enumerate(frame_positions)]
    )
    if reference is not None:
        predictor_losses = predictor_losses.clone()
        predictor_losses[frame_preserved] = _kl_to_reference(
            predictor_logits[frame_preserved], reference.code_predictor_logits
        )
    code_predictor_loss, preserve_code_predictor_loss = _group_means(
        predictor_losses, frame_preserved[:, None].expand_as(predictor_losses)
    )
    loss = talker_loss + code_predictor_loss
    # a preserved row whose base speech ends at once (codec_eos only) has no frame for the code predictor
    preserve_losses = [part for part in (preserve_talker_loss, preserve_code_predictor_loss) if part is not None]
    if preserve_losses:
        loss = loss + preserve_weight * sum(preserve_losses)
    return TalkerVoiceOutput(
        loss=loss,
        talker_loss=talker_loss,
        code_predictor_loss=code_predictor_loss,
        talker_logits=logits,
        code_predictor_logits=predictor_logits,
        preserve_talker_loss=preserve_talker_loss,
        preserve_code_predictor_loss=preserve_code_predictor_loss,
    )
