# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Throughput of the Qwen3-Omni evaluation's answers: rows per second generated in batches vs one row at a time, and
whether the answers are the same, as ratios in one run.

    HF_HUB_OFFLINE=1 python bench/bench_evaluate.py                     # 16 rows, batches of 8, 3 repeats
    python bench/bench_evaluate.py --rows 32 --batch_size 16 --repeats 5

Model: a tiny random Qwen3-Omni Thinker (qwen3_omni/tiny_checkpoints.py) whose LM head has a trained model's scale, so that
greedy answers differ from row to row. Rows: `--rows` text prompts of different lengths (left padding matters).
Each variant answers every row with `qwen3_omni.evaluation.answer_rows` (the evaluation's own path, an empty answer
cache each time, `--max_new_tokens` greedy tokens); the variants alternate over `--repeats` rounds after a warm-up and
the medians are reported: wall time and the process's CPU time. The figures are `batched / one_at_a_time` rows per
second (wall and CPU), and the number of rows whose answers differ between the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen3OmniMoeForConditionalGeneration

from qwen_omni.qwen3_omni import tiny_checkpoints
from qwen_omni.qwen3_omni.evaluation import AnswerCache, EvalRow, answer_rows  # noqa: E402
from qwen_omni.qwen3_omni.loading import load_thinker  # noqa: E402


WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "what",
    "do",
    "you",
    "hear",
    "describe",
    "the",
    "sound",
    "in",
    "detail",
]


def build(folder: Path, num_rows: int):
    base = tiny_checkpoints.save_tiny_checkpoint(folder / "base")
    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        model.thinker.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(base)
    rows = []
    for index in range(num_rows):
        prompt = " ".join(WORDS[(index + k) % len(WORDS)] for k in range(3 + index % 7))
        rows.append(EvalRow(index, "text", [{"role": "user", "content": [{"type": "text", "text": prompt}]}], "x"))
    return base, rows


def timed(thinker, processor, rows, batch_size, max_new_tokens, folder: Path) -> tuple[float, float, list[str]]:
    cache = AnswerCache(folder / f"cache_{batch_size}_{time.monotonic_ns()}.jsonl", {"bench": batch_size})
    wall, cpu = time.perf_counter(), time.process_time()
    answers, failed = answer_rows(thinker, processor, rows, cache, batch_size, max_new_tokens, f"batch {batch_size}")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert not failed, failed
    return wall, cpu, [answers[row.key] for row in rows]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is comparable with 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base, rows = build(folder, args.rows)
        processor = AutoProcessor.from_pretrained(base)
        thinker = load_thinker(base, dtype=torch.float32).eval()
        timed(thinker, processor, rows[:2], 2, 2, folder)  # warm-up
        results = {"batched": [], "one_at_a_time": []}
        outputs = {}
        for _ in range(args.repeats):
            for name, batch_size in (("batched", args.batch_size), ("one_at_a_time", 1)):
                wall, cpu, outputs[name] = timed(thinker, processor, rows, batch_size, args.max_new_tokens, folder)
                results[name].append((wall, cpu))
    medians = {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in results.items()
    }
    report = {
        "rows": args.rows,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "device": "cpu",
        "threads": args.threads,
        "rows_per_second": {
            name: {"wall": args.rows / wall, "cpu": args.rows / cpu} for name, (wall, cpu) in medians.items()
        },
        "speedup_wall": medians["one_at_a_time"][0] / medians["batched"][0],
        "speedup_cpu": medians["one_at_a_time"][1] / medians["batched"][1],
        "rows_with_different_answers": sum(a != b for a, b in zip(outputs["batched"], outputs["one_at_a_time"])),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
