# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Build a new Omni checkpoint: a Qwen3-family LM (pretrained or from scratch) + tokenizer + SNAC codec."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast
from transformers.utils import logging

from ..configuration_omni import OmniConfig
from ..configuration_snac import SNACTokenLayout
from ..feature_extraction_omni import SNACFeatureExtractor
from ..modeling_omni import OmniForCausalLM
from ..modeling_snac import SNACAudioTokenizer
from ..processing_omni import PAD_TOKEN, SPECIAL_TOKENS, OmniProcessor, load_audio_tokenizer


logger = logging.get_logger(__name__)

EOS_TOKEN = "<|endoftext|>"
# Sampling defaults for speech: Orpheus' users found repetition_penalty >= 1.1 necessary against loops.
SPEECH_GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.1}
SUPPORTED_TEXT_MODEL_TYPES = ("qwen3", "omni")
# positions the default `max_new_tokens` leaves for the prompt (a sentence of text-to-speech is well under this)
PROMPT_RESERVE_TOKENS = 256


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer on `texts` (for tiny models and tests that must not download one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN)


def add_omni_tokens(tokenizer) -> None:
    """Add the Omni special tokens, and an EOS and a pad token when the tokenizer lacks them."""
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": EOS_TOKEN})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    new_tokens = [token for token in SPECIAL_TOKENS.values() if token not in tokenizer.get_vocab()]
    tokenizer.add_tokens(new_tokens, special_tokens=True)


def _vocab_size(layout: SNACTokenLayout, pad_to_multiple_of: int | None) -> int:
    if not pad_to_multiple_of:
        return layout.vocab_end
    return -(-layout.vocab_end // pad_to_multiple_of) * pad_to_multiple_of


def _codec_processor(tokenizer, codec: str | os.PathLike, model_max_length: int | None = None) -> OmniProcessor:
    """The processor of a new checkpoint: `tokenizer` (Omni tokens added) and the SNAC codec at `codec`."""
    audio_tokenizer = load_audio_tokenizer(codec)
    feature_extractor = SNACFeatureExtractor(sampling_rate=audio_tokenizer.config.sampling_rate)
    return OmniProcessor(
        feature_extractor, tokenizer, audio_tokenizer, model_max_length=model_max_length, codec_name_or_path=str(codec)
    )


def _omni_fields(
    tokenizer, audio_tokenizer: SNACAudioTokenizer, text_loss_weight: float, audio_loss_weight: float
) -> dict:
    """The OmniConfig fields that describe the vocabulary and the codec (the layout: codec settings, and audio ids
    after the tokenizer's)."""
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL_TOKENS.items()}
    codec = audio_tokenizer.config
    return {
        "audio_token_offset": len(tokenizer),
        "codebook_size": codec.codebook_size,
        "vq_strides": list(codec.vq_strides),
        "codec_sampling_rate": codec.sampling_rate,
        "codec_hop_length": codec.hop_length,
        "tts_token_id": ids["tts_token_id"],
        "asr_token_id": ids["asr_token_id"],
        "text_start_token_id": ids["text_start_token_id"],
        "text_end_token_id": ids["text_end_token_id"],
        "audio_start_token_id": ids["audio_start_token_id"],
        "audio_end_token_id": ids["audio_end_token_id"],
        "text_loss_weight": text_loss_weight,
        "audio_loss_weight": audio_loss_weight,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }


