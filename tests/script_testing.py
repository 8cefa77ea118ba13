"""The `train/` scripts as modules, for tests that call their `main` or parse their arguments without a launch; the
conversations and flags of the tiny `train/sft.py` runs (importable from every test module: tests/ is on sys.path)."""

import importlib.util
import json
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]

AUDIO_TURN = {
    "role": "user",
    "content": [{"type": "audio", "audio": "tone.wav"}, {"type": "text", "text": "What do you hear?"}],
}
IMAGE_TURN = {
    "role": "user",
    "content": [{"type": "image", "image": "square.png"}, {"type": "text", "text": "What do you see?"}],
}
TEXT_ROW = {
    "messages": [
        {"role": "user", "content": "Think step by step."},
        {"role": "assistant", "content": "two plus two is four"},
    ]
}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def mixed_conversation_rows(repeats: int) -> list[dict]:
    """`repeats` times an audio, an image (the media of `tiny_checkpoints.write_media`) and a text-only conversation."""
    rows = []
    for _ in range(repeats):
        rows.append({"conversations": [AUDIO_TURN, reply("A steady tone, then silence.")]})
        rows.append({"conversations": [IMAGE_TURN, reply("A red square on white.")]})
        rows.append(TEXT_ROW)
    return rows


def instruct_recipe_argv(
    workdir: dict, output_dir, max_steps: int, batch_size: int, max_length: int, *flags: str
) -> list[str]:
    """`train/sft.py --config train/configs/instruct.yaml` on `workdir`'s base and data, with small LoRA ranks,
    checkpointed at the last step; `flags` add the precision and the rest."""
    return [
        "--config",
        str(REPO_ROOT / "train" / "configs" / "instruct.yaml"),
        "--model_name_or_path",
        workdir["base"],
        "--dataset_name",
        workdir["data"],
        "--output_dir",
        str(output_dir),
        *flags,
        "--max_steps",
        str(max_steps),
        "--per_device_train_batch_size",
        str(batch_size),
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--warmup_steps",
        "0",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--lora_expert_r",
        "2",
        "--logging_steps",
        "1",
        "--save_strategy",
        "steps",
        "--save_steps",
        str(max_steps),
        "--report_to",
        "none",
        "--max_length",
        str(max_length),
        "--dataloader_num_workers",
        "0",
        "--disable_tqdm",
        "true",
    ]


# two conversations whose replies a LoRA on the router and experts learns in 8 steps
SEED_RECIPE_ROWS = [
    TEXT_ROW,
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
