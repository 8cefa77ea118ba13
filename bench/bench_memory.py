# Copyright 2025 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Static training memory of the real Qwen3-Omni-30B-A3B shape per recipe, as ratios, in one run.

    HF_HUB_OFFLINE=1 python bench/bench_memory.py [--config tests/fixtures/qwen3-omni-30b-a3b-instruct.config.json]

Each recipe is what `train/sft.py --config <yaml> [flags] --estimate_memory` prints (the same parser and
`memory_estimate.estimate_for_run`): the Thinker built on the meta device from the checkpoint's config, the recipe's
LoRA applied with PEFT, weights / adapter / gradients / optimizer state priced as training stores them. Reported:
the static total (no activations) per recipe, QLoRA with 4-bit experts / bf16 LoRA on `instruct.yaml` (target
<= 0.40), and whether `qlora.yaml` fits 24 GB, each also with `--offload_experts`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from trl import ScriptArguments, TrlParser

from qwen_omni.qwen3_omni.arguments import Qwen3OmniArguments, Qwen3OmniModelConfig, Qwen3OmniSFTConfig
from qwen_omni.qwen3_omni.memory_estimate import GB, estimate_for_run


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {
    "bf16 LoRA (instruct.yaml)": ["train/configs/instruct.yaml"],
    "QLoRA, 4-bit experts (instruct.yaml --load_in_4bit)": ["train/configs/instruct.yaml", "--load_in_4bit"],
    "  + offload_experts": ["train/configs/instruct.yaml", "--load_in_4bit", "--offload_experts"],
    "low-memory QLoRA (qlora.yaml)": ["train/configs/qlora.yaml"],
    "  + offload_experts ": ["train/configs/qlora.yaml", "--offload_experts"],
}


def estimate(config_dir: str, recipe: list[str]):
    parser = TrlParser((ScriptArguments, Qwen3OmniSFTConfig, Qwen3OmniModelConfig, Qwen3OmniArguments))
    config_file, *flags = recipe
    argv = ["--config", os.path.join(REPO, config_file), "--model_name_or_path", config_dir, "--output_dir",
            os.path.join(config_dir, "out"), "--estimate_memory", *flags]
    _, training_args, model_args, omni_args = parser.parse_args_and_config(argv)
    return estimate_for_run(model_args, training_args, omni_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default=os.path.join(REPO, "tests", "fixtures", "qwen3-omni-30b-a3b-instruct.config.json")
    )
    args = parser.parse_args()
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
    names = list(RECIPES)
    print(f"\nQLoRA with 4-bit experts / bf16 LoRA (instruct.yaml): {totals[names[1]] / totals[names[0]]:.3f} "
          "(target <= 0.40)")
    print(f"  with offload_experts: {totals[names[2]] / totals[names[0]]:.3f}")
    print(f"qlora.yaml static total: {totals[names[3]] / GB:.2f} GB (target <= 24 GB: "
          f"{'met' if totals[names[3]] <= 24 * GB else 'not met'}); with offload_experts: {totals[names[4]] / GB:.2f} GB")


if __name__ == "__main__":
    main()
