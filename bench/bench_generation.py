"""
Speech generation speed of the Omni model at the qwen-omni seed's shape (d_model 128, 3 layers, 4 heads; GPT-2's
50257 text ids + the special tokens, then 7 x 4096 audio ids: ~79k ids, ~10.8M parameters), random weights.

Prints, as medians over interleaved repetitions inside one run (process CPU time, one thread by default: the
machine is shared), for the checkpoint's sampling defaults and for each further `generate` argument of issue 11
(`min_new_tokens`, `top_k`, `no_repeat_ngram_size`, `suppress_tokens`, a stronger `repetition_penalty`, greedy, all
at once):
- tokens/s of constrained speech generation (the default: constraint + fast block head) over plain unconstrained
  `generate` of the same model with the same settings (target >= 1.5);
- the default path's tokens/s as a multiple of real time (24 kHz SNAC speech is 82 tokens/s; target >= 2);
- the constrained full-head path, for reference;
- for the defaults, the fast head with a compiled decoding step (a static cache and a `CompileConfig` allowed on the
  CPU: transformers' rule, which the fast head follows; the compile happens in the warm-up round), as tokens/s, a
  multiple of real time and of the eager fast head (`--no-compile` leaves it out, e.g. without a C++ compiler).

    python bench/bench_generation.py [--new-tokens 140] [--repeats 3] [--only defaults min_new_tokens] [--no-compile]
"""

import argparse
import os
import statistics
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import CompileConfig  # noqa: E402

from qwen_omni import OmniConfig, OmniForCausalLM  # noqa: E402
from qwen_omni.omni.build import SPEECH_GENERATION_DEFAULTS  # noqa: E402


GPT2_VOCAB = 50257
NUM_SPECIAL = 8  # pad + the six Omni tokens + one spare, as add_omni_tokens leaves a GPT-2 tokenizer (eos exists)
REAL_TIME_TOKENS_PER_S = 24000 / 2048 * 7


def build_seed_model() -> OmniForCausalLM:
    offset = GPT2_VOCAB + NUM_SPECIAL
    special = {
        name: GPT2_VOCAB + i
        for i, name in enumerate(
            [
                "pad_token_id",
                "tts_token_id",
                "asr_token_id",
                "text_start_token_id",
                "text_end_token_id",
                "audio_start_token_id",
                "audio_end_token_id",
            ]
        )
    }
    config = OmniConfig(
        vocab_size=-(-(offset + 7 * 4096) // 64) * 64,
        audio_token_offset=offset,
        codebook_size=4096,
        vq_strides=[4, 2, 1],
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=True,
        eos_token_id=GPT2_VOCAB - 1,
        **special,
    )
    torch.manual_seed(0)
    model = OmniForCausalLM(config).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def seed_prompt(config: OmniConfig, text_tokens: int = 12) -> torch.Tensor:
    """A text-to-speech prompt: `<|tts|><|text_start|>` random text ids `<|text_end|><|audio_start|>`."""
    text = torch.randint(0, GPT2_VOCAB, (1, text_tokens), generator=torch.Generator().manual_seed(0))
    return torch.cat(
        [
            torch.tensor([[config.tts_token_id, config.text_start_token_id]]),
            text,
            torch.tensor([[config.text_end_token_id, config.audio_start_token_id]]),
        ],
        dim=1,
    )


def time_generate(model, prompt, new_tokens, variants: dict, repeats: int, clock) -> dict:
    """Median tokens/s of each variant; repetitions are interleaved (order alternating) so that load on shared cores
    hits all alike."""
    rates = {name: [] for name in variants}
    for repeat in range(repeats + 1):  # the first round warms up
        order = list(variants.items())
        for name, kwargs in order if repeat % 2 else order[::-1]:
            torch.manual_seed(repeat)
            start = clock()
            out = model.generate(prompt, max_new_tokens=new_tokens, **kwargs)
            elapsed = clock() - start
            if repeat:
                rates[name].append((out.shape[1] - prompt.shape[1]) / elapsed)
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=140, help="tokens per generation (20 frames)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall time")
    parser.add_argument("--only", nargs="*", help="run only these settings (names as printed)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled decoding step")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    model = build_seed_model()
    config = model.config
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocab {config.vocab_size}, "
        f"torch {torch.__version__}, {args.num_threads} thread(s), {args.clock} clock, median of {args.repeats}"
    )
    prompt = seed_prompt(config)
    defaults = dict(SPEECH_GENERATION_DEFAULTS)
    no_eos = dict(eos_token_id=None)
    # the checkpoint's defaults (Orpheus' usual settings), then each further `generate` argument of issue 11 on top;
    # min_new_tokens needs the stop ids, and equals the budget so that no run stops early
    settings = {
        "defaults": dict(defaults, **no_eos),
        "min_new_tokens": dict(defaults, min_new_tokens=args.new_tokens),
        "top_k": dict(defaults, top_k=50, **no_eos),
        "no_repeat_ngram_size": dict(defaults, no_repeat_ngram_size=3, **no_eos),
        "suppress_tokens": dict(defaults, suppress_tokens=[config.audio_token_offset + 1, 7], **no_eos),
        "repetition_penalty_1.3": dict(defaults, repetition_penalty=1.3, **no_eos),
        "greedy": dict(do_sample=False, **no_eos),
        "all": dict(
            defaults,
            min_new_tokens=args.new_tokens,
            top_k=50,
            no_repeat_ngram_size=3,
            suppress_tokens=[config.audio_token_offset + 1, 7],
        ),
    }
    if args.only:
        settings = {name: kwargs for name, kwargs in settings.items() if name in args.only}
    with torch.no_grad():
        for name, kwargs in settings.items():
            variants = {"plain": dict(constrained=False, **kwargs), "fast": dict(kwargs)}
            if name == "defaults":
                variants["full_head"] = dict(fast_audio_head=False, **kwargs)
                if not args.no_compile:
                    # transformers compiles on accelerators only, unless told
                    compile_config = CompileConfig()
                    compile_config._compile_all_devices = True
                    variants["compiled"] = dict(kwargs, cache_implementation="static", compile_config=compile_config)
            rates = time_generate(model, prompt, args.new_tokens, variants, args.repeats, clock)
            plain, fast = rates["plain"], rates["fast"]
            extra = f", constrained full head {rates['full_head']:6.1f}" if "full_head" in rates else ""
            if "compiled" in rates:
                compiled = rates["compiled"]
                extra += (
                    f", fast head with a compiled decoding step {compiled:6.1f} tokens/s "
                    f"({compiled / REAL_TIME_TOKENS_PER_S:.2f}x real time, RATIO compiled / eager {compiled / fast:.2f}x)"
                )
            print(
                f"{name:24s}: plain generate {plain:6.1f} tokens/s, constrained fast head (default) {fast:6.1f} "
                f"tokens/s ({fast / REAL_TIME_TOKENS_PER_S:.2f}x real time){extra}; RATIO fast / plain "
                f"{fast / plain:.2f}x (target >= 1.5)",
                flush=True,
            )


if __name__ == "__main__":
    main()
