"""Builders of tiny Omni parts for the tests (importable from every test module: tests/ is on sys.path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


REPO_ROOT = Path(__file__).resolve().parents[1]

# Small enough to encode and decode in milliseconds; the real shapes differ only in widths.
TINY_SNAC_24KHZ = dict(
    sampling_rate=24000,
    encoder_dim=8,
    encoder_rates=[2, 4, 8, 8],
    decoder_dim=64,
    decoder_rates=[8, 8, 4, 2],
    attn_window_size=None,
    codebook_size=32,
    codebook_dim=4,
    vq_strides=[4, 2, 1],
    noise=True,
    depthwise=True,
)
TINY_SNAC_32KHZ = dict(
    sampling_rate=32000,
    encoder_dim=8,
    encoder_rates=[2, 3, 8, 8],
    decoder_dim=64,
    decoder_rates=[8, 8, 3, 2],
    attn_window_size=32,
    codebook_size=32,
    codebook_dim=4,
    vq_strides=[8, 4, 2, 1],
    noise=True,
    depthwise=True,
)

CORPUS_TEXT = [
    "hello there, how are you today?",
    "the quick brown fox jumps over the lazy dog.",
    "speech and text share one vocabulary.",
    "a small model can still learn a few sentences.",
    "tara: good morning, nice to meet you.",
]


def save_snac_checkpoint(config: dict, path, seed: int = 0) -> Path:
    """Save a random `snac.SNAC(**config)` in SNAC's own layout, as `hubertsiuzdak/snac_24khz` ships it."""
    import snac

    torch.manual_seed(seed)
    codec = snac.SNAC(**config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    torch.save(codec.state_dict(), path / "pytorch_model.bin")
    return path


def tiny_bpe_tokenizer(vocab_size: int = 300):
    from qwen_omni.omni.build import train_bpe_tokenizer

    return train_bpe_tokenizer(CORPUS_TEXT * 4, vocab_size=vocab_size)


def build_tiny_omni(codec_dir, output_dir, hidden_size: int = 64, num_layers: int = 2, seed: int = 0, **kwargs):
    """A tiny random Omni checkpoint around the tiny BPE tokenizer, saved to `output_dir`; returns (model, processor)."""
    from qwen_omni.omni.build import build_omni_from_scratch, save_omni_checkpoint

    model, processor = build_omni_from_scratch(
        tiny_bpe_tokenizer(),
        codec_dir,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        seed=seed,
        **kwargs,
    )
    save_omni_checkpoint(model, processor, output_dir)
    return model, processor


def run_without_qwen_omni(code: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `import qwen_omni` fails, as on a machine that only has the Hub folder."""
    prelude = "import sys\nsys.modules['qwen_omni'] = None\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def tiny_processor(codec_dir, **feature_extractor_kwargs):
    """An OmniProcessor around the tiny BPE tokenizer (Omni tokens added) and the SNAC codec saved in `codec_dir`."""
    from qwen_omni import OmniProcessor, SNACAudioTokenizer, SNACFeatureExtractor
    from qwen_omni.omni.build import add_omni_tokens

    tokenizer = tiny_bpe_tokenizer()
    add_omni_tokens(tokenizer)
    audio_tokenizer = SNACAudioTokenizer.from_pretrained(codec_dir)
    feature_extractor = SNACFeatureExtractor(
        sampling_rate=audio_tokenizer.config.sampling_rate, **feature_extractor_kwargs
    )
    return OmniProcessor(feature_extractor, tokenizer, audio_tokenizer)


def front_matter(card: str) -> dict:
    """The YAML metadata of a model card."""
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def usage_code(card: str) -> str:
    """The Python code block of a model card's Usage section."""
    return card.split("## Usage")[1].split("```python\n")[1].split("```")[0]