def build_generation_config(config: OmniConfig) -> GenerationConfig:
    """
    Speech-friendly generation defaults: stop at audio-end, text-end or EOS; sampling as Orpheus recommends; at most
    600 frames (51 s with the 24 kHz codec) and never more whole frames than fit in the model's positions after a
    prompt of `PROMPT_RESERVE_TOKENS`.
    """
    tokens_per_frame = config.token_layout.tokens_per_frame
    max_frames = min(600, (config.max_position_embeddings - PROMPT_RESERVE_TOKENS) // tokens_per_frame)
    return GenerationConfig(
        eos_token_id=[config.audio_end_token_id, config.text_end_token_id, config.eos_token_id],
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        max_new_tokens=tokens_per_frame * max(1, max_frames),
        **SPEECH_GENERATION_DEFAULTS,
    )


def build_omni_from_text_model(
    text_model: str | os.PathLike,
    codec: str | os.PathLike,
    tokenizer: str | os.PathLike | PreTrainedTokenizerFast | None = None,
    text_loss_weight: float = 1.0,
    audio_loss_weight: float = 1.0,
    pad_vocab_to_multiple_of: int | None = 64,
    torch_dtype: str | torch.dtype = "auto",
) -> tuple[OmniForCausalLM, OmniProcessor]:
    """
    Turn a pretrained Qwen3-family causal LM into an Omni model.

    The tokenizer gains the Omni special tokens, the embeddings and head grow to hold them and the audio blocks:
    the original text rows are kept bit for bit and the new rows are drawn around the mean of the old ones
    (transformers' `mean_resizing`), so the model's text behaviour is unchanged.

    Args:
        text_model: Hub id or local folder of a Qwen3-family causal LM (`model_type` `qwen3`).
        codec: Hub id or local folder of a SNAC codec (e.g. `hubertsiuzdak/snac_24khz`) or of an Omni processor.
        tokenizer: the tokenizer (object, Hub id or folder); defaults to `text_model`'s.
        text_loss_weight, audio_loss_weight: the loss weights stored in the config.
        pad_vocab_to_multiple_of: round the vocabulary up (unused ids at the end) for faster matmuls.
        torch_dtype: dtype to load the LM in.
    """
    source_config = AutoConfig.from_pretrained(text_model)
    if source_config.model_type not in SUPPORTED_TEXT_MODEL_TYPES:
        raise ValueError(
            f"{text_model} is a {source_config.model_type!r} model; init_model builds Omni models from Qwen3-family "
            f"causal LMs (model_type in {SUPPORTED_TEXT_MODEL_TYPES}), e.g. Qwen/Qwen3-0.6B. Use --from-scratch for "
            "a new model with another tokenizer."
        )
    if not isinstance(tokenizer, PreTrainedTokenizerFast) and not hasattr(tokenizer, "get_vocab"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or text_model)
    add_omni_tokens(tokenizer)
    if len(tokenizer) < source_config.vocab_size:
        # The LM's embedding rows past the tokenizer (Qwen3 pads its vocabulary) stay text ids, named so that
        # audio ids start right after the tokenizer, as everywhere else.
        reserved = [f"<|reserved_{i}|>" for i in range(source_config.vocab_size - len(tokenizer))]
        tokenizer.add_tokens(reserved, special_tokens=True)
    processor = _codec_processor(tokenizer, codec, model_max_length=source_config.max_position_embeddings)

    text_lm = AutoModelForCausalLM.from_pretrained(text_model, dtype=torch_dtype)
    vocab_size = _vocab_size(processor.token_layout, pad_vocab_to_multiple_of)
    text_lm.resize_token_embeddings(vocab_size, mean_resizing=True)

    config_fields = {
        key: value for key, value in text_lm.config.to_dict().items() if key in OmniConfig.__dataclass_fields__
    }
    config_fields.update(_omni_fields(tokenizer, processor.audio_tokenizer, text_loss_weight, audio_loss_weight))
    config_fields["vocab_size"] = vocab_size
    config = OmniConfig(**config_fields)
    with torch.device("meta"):
        model = OmniForCausalLM(config)
    model.load_state_dict(text_lm.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = build_generation_config(config)
    return model, processor


def build_omni_from_scratch(
    tokenizer: str | os.PathLike | PreTrainedTokenizerFast,
    codec: str | os.PathLike,
    hidden_size: int = 128,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    head_dim: int | None = None,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = True,
    text_loss_weight: float = 1.0,
    audio_loss_weight: float = 1.0,
    pad_vocab_to_multiple_of: int | None = 64,
    seed: int = 0,
) -> tuple[OmniForCausalLM, OmniProcessor]:
    """
    A randomly initialised Omni model of the given size around any tokenizer and a SNAC codec. The defaults are the
    qwen-omni seed's tiny model (d_model 128, 4 heads, 3 layers).
    """
    if not isinstance(tokenizer, PreTrainedTokenizerFast) and not hasattr(tokenizer, "get_vocab"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    add_omni_tokens(tokenizer)
    processor = _codec_processor(tokenizer, codec, model_max_length=max_position_embeddings)
    if hidden_size % num_attention_heads:
        raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_attention_heads={num_attention_heads}.")
    fields = _omni_fields(tokenizer, processor.audio_tokenizer, text_loss_weight, audio_loss_weight)
    config = OmniConfig(
        vocab_size=_vocab_size(processor.token_layout, pad_vocab_to_multiple_of),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim or hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        **fields,
    )
    torch.manual_seed(seed)
    model = OmniForCausalLM(config)
    model.generation_config = build_generation_config(config)
    return model, processor


def save_omni_checkpoint(model: OmniForCausalLM, processor: OmniProcessor, output_dir: str | os.PathLike) -> None:
    """Save model, generation config, processor (tokenizer, feature extractor, audio tokenizer) and the remote-code
    files."""
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    logger.info(f"Omni checkpoint written to {output_dir}")
