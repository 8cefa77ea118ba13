"""
Speech generation speed of the Omni model at the qwen-omni seed's shape (d_model 128, 3 layers, 4 heads; GPT-2's
50257 text ids + the special tokens, then 7 x 4096 audio ids: ~79k ids, ~10.8M parameters), random weights.

Prints, as medians over repetitions inside one run:
- tokens/s of constrained speech generation (the default: constraint + fast block head) over plain unconstrained
  `generate` of the same model with the same settings (target >= 1.5);
- the constrained full-head path, for reference;
- real-time factor (24 kHz SNAC speech is 82 tokens/s), with and without the KV cache.

    python bench/bench_generation.py [--new-tokens 280] [--repeats 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from qwen_omni import OmniConfig, OmniForCausalLM  # noqa: E402
from qwen_omni.omni.build import SPEECH_GENERATION_DEFAULTS  # noqa: E402

GPT2_VOCAB = 50257
NUM_SPECIAL = 8  # pad + the six Omni tokens + one spare, as add_omni_tokens leaves a GPT-2 tokenizer (eos exists)
REAL_TIME_TOKENS_PER_S = 24000 / 2048 * 7


def build_seed_model() -> OmniForCausalLM:
    offset = GPT2_VOCAB + NUM_SPECIAL
    special = {name: GPT2_VOCAB + i for i, name in enumerate(
        ["pad_token_id", "tts_token_id", "asr_token_id", "text_start_token_id", "text_end_token_id",
         "audio_start_token_id", "audio_end_token_id"]
    )}
    config = OmniConfig(
        vocab_size=-(-(offset + 7 * 4096) // 64) * 64, audio_token_offset=offset, codebook_size=4096,
        vq_strides=[4, 2, 1], hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, tie_word_embeddings=True, eos_token_id=GPT2_VOCAB - 1, **special,
    )
    torch.manual_seed(0)
    model = OmniForCausalLM(config).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def time_generate(model, prompt, new_tokens, variants: dict, repeats: int) -> dict:
    """Median tokens/s of each variant; repetitions are interleaved so that load on shared cores hits all alike."""
    rates = {name: [] for name in variants}
    for repeat in range(repeats + 1):  # the first round warms up
        for name, kwargs in variants.items():
            torch.manual_seed(repeat)
            start = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=new_tokens, eos_token_id=None, **kwargs)
            elapsed = time.perf_counter() - start
            if repeat:
                rates[name].append((out.shape[1] - prompt.shape[1]) / elapsed)
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=280, help="tokens per generation (40 frames)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = build_seed_model()
    config = model.config
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocab {config.vocab_size}, "
          f"torch threads {torch.get_num_threads()}")
    text = torch.randint(0, GPT2_VOCAB, (1, 12))
    prompt = torch.cat([
        torch.tensor([[config.tts_token_id, config.text_start_token_id]]), text,
        torch.tensor([[config.text_end_token_id, config.audio_start_token_id]]),
    ], dim=1)
    settings = dict(SPEECH_GENERATION_DEFAULTS)
    variants = {
        "plain": dict(constrained=False, **settings),
        "full_head": dict(fast_audio_head=False, **settings),
        "fast": dict(settings),
        "plain_no_cache": dict(constrained=False, use_cache=False, **settings),
        "fast_no_cache": dict(use_cache=False, **settings),
    }
    with torch.no_grad():
        rates = time_generate(model, prompt, args.new_tokens, variants, args.repeats)
    plain, full_head, fast = rates["plain"], rates["full_head"], rates["fast"]
    plain_no_cache, fast_no_cache = rates["plain_no_cache"], rates["fast_no_cache"]
    print(f"sampling {settings}, {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"plain unconstrained generate           : {plain:7.1f} tokens/s ({plain / REAL_TIME_TOKENS_PER_S:.2f}x real time)")
    print(f"constrained, full head                 : {full_head:7.1f} tokens/s")
    print(f"constrained, fast block head (default) : {fast:7.1f} tokens/s ({fast / REAL_TIME_TOKENS_PER_S:.2f}x real time)")
    print(f"without KV cache: plain {plain_no_cache:.1f} tokens/s, constrained fast {fast_no_cache:.1f} tokens/s")
    print(f"RATIO constrained (default) / plain generate: {fast / plain:.2f}x (target >= 1.5)")


if __name__ == "__main__":
    main()
