# Copyright 2025 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Static training memory of the real Qwen3-Omni-30B-A3B shape per recipe, as ratios, in one run.

    HF_HUB_OFFLINE=1 python bench/bench_memory.py [--config tests/fixtures/qwen3-omni-30b-a3b-instruct.config.json]
    HF_HUB_OFFLINE=1 python bench/bench_memory.py --loading_peak     # also measure host memory while loading

Each recipe is what `train/sft.py --config <yaml> [flags] --estimate_memory` prints (the same parser and
`memory_estimate.estimate_for_run`): the Thinker built on the meta device from the checkpoint's config, the recipe's
LoRA applied with PEFT, weights / adapter / gradients / optimizer state priced as training stores them. Reported:
the static total (no activations) per recipe, QLoRA with 4-bit experts / bf16 LoRA on `instruct.yaml` (target
<= 0.40; also with the audio and vision encoders kept in bf16, `--quantize_towers false`), and whether `qlora.yaml` fits 24 GB, each also with `--offload_experts`.

`--loading_peak` measures what `load_thinker(..., quantize_experts=True)` costs in host memory on a synthetic
bf16 checkpoint with larger experts (6 MoE layers of 64 experts, 50 MB of bf16 experts per layer), each load in a
fresh process: the peak anonymous resident memory above the level before loading (sampled every millisecond; the
memory-mapped checkpoint's page cache is not counted), next to the growth the loaded model keeps, and one layer's bf16
experts. Quantizing on load should keep `peak - kept` near one layer; loading in bf16 and
quantizing afterwards would need the whole bf16 stack first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from trl import ScriptArguments, TrlParser

from qwen_omni.qwen3_omni.arguments import Qwen3OmniArguments, Qwen3OmniModelConfig, Qwen3OmniSFTConfig
from qwen_omni.qwen3_omni.memory_estimate import GB, estimate_for_run


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {
    "bf16 LoRA (instruct.yaml)": ["train/configs/instruct.yaml"],
    "QLoRA, 4-bit experts (instruct.yaml --load_in_4bit)": ["train/configs/instruct.yaml", "--load_in_4bit"],
    "  + offload_experts": ["train/configs/instruct.yaml", "--load_in_4bit", "--offload_experts"],
    "  towers kept in bf16 (--quantize_towers false)": [
        "train/configs/instruct.yaml",
        "--load_in_4bit",
        "--quantize_towers",
        "false",
    ],
    "low-memory QLoRA (qlora.yaml)": ["train/configs/qlora.yaml"],
    "  + offload_experts ": ["train/configs/qlora.yaml", "--offload_experts"],
}


def estimate(config_dir: str, recipe: list[str]):
    parser = TrlParser((ScriptArguments, Qwen3OmniSFTConfig, Qwen3OmniModelConfig, Qwen3OmniArguments))
    config_file, *flags = recipe
    argv = [
        "--config",
        os.path.join(REPO, config_file),
        "--model_name_or_path",
        config_dir,
        "--output_dir",
        os.path.join(config_dir, "out"),
        "--estimate_memory",
        *flags,
    ]
    _, training_args, model_args, omni_args = parser.parse_args_and_config(argv)
    return estimate_for_run(model_args, training_args, omni_args)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def loading_probe(checkpoint: str, quantize: bool) -> None:
    """In a fresh process: resident memory before, kept after, and peak while loading (printed as JSON)."""
    import gc
    import threading

    import torch

    from qwen_omni.qwen3_omni import load_thinker

    # anonymous memory only: the safetensors file is memory-mapped, and its page cache would count in VmRSS / VmHWM
    # (there is no high-water mark of RssAnon, so a thread samples it every millisecond)
    before, peak, done = _status_kib("RssAnon"), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _status_kib("RssAnon"))
            done.wait(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    model = load_thinker(checkpoint, dtype=torch.bfloat16, quantize_experts=quantize)
    done.set()
    sampler.join()
    gc.collect()
    print(
        json.dumps(
            {
                "peak": (peak[0] - before) * 1024,
                "kept": (_status_kib("RssAnon") - before) * 1024,
                "params": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def loading_peak() -> None:
    import torch
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    from qwen_omni.qwen3_omni import tiny_checkpoints

    config = tiny_checkpoints.build_config(tiny_checkpoints.build_tokenizer()).thinker_config
    text = config.text_config
    text.hidden_size, text.moe_intermediate_size, text.num_experts, text.num_hidden_layers = 512, 256, 64, 6
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 8, 4, 64
    config.audio_config.output_dim = config.vision_config.out_hidden_size = 512
    layer_bytes = text.num_experts * 3 * text.moe_intermediate_size * text.hidden_size * 2
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        Qwen3OmniMoeThinkerForConditionalGeneration._from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
        tiny_checkpoints.build_processor().save_pretrained(folder)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", MALLOC_TRIM_THRESHOLD_="0", HF_HUB_OFFLINE="1")
        print(
            f"\nloading a bf16 checkpoint with {text.num_hidden_layers} MoE layers of {layer_bytes / 2**20:.0f} MiB "
            "bf16 experts each (host memory, MiB above the level before loading):"
        )
        for quantize in (False, True):
            result = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--loading_probe", folder, str(quantize)],
                env=env,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                print(f"  probe failed:\n{result.stderr[-2000:]}")
                continue
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"  {'4-bit experts (quantize_experts)' if quantize else 'bf16':<34} peak {figures['peak'] / 2**20:7.1f}"
                f"  kept {figures['kept'] / 2**20:7.1f}  peak - kept {(figures['peak'] - figures['kept']) / 2**20:6.1f}"
                f"  = {(figures['peak'] - figures['kept']) / layer_bytes:.2f} layers of bf16 experts"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default=os.path.join(REPO, "tests", "fixtures", "qwen3-omni-30b-a3b-instruct.config.json")
    )
    parser.add_argument("--loading_peak", action="store_true", help="also measure host memory while loading")
    parser.add_argument("--loading_probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loading_probe:
        loading_probe(args.loading_probe[0], args.loading_probe[1] == "True")
        return
    with tempfile.TemporaryDirectory() as config_dir:
        shutil.copy(args.config, os.path.join(config_dir, "config.json"))
        totals = {}
        print(f"{'recipe':<52} {'weights':>8} {'host':>7} {'adapter':>8} {'grads':>7} {'optim':>7} {'static':>8}")
        for name, recipe in RECIPES.items():
            result = estimate(config_dir, recipe)
            totals[name] = result.static_total
            print(
                f"{name:<52} {result.weights / GB:>8.2f} {result.host_offloaded / GB:>7.2f} {result.adapter / GB:>8.2f} "
                f"{result.gradients / GB:>7.2f} {result.optimizer / GB:>7.2f} {result.static_total / GB:>8.2f}"
            )
    bf16, qlora, offloaded, towers_kept, low_memory, low_memory_offloaded = totals.values()
    print(f"\nQLoRA with 4-bit experts / bf16 LoRA (instruct.yaml): {qlora / bf16:.3f} (target <= 0.40)")
    print(f"  with offload_experts: {offloaded / bf16:.3f}; with the towers kept in bf16: {towers_kept / bf16:.3f}")
    print(
        f"qlora.yaml static total: {low_memory / GB:.2f} GB (target <= 24 GB: "
        f"{'met' if low_memory <= 24 * GB else 'not met'}); with offload_experts: {low_memory_offloaded / GB:.2f} GB"
    )
    if args.loading_peak:
        loading_peak()


if __name__ == "__main__":
    main()
