"""The `train/` scripts as modules, for tests that call their `main` or parse their arguments without a launch, and
the seed recipe's tiny QLoRA run (importable from every test module: tests/ is on sys.path)."""

import importlib.util
import json
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]

# two conversations whose replies a LoRA on the router and experts learns in 8 steps
SEED_RECIPE_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Think step by step."},
            {"role": "assistant", "content": "two plus two is four"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "What do you see?"},
            {"role": "assistant", "content": "A red square on white."},
        ]
    },
] * 4


def load_script(name: str):
    """A `train/<name>.py` script as a module (its `main` and argument classes), without running it."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO_ROOT / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def sft_parser(sft):
    """`train/sft.py`'s own `TrlParser` over its four argument classes."""
    return sft.TrlParser(
        (sft.ScriptArguments, sft.Qwen3OmniSFTConfig, sft.Qwen3OmniModelConfig, sft.Qwen3OmniArguments)
    )


def seed_recipe_run(checkpoint: str, folder: Path, dtype: str) -> tuple[Path, list[str]]:
    """`(output folder, argv)` of `train/sft.py --config train/configs/seed_recipe.yaml --load_in_4bit` for 8 steps
    on [`SEED_RECIPE_ROWS`], written to `folder/train.jsonl`."""
    (folder / "train.jsonl").write_text("\n".join(json.dumps(row) for row in SEED_RECIPE_ROWS))
    output_dir = folder / "out"
    argv = [
        "--config",
        str(REPO_ROOT / "train" / "configs" / "seed_recipe.yaml"),
        "--load_in_4bit",
        "--model_name_or_path",
        checkpoint,
        "--dataset_name",
        str(folder / "train.jsonl"),
        "--output_dir",
        str(output_dir),
        "--dtype",
        dtype,
        "--max_steps",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "2e-2",
        "--warmup_steps",
        "0",
        "--lr_scheduler_type",
        "constant",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--max_length",
        "128",
        "--dataloader_num_workers",
        "0",
    ]
    return output_dir, argv
