# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Cost of keeping the existing speakers (`train/talker_voice_sft.py --preserve_speakers all`, the default) against
the recipe without it (`--preserve_speakers none`), as ratios in one run.

    HF_HUB_OFFLINE=1 python bench/bench_voice_preservation.py                  # defaults: bench_talker_lora's model
    python bench/bench_voice_preservation.py --repeats 3 --preserve_texts 4    # quicker

Model and batch: `bench_talker_lora.py`'s (a random Qwen3-Omni whose Talker has the real one's structure at a reduced
size; `--batch_size` clips of `--frames` frames, the Thinker's outputs cached as in training), with the routed expert
LoRA of the recipe. Preservation, as the recipe runs it:

- once before training, the base Talker's greedy codes for each of the 3 existing speakers on each clip's
  conversation and on `--preserve_texts` of the built-in `PRESERVE_TEXTS`, at most twice the clips' length
  (`talker_voice.build_preserve_examples`; a random Thinker rarely ends its speech, so it runs to that limit);
- every step, `--batch_size` x 3 of those examples join the batch of clips (`--preserve_batch_size` defaults to the
  per-device batch size times the kept speakers); with `--preserve_loss kl` the frozen base (the adapter disabled)
  also runs forward on them without gradients, with `codes` (the default) it does not.

Figures (CPU time of this process with one torch thread by default, or wall time after a synchronize on a GPU): the
median step time of both (interleaved over `--repeats` rounds after a warm-up), the time of the one-off generation,
and the total time of a run of `--train_steps` steps, `generation + steps x median step`, each over the recipe
without preservation.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_talker_lora import (
    add_model_arguments,
    build_lora,
    build_model,
    make_examples,
    synchronize,
)

from qwen_omni.qwen3_omni import tiny_checkpoints
from qwen_omni.qwen3_omni.talker_voice import (
    PRESERVE_TEXTS,
    build_preserve_examples,
    cache_thinker_outputs,
    default_preserve_batch_size,
    talker_voice_examples_forward,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--preserve_texts", type=int, default=8, help=f"how many of the {len(PRESERVE_TEXTS)} texts")
    parser.add_argument("--train_steps", type=int, default=1000, help="steps of the run whose total time is given")
    return parser.parse_args(argv)


def train_step(model, examples, speaker: int, preserve_loss: str) -> None:
    talker_voice_examples_forward(model, examples, speaker, preserve_loss=preserve_loss).loss.backward()
    model.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    on_gpu = args.device.startswith("cuda")
    clock = time.perf_counter if on_gpu else time.process_time
    base = build_model(args)
    processor = tiny_checkpoints.build_processor()
    examples = make_examples(args, base)
    cache_thinker_outputs(base, examples)
    speakers = dict(base.config.talker_config.speaker_id)

    synchronize(args.device)
    start = clock()
    preserve_examples = build_preserve_examples(
        base, processor, examples, list(PRESERVE_TEXTS[: args.preserve_texts]), speakers, 2 * args.frames
    )
    synchronize(args.device)
    generation = clock() - start

    model = build_lora(copy.deepcopy(base), "routed", args.lora_r)
    new_speaker = speakers["ethan"]  # the trained row; which one does not change the cost
    with_preservation = examples + preserve_examples[: default_preserve_batch_size(args.batch_size, len(speakers))]
    batches = {"without": (examples, "kl"), "kl": (with_preservation, "kl"), "codes": (with_preservation, "codes")}
    times = {variant: [] for variant in batches}
    for round_index in range(args.repeats + 1):
        order = list(batches) if round_index % 2 == 0 else list(reversed(batches))
        for variant in order:
            synchronize(args.device)
            start = clock()
            train_step(model, batches[variant][0], new_speaker, batches[variant][1])
            synchronize(args.device)
            if round_index:  # round 0 is the warm-up
                times[variant].append(clock() - start)
    step = {variant: statistics.median(values) for variant, values in times.items()}
    total = {
        variant: (generation if variant != "without" else 0.0) + args.train_steps * step[variant] for variant in step
    }
    frames = sum(len(example.codes) for example in preserve_examples)
    print(
        f"Talker voice preservation, {args.device}, clock={'wall' if on_gpu else 'cpu'}, threads={args.num_threads}: "
        f"batch {args.batch_size} x ({args.prompt_len} prompt tokens + {args.frames} frames), talker hidden "
        f"{args.talker_hidden} x {args.talker_layers} layers, {args.num_experts} experts top-{args.top_k}, LoRA r "
        f"{args.lora_r}; {len(speakers)} preserved speakers x ({len(examples)} clips + {args.preserve_texts} texts) "
        f"= {len(preserve_examples)} examples ({frames} frames); medians of {args.repeats} interleaved rounds"
    )
    print(f"step without preservation: {step['without'] * 1e3:.1f} ms")
    for variant in ("kl", "codes"):
        print(
            f"step with preservation, --preserve_loss {variant}: {step[variant] * 1e3:.1f} ms "
            f"(x{step[variant] / step['without']:.2f})"
        )
    print(
        f"one-off generation of the base codes: {generation:.1f} s (= {generation / step['without']:.0f} steps "
        "without preservation)"
    )
    print(
        f"total of {args.train_steps} steps: without {total['without']:.1f} s, with --preserve_loss kl "
        f"{total['kl']:.1f} s (x{total['kl'] / total['without']:.2f}), codes {total['codes']:.1f} s "
        f"(x{total['codes'] / total['without']:.2f})"
    )


if __name__ == "__main__":
    main()
