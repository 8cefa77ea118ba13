"""Builders for a tiny random Qwen3-Omni checkpoint (thinker + talker + code2wav) and its processor, for offline tests
and benchmarks.

Nothing here downloads: the tokenizer is a small BPE trained on the spot with the Qwen3-Omni special tokens, the image,
video and audio processors are the real classes with small sizes, and the model is `Qwen3OmniMoeForConditionalGeneration`
built from a tiny `Qwen3OmniMoeConfig`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    MimiConfig,
    MimiModel,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3OmniMoeConfig,
    Qwen3OmniMoeForConditionalGeneration,
    Qwen3OmniMoeProcessor,
    Qwen3OmniMoeTextConfig,
    WhisperFeatureExtractor,
)
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel


# Named tokens the processor reads as tokenizer attributes, with the Qwen3-Omni strings.
NAMED_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    *NAMED_TOKENS.values(),
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
]

# A stand-in for the real checkpoints' chat template with the behaviours training depends on: a part's kind by key
# presence, and `<think>` dropped from list-form replies (see the file's header).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_chat_template.jinja")) as f:
    CHAT_TEMPLATE = f.read()

CORPUS = [
    "system user assistant You are a helpful assistant.",
    "What do you hear? A dog barks twice. What do you see? A red square on white.",
    "Describe the sound in detail. The clip holds a steady tone, then silence.",
    "Think step by step. <think> two plus two is four </think> The answer is four.",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
    # The role names after `<|im_start|>` are single tokens in Qwen's vocabulary, and the Talker's prompt layout in
    # `generate` relies on it (`<|im_start|>assistant\n` is 3 tokens): make them frequent enough to merge whole.
    "system\nuser\nassistant\n" * 16,
]


# The tiny codec: 16 codebooks of 32 codes (Qwen3-Omni: 16 of Mimi's 32 codebooks, 2048 codes), 80 samples a frame.
TINY_NUM_CODEBOOKS = 16
TINY_CODEBOOK_SIZE = 32


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE of a few hundred tokens carrying every Qwen3-Omni special token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(NAMED_TOKENS),
        padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen3OmniMoeProcessor:
    """The real `Qwen3OmniMoeProcessor` around small image/video processors and a Whisper feature extractor."""
    tokenizer = tokenizer or build_tokenizer()
    pixels = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    image_processor = Qwen2VLImageProcessor(size=pixels, patch_size=16, temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(size=pixels, patch_size=16, temporal_patch_size=2, merge_size=2)
    feature_extractor = WhisperFeatureExtractor(feature_size=128)
    return Qwen3OmniMoeProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(
    tokenizer: PreTrainedTokenizerFast,
    enable_audio_output: bool = True,
    talker_hidden_size: int = 16,
    talker_num_hidden_layers: int = 1,
) -> Qwen3OmniMoeConfig:
    """A Qwen3-Omni config with every size shrunk (2 layers, 8 experts, top-2) and token ids from `tokenizer`. The
    Talker and its code predictor are `talker_num_hidden_layers` (code predictor: 1) layers of `talker_hidden_size`,
    with heads of 8 (at 16) or 16 dimensions and the other widths in proportion."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in NAMED_TOKENS.items()}
    vocab_size = len(tokenizer)
    hidden = 32
    word_id = lambda word: tokenizer.encode(word, add_special_tokens=False)[0]  # noqa: E731
    thinker_config = {
        "audio_config": {
            "num_mel_bins": 128,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "d_model": 16,
            "output_dim": hidden,
            "downsample_hidden_size": 8,
            "n_window": 50,
            "n_window_infer": 100,
            "max_source_positions": 200,
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        "text_config": {
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "moe_intermediate_size": 16,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [1, 1, 2],
                "interleaved": True,
            },
            "pad_token_id": tokenizer.pad_token_id,
        },
        "audio_token_id": ids["audio_token"],
        "image_token_id": ids["image_token"],
        "video_token_id": ids["video_token"],
        "audio_start_token_id": ids["audio_bos_token"],
        "vision_start_token_id": ids["vision_bos_token"],
        "user_token_id": word_id("user"),
    }
    # The talker speaks the codes of a tiny Mimi (see `build_mimi_config`): 16 codebooks of 32 codes, one frame per
    # 80 samples at 24 kHz. As in the real checkpoint, the talker's vocabulary is the codebook followed by 1024
    # special ids (`generate` suppresses the last 1024 ids except `codec_eos`), with the specials and speakers at
    # the real offsets from the codebook size (2048 + 100.. and 2048 + 253.. in Qwen3-Omni-30B-A3B).
    codebook = TINY_CODEBOOK_SIZE
    talker_heads = max(2, talker_hidden_size // 16)
    talker_widths = {  # the code predictor embeds the Talker's codes at the Talker's width
        "hidden_size": talker_hidden_size,
        "intermediate_size": 2 * talker_hidden_size,
        "num_attention_heads": talker_heads,
        "num_key_value_heads": talker_heads // 2,
        "head_dim": talker_hidden_size // talker_heads,
    }
    half_head = talker_widths["head_dim"] // 2
    talker_config = {
        "text_config": {
            "vocab_size": codebook + 1024,
            **talker_widths,
            "num_hidden_layers": talker_num_hidden_layers,
            "moe_intermediate_size": talker_hidden_size // 2,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "shared_expert_intermediate_size": talker_hidden_size,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [half_head // 4, half_head // 4, half_head // 2],
                "interleaved": True,
            },
        },
        "code_predictor_config": {
            "vocab_size": codebook,
            **talker_widths,
            "num_hidden_layers": 1,
            "num_code_groups": TINY_NUM_CODEBOOKS,
        },
        "num_code_groups": TINY_NUM_CODEBOOKS,
        "thinker_hidden_size": hidden,
        "accept_hidden_layer": 1,
        "spatial_merge_size": 2,
        "codec_pad_id": codebook + 100,
        "codec_bos_id": codebook + 101,
        "codec_eos_token_id": codebook + 102,
        "codec_nothink_id": codebook + 107,
        "codec_think_bos_id": codebook + 108,
        "codec_think_eos_id": codebook + 109,
        "speaker_id": {"chelsie": codebook + 253, "ethan": codebook + 254, "aiden": codebook + 255},
        "audio_token_id": ids["audio_token"],
        "image_token_id": ids["image_token"],
        "video_token_id": ids["video_token"],
        "vision_start_token_id": ids["vision_bos_token"],
        "audio_start_token_id": ids["audio_bos_token"],
    }
    code2wav_config = {
        "codebook_size": codebook,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_quantizers": TINY_NUM_CODEBOOKS,
        "upsample_rates": [4, 5],
        "upsampling_ratios": [2, 2],
        "decoder_dim": 16,
        "sliding_window": 8,
    }
    return Qwen3OmniMoeConfig(
        thinker_config=thinker_config,
        talker_config=talker_config,
        code2wav_config=code2wav_config,
        enable_audio_output=enable_audio_output,
        im_start_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        im_end_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tts_pad_token_id=tokenizer.convert_tokens_to_ids("<tts_pad>"),
        tts_bos_token_id=tokenizer.convert_tokens_to_ids("<tts_text_bos>"),
        tts_eos_token_id=tokenizer.convert_tokens_to_ids("<tts_text_eod>"),
        system_token_id=word_id("system"),
        user_token_id=word_id("user"),
        assistant_token_id=word_id("assistant"),
    )


