# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Keeping the existing speakers: the base Talker's own greedy speech for them, as training examples."""

from __future__ import annotations

import os

import torch
from transformers import Qwen3OmniMoeForConditionalGeneration
from transformers.utils import logging

from .examples import TalkerVoiceExample, cache_thinker_outputs
from .forward import conversation_ids, talker_prompt_embeds, thinker_outputs


logger = logging.get_logger(__name__)


# The sentences the preserved speakers speak besides the new voice's transcripts (--preserve_texts replaces them):
# everyday sentences of several shapes and lengths (short replies, statements, questions, numbers, lists) in the Talker's
# two main languages. How many and how varied decides how well the kept speakers keep their speech on other sentences
# (with the 40 short statements after "Be careful on the stairs.", two runs of the test's recipe that had lost a
# speaker on unseen sentences, 0.70-0.81, kept all three at 0.95-1.0; docs/qwen3_omni.md).
PRESERVE_TEXTS = (
    "Good morning, how can I help you today?",
    "The meeting has been moved to three o'clock on Thursday afternoon.",
    "Could you tell me the way to the nearest train station?",
    "It is going to rain this evening, so take an umbrella with you.",
    "I'd like a cup of coffee with milk and no sugar, please.",
    "The total comes to forty-two dollars and fifteen cents.",
    "She opened the window and listened to the birds outside.",
    "Please remember to save your work before you close the program.",
    "Thank you very much, that was really helpful!",
    "Our flight leaves at seven thirty, so we should get there by six.",
    "Mix the flour, the eggs and the butter, then bake for twenty minutes.",
    "Why do you think the experiment failed the second time?",
    "The library is open from nine in the morning until eight at night.",
    "Let me read the first paragraph aloud for everyone.",
    "He said he would call back after lunch, but he never did.",
    "Turn left at the second traffic light and keep going straight.",
    "Yes, of course.",
    "No, not yet.",
    "See you tomorrow.",
    "What time is it?",
    "I don't know.",
    "Wait a moment, please.",
    "That sounds great.",
    "Where are you going?",
    "It is five past ten.",
    "Call me later.",
    "Is this seat free?",
    "Nice to meet you.",
    "How much is it?",
    "The door is open.",
    "Let's begin.",
    "Be careful on the stairs.",
    "The bus is late again.",
    "Please pass the salt.",
    "My phone battery is low.",
    "The kids are playing outside.",
    "He reads a book every night.",
    "Can you hear the rain?",
    "The soup is too hot.",
    "We need more paper.",
    "She sings in the choir.",
    "A small boat on the lake.",
    "The printer is out of ink.",
    "Dinner is ready.",
    "Look at the stars tonight.",
    "The train stops here.",
    "I lost my keys.",
    "The baby is asleep.",
    "Close the window, please.",
    "That was a long day.",
    "The store opens at nine.",
    "Green apples taste sour.",
    "The road is very wide.",
    "Listen to this song.",
    "The clock on the wall is slow.",
    "How old are you?",
    "The dog wants to go out.",
    "Paint the fence white.",
    "It smells like fresh bread.",
    "The room is quiet now.",
    "Count to ten slowly.",
    "A loud noise came from the street.",
    "The garden needs water.",
    "Write your name here.",
    "The movie starts soon.",
    "Snow falls in winter.",
    "He fixed the old radio.",
    "The cup is empty.",
    "Follow the signs.",
    "My brother plays the guitar.",
    "The lamp is broken.",
    "Thanks for waiting.",
    "你好，很高兴认识你。",
    "今天天气很好，我们去公园散步吧。",
    "请问这个周末你有什么安排？",
    "这本书讲的是一个关于勇气和友谊的故事。",
)


def default_preserve_batch_size(per_device_batch_size: int, num_preserved_speakers: int) -> int:
    """`--preserve_batch_size` left out: each clip of the batch balanced by one conversation spoken by every kept
    speaker (with as many preserved examples as clips, the kept speakers lost their speech even on the preserved
    conversations; docs/qwen3_omni.md)."""
    return per_device_batch_size * num_preserved_speakers


def read_preserve_texts(path: str | os.PathLike | None) -> list[str]:
    """The `--preserve_texts` file's sentences (one a line, blank lines skipped), or [`PRESERVE_TEXTS`] without one.

    Raises:
        `ValueError` when the file holds no sentence.
    """
    if path is None:
        return list(PRESERVE_TEXTS)
    with open(path, encoding="utf-8") as handle:
        texts = [line.strip() for line in handle if line.strip()]
    if not texts:
        raise ValueError(f"--preserve_texts {path} holds no sentence: write one sentence a line, or leave it out.")
    return texts


