# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Teach Qwen3-Omni's Talker a voice: LoRA on the Talker and its code predictor, teacher-forced exactly as
`Qwen3OmniMoeForConditionalGeneration.generate` (transformers 5.23) runs them.

How `generate` feeds the Talker, and how training rebuilds it for a clip (prompt, transcript, Mimi codes `(T, 16)`):

- The Thinker reads the conversation `prompt + transcript + <|im_end|>` (here in one teacher-forced, gradient-free
  forward: what `generate` sees when the Thinker says exactly the transcript). Its input embeddings
  (`hidden_states[0]`) and its `accept_hidden_layer` hidden states feed the Talker.
- The user turn: multimodal positions through `talker.hidden_projection` of the hidden states, text positions through
  `talker.text_projection` of the embeddings (transformers' `_get_talker_user_parts`).
- The assistant turn (transformers' `_get_talker_assistant_parts`): `<|im_start|>assistant\\n`, then `tts_pad` x 4 +
  `tts_bos` + the first text token, added to the codec ids `nothink, think_bos, think_eos, <speaker>, pad, bos`.
- Codec step `i` (frame `i` of the clip): the sum of the embeddings of frame `i`'s 16 codes (codebook 0 through the
  Talker's `codec_embedding`, codebook `j` through the code predictor's `codec_embedding[j - 1]`) plus the `i`-th
  trailing text embedding (text token `i + 1`, then `tts_eos`, then `tts_pad` once the text is spent).
- The Talker's `codec_head` at the last prompt position predicts codebook 0 of frame 0, at step `i` that of frame
  `i + 1`, and at the last step `codec_eos`.
- The code predictor, for frame `i`: inputs `[talker hidden state that predicted frame i, embedding of code 0,
  code_predictor.codec_embedding[j - 1](code j) for j = 1..14]`; `lm_head[j - 1]` at position `j` predicts code `j`.

The loss is the cross-entropy of both heads, logged separately (`talker_loss`, `code_predictor_loss`). The Thinker is
frozen and runs without gradients; its outputs can be computed once per clip ([`cache_thinker_outputs`]).

One concern per module: `arguments`, `loading`, `speakers` (the registry and the files beside an adapter), `lora`,
`forward` (the teacher-forced input and the losses), `data` (Mimi codes of the clips, cached), `examples`,
`preservation` (the existing speakers' own speech) and `trainer`.
"""

from .arguments import (
    PRESERVE_LOSSES,
    VOICE_PRESERVATION_NAME,
    TalkerVoiceArguments,
)
from .examples import (
    TalkerVoiceExample,
    adapters_disabled,
    build_examples,
    cache_thinker_outputs,
    collate_talker_voice,
    talker_voice_examples_forward,
)
from .forward import (
    TalkerSequence,
    TalkerVoiceOutput,
    build_talker_sequence,
    codec_frame_embeds,
    conversation_ids,
    talker_prompt_embeds,
    talker_voice_forward,
    thinker_outputs,
)
from .loading import (
    UNQUANTIZED_MODULES,
    check_has_talker,
    load_talker_model,
)
from .lora import (
    CODE_PREDICTOR_MLP_WEIGHTS,
    CODE_PREDICTOR_PREFIX,
    CODE_PREDICTOR_PROJECTIONS,
    CODEC_EMBEDDING,
    TALKER_PREFIX,
    RoutableTalkerExperts,
    build_talker_lora_config,
    make_talker_experts_routable,
)
from .preservation import (
    PRESERVE_TEXTS,
    build_preserve_examples,
    default_preserve_batch_size,
    read_preserve_texts,
    talker_greedy_codes,
)
from .speakers import (
    add_speaker,
    read_talker_voice_config,
    read_voice_preservation,
    resolve_preserved_speakers,
    resolve_speaker,
    speaker_key,
    write_talker_voice_config,
    write_voice_preservation,
)
from .trainer import (
    TalkerVoiceModel,
    TalkerVoiceTrainer,
)


__all__ = [
    "CODEC_EMBEDDING",
    "CODE_PREDICTOR_MLP_WEIGHTS",
    "CODE_PREDICTOR_PREFIX",
    "CODE_PREDICTOR_PROJECTIONS",
    "PRESERVE_LOSSES",
    "PRESERVE_TEXTS",
    "RoutableTalkerExperts",
    "TALKER_PREFIX",
    "TalkerSequence",
    "TalkerVoiceArguments",
    "TalkerVoiceExample",
    "TalkerVoiceModel",
    "TalkerVoiceOutput",
    "TalkerVoiceTrainer",
    "UNQUANTIZED_MODULES",
    "VOICE_PRESERVATION_NAME",
    "adapters_disabled",
    "add_speaker",
    "build_examples",
    "build_preserve_examples",
    "default_preserve_batch_size",
    "build_talker_lora_config",
    "build_talker_sequence",
    "cache_thinker_outputs",
    "check_has_talker",
    "codec_frame_embeds",
    "collate_talker_voice",
    "conversation_ids",
    "load_talker_model",
    "make_talker_experts_routable",
    "read_preserve_texts",
    "read_talker_voice_config",
    "read_voice_preservation",
    "resolve_preserved_speakers",
    "resolve_speaker",
    "speaker_key",
    "talker_greedy_codes",
    "talker_prompt_embeds",
    "talker_voice_examples_forward",
    "talker_voice_forward",
    "thinker_outputs",
    "write_talker_voice_config",
    "write_voice_preservation",
]