def tiny_moe_text_model(
    hidden_size: int,
    moe_intermediate_size: int,
    head_dim: int,
    num_layers: int = 2,
    num_experts: int = 8,
    experts_implementation: str = "eager",
) -> Qwen3OmniMoeThinkerTextModel:
    """A tiny random Thinker text model (MoE in every layer, 4 heads, top-2 routing), seeded, with every weight drawn
    from N(0, 0.2): visible weights (the default init leaves the router at zero, i.e. a tie for every token)."""
    config = Qwen3OmniMoeTextConfig(
        vocab_size=64,
        hidden_size=hidden_size,
        intermediate_size=64,
        moe_intermediate_size=moe_intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        num_experts=num_experts,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    torch.manual_seed(0)
    model = Qwen3OmniMoeThinkerTextModel(config)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    model.set_experts_implementation(experts_implementation)
    return model


def build_mimi_config(num_quantizers: int = 32, codebook_size: int = TINY_CODEBOOK_SIZE, **overrides) -> MimiConfig:
    """A tiny random Mimi matching the tiny talker: 24 kHz, 80 samples (2 * 5 * 4 * 2) per frame like the tiny
    code2wav's upsampling, `num_quantizers` codebooks (the talker takes the first 16) of `codebook_size` codes."""
    values = dict(
        sampling_rate=24000,
        hidden_size=64,
        num_filters=8,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=16,
        num_key_value_heads=4,
        intermediate_size=128,
        codebook_dim=32,
        vector_quantization_hidden_dimension=32,
        upsample_groups=64,
        upsampling_ratios=[5, 4, 2],
        sliding_window=16,
        max_position_embeddings=512,
        num_quantizers=num_quantizers,
        codebook_size=codebook_size,
    )
    values.update(overrides)
    return MimiConfig(**values)


def save_tiny_mimi(path: str | os.PathLike, seed: int = 0, **overrides) -> str:
    """Write a tiny random `MimiModel` (see `build_mimi_config`) to `path`."""
    torch.manual_seed(seed)
    model = MimiModel(build_mimi_config(**overrides))
    # A fresh MimiModel's codebooks are all zeros (every frame would get code 0): give them random centroids.
    for name, buffer in model.named_buffers():
        if name.endswith("codebook.embed_sum"):
            buffer.normal_(0.0, 0.05)
    model.save_pretrained(path)
    return str(path)


def save_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, config: Qwen3OmniMoeConfig | None = None) -> str:
    """Write a full tiny Qwen3-Omni checkpoint (thinker, talker, code2wav and processor) to `path`; `config` (default
    [`build_config`]'s) must hold the tiny processor's token ids."""
    processor = build_processor()
    config = config or build_config(processor.tokenizer)
    torch.manual_seed(seed)
    model = Qwen3OmniMoeForConditionalGeneration(config)
    # transformers 5.23's _init_weights skips the talker's fused experts and leaves them as uninitialised memory
    # (sometimes NaN or 1e11); give them the same init as the thinker's so the checkpoint is deterministic.
    with torch.no_grad():
        for name, parameter in model.talker.named_parameters():
            if ".mlp.experts." in name:
                parameter.normal_(0.0, config.talker_config.text_config.initializer_range)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def write_media(folder: str | os.PathLike) -> dict[str, str]:
    """Write a 1 s wav (16 kHz tone), a 48x48 PNG and a 4-frame mp4 into `folder`; return their paths by type."""
    import soundfile as sf
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = {}
    t = np.arange(16000) / 16000
    paths["audio"] = os.path.join(folder, "tone.wav")
    sf.write(paths["audio"], (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    image = np.zeros((48, 48, 3), dtype=np.uint8)
    image[8:40, 8:40, 0] = 255
    paths["image"] = os.path.join(folder, "square.png")
    Image.fromarray(image).save(paths["image"])
    return paths