@torch.no_grad()
def talker_greedy_codes(
    model: Qwen3OmniMoeForConditionalGeneration,
    example: TalkerVoiceExample,
    speaker_codec_ids: list[int],
    max_frames: int,
) -> list[tuple[torch.Tensor, int | None]]:
    """The codes the Talker speaks greedily for the example's conversation as each of `speaker_codec_ids`: what
    `generate(..., speaker=NAME, talker_do_sample=False, talker_repetition_penalty=1.0)` hands to code2wav when its
    Thinker says the example's answer, at most `max_frames` frames. The speakers are one batch: their prompts differ
    only in the speaker's id, so they have one length and no padding.

    Returns:
        Per speaker, `(codes (T, G), next_code)`: `next_code` is codebook 0 of the frame after the last when the speech
        was cut at `max_frames`, None when the Talker ended it (`codec_eos`).
    """
    device = model.talker.device
    sequence = example.sequence[None].to(device)
    if example.thinker_embed is None:
        thinker_embed, thinker_hidden = thinker_outputs(model, sequence)
    else:
        thinker_embed, thinker_hidden = example.thinker_embed[None].to(device), example.thinker_hidden[None].to(device)
    prompts = [
        talker_prompt_embeds(
            model, example.prompt_ids[None].to(device), sequence, thinker_embed, thinker_hidden, codec_id
        )
        for codec_id in speaker_codec_ids
    ]
    inputs_embeds, talker_input_ids, trailing_text_hidden, tts_pad_embed = (torch.cat(part) for part in zip(*prompts))
    talker_config = model.config.talker_config
    vocab_size = talker_config.text_config.vocab_size
    eos = talker_config.codec_eos_token_id
    # generate's Talker call (transformers 5.23), greedy; one more step than frames: its code 0 is `next_code`
    result = model.talker.generate(
        inputs_embeds=inputs_embeds,
        trailing_text_hidden=trailing_text_hidden,
        tts_pad_embed=tts_pad_embed,
        talker_input_ids=talker_input_ids,
        attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=device),
        max_new_tokens=max_frames + 1,
        do_sample=False,
        repetition_penalty=1.0,
        eos_token_id=eos,
        pad_token_id=eos,
        suppress_tokens=[index for index in range(vocab_size - 1024, vocab_size) if index != eos],
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    # step k's residual codes are frame k - 1's (the prefill has none); a row that ended goes on with padding
    frames = [hidden[-1] for hidden in result.hidden_states if hidden[-1] is not None]
    if frames:
        codes = torch.stack(frames, dim=1).cpu()
    else:  # codec_eos first in every row: no speech
        codes = torch.empty((len(speaker_codec_ids), 0, talker_config.num_code_groups), dtype=torch.long)
    spoken = []
    for row, tokens in enumerate(result.sequences.tolist()):
        if eos in tokens:  # the Talker ended this row's speech: its frames are those before codec_eos
            spoken.append((codes[row, : tokens.index(eos)], None))
        else:
            spoken.append((codes[row], tokens[-1]))
    return spoken


def build_preserve_examples(
    model: Qwen3OmniMoeForConditionalGeneration,
    processor,
    voice_examples: list[TalkerVoiceExample],
    texts: list[str],
    speakers: dict[str, int],
    max_frames: int,
    user_prompt_template: str = "Read this aloud: {text}",
    system_prompt: str | None = None,
) -> list[TalkerVoiceExample]:
    """The preserved speakers' examples: each of `speakers` speaking each voice clip's conversation and each of
    `texts` (as `user_prompt_template` asks for it) with the base Talker's own greedy codes ([`talker_greedy_codes`]),
    ordered conversation by conversation (every speaker on one conversation, then the next). Run on the base, before
    the adapter; the Thinker's outputs are cached on the examples when the voice examples have theirs."""
    conversations = [(example.prompt_ids, example.sequence, example) for example in voice_examples]
    for text in texts:
        prompt_ids, answer_ids = conversation_ids(processor, text, None, user_prompt_template, system_prompt)
        conversations.append((torch.tensor(prompt_ids), torch.tensor(prompt_ids + answer_ids), None))
    cache = bool(voice_examples) and voice_examples[0].thinker_embed is not None
    codec_ids = list(speakers.values())
    examples = []
    for prompt_ids, sequence, voice_example in conversations:
        conversation = TalkerVoiceExample(prompt_ids, sequence, codes=torch.empty(0, dtype=torch.long))
        if voice_example is not None:
            conversation.thinker_embed, conversation.thinker_hidden = (
                voice_example.thinker_embed,
                voice_example.thinker_hidden,
            )
        elif cache:
            cache_thinker_outputs(model, [conversation])
        for codec_id, (codes, next_code) in zip(
            codec_ids, talker_greedy_codes(model, conversation, codec_ids, max_frames)
        ):
            examples.append(
                TalkerVoiceExample(
                    prompt_ids,
                    sequence,
                    codes,
                    conversation.thinker_embed,
                    conversation.thinker_hidden,
                    speaker_codec_id=codec_id,
                    next_code=next_code,
                )
            )
    logger.info(
        f"Preserved speakers {sorted(speakers)}: {len(examples)} examples of the base Talker's greedy codes "
        f"({len(conversations)} conversations, {sum(len(example.codes) for example in examples)} frames)."
    )
    return examples
