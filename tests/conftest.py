"""Shared fixtures: tiny SNAC codecs, a tiny BPE tokenizer, a tiny Qwen3 LM and a tiny Omni checkpoint, all built
here (no network)."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from omni_testing import TINY_SNAC_24KHZ, TINY_SNAC_32KHZ, build_tiny_omni, save_snac_checkpoint, tiny_bpe_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def snac_24khz_dir(tmp_path_factory):
    """A tiny random 3-codebook SNAC codec saved in SNAC's own layout (config.json + pytorch_model.bin)."""
    return save_snac_checkpoint(TINY_SNAC_24KHZ, tmp_path_factory.mktemp("snac24"))


@pytest.fixture(scope="session")
def snac_32khz_dir(tmp_path_factory):
    """A tiny random 4-codebook SNAC codec with local attention (vq_strides [8, 4, 2, 1])."""
    return save_snac_checkpoint(TINY_SNAC_32KHZ, tmp_path_factory.mktemp("snac32"))


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_bpe_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def qwen3_lm_dir(tmp_path_factory, bpe_tokenizer_dir):
    """A tiny random Qwen3ForCausalLM with the tiny tokenizer, saved like a Hub checkpoint."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    config = Qwen3Config(
        vocab_size=len(tokenizer) + 6,  # a padded vocabulary, as Qwen3's is
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwen3")
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def omni_dir(tmp_path_factory, snac_24khz_dir):
    """A tiny random Omni checkpoint (from scratch, 3-codebook codec) saved with its processor and code."""
    path = tmp_path_factory.mktemp("omni")
    build_tiny_omni(snac_24khz_dir, path)
    return path
