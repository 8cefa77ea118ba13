"""Resuming train/sft.py from its checkpoints: with LoRA dropout on the routed router/expert LoRA (one process) and
from FSDP2's sharded checkpoints (two CPU processes), each compared with the uninterrupted run; and LoRA on the audio
and vision towers under FSDP2.

One recipe serves every test: instruct.yaml's targets (attention, router, experts; routed expert LoRA) with
`--lora_dropout 0.1` and `--lora_towers audio vision`, 4 steps, a checkpoint every 2. The uninterrupted run of each
launch is the reference; its `checkpoint-2` is what a run stopped right after that save leaves behind, and the resumed
runs start from it (in their own output folder) and train steps 3 and 4."""

import json
import re
import shutil

import pytest
import torch
from script_testing import load_script, sft_parser  # noqa: E402
from test_launch import (  # noqa: E402
    CONFIGS,
    adapter_format,
    assert_two_ranks_shared_the_data,
    launch,
    sft_args,
    sft_workdir,  # noqa: F401 (fixture)
)


MAX_STEPS, SAVE_STEPS = 4, 2
# appended to test_launch's sft_args, whose --max_steps / --save_steps they override (argparse keeps the last value)
RECIPE = [
    "--max_steps",
    str(MAX_STEPS),
    "--save_steps",
    str(SAVE_STEPS),
    "--lora_dropout",
    "0.1",
    "--lora_towers",
    "audio",
    "vision",
]
FSDP2 = ["--config_file", str(CONFIGS / "fsdp2.yaml"), "--num_processes", "2"]
TOWERS = ("base_model.model.model.audio_tower.", "base_model.model.model.visual.")


def run_in_process(workdir, output_dir, *extra):
    sft = load_script("sft")
    parser = sft_parser(sft)
    args = [*sft_args(workdir, output_dir), *RECIPE, "--use_cpu", "true", *extra]
    sft.main(*parser.parse_args_and_config(args=args))


def checkpoints(output_dir):
    return sorted(path.name for path in output_dir.iterdir() if path.name.startswith("checkpoint-"))


def trainer_state(checkpoint):
    return json.loads((checkpoint / "trainer_state.json").read_text())


def logged_losses(stdout):
    """The per-step losses the Trainer printed (`--disable_tqdm true`), in order: one per step this run trained."""
    return re.findall(r"\{'loss': '([^']+)'", stdout)


def assert_same_adapter(folder, reference):
    shapes, config, weights = adapter_format(folder)
    reference_shapes, reference_config, reference_weights = adapter_format(reference)
    assert (shapes, config) == (reference_shapes, reference_config)
    # exact: the resumed run replays the same batches, dropout masks (RNG state restored), optimizer and scheduler
    # state, on the same CPU kernels
    differing = [name for name in weights if not torch.equal(weights[name], reference_weights[name])]
    assert not differing, differing


def assert_resumed_at_the_checkpoint(output_dir, reference_dir):
    """The run started at step SAVE_STEPS: it wrote no checkpoint before it (a run from step 0 would have written
    checkpoint-SAVE_STEPS), and its last checkpoint's state carries the restored history with the reference's steps."""
    assert checkpoints(output_dir) == [f"checkpoint-{MAX_STEPS}"]
    last = f"checkpoint-{MAX_STEPS}"
    state, reference = trainer_state(output_dir / last), trainer_state(reference_dir / last)
    assert state["global_step"] == MAX_STEPS
    steps = [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]
    assert steps == [(entry["step"], entry["loss"]) for entry in reference["log_history"] if "loss" in entry]
    assert [step for step, _ in steps] == list(range(1, MAX_STEPS + 1))


@pytest.fixture(scope="module")
def single_process_run(sft_workdir):  # noqa: F811
    """The recipe trained by one process (in this one), uninterrupted."""
    output_dir = sft_workdir["root"] / "resume_single"
    run_in_process(sft_workdir, output_dir)
    assert checkpoints(output_dir) == [f"checkpoint-{SAVE_STEPS}", f"checkpoint-{MAX_STEPS}"]
    return output_dir


def test_resume_with_lora_dropout_replays_the_uninterrupted_run(sft_workdir, single_process_run, capsys):  # noqa: F811
    config = json.loads((single_process_run / "adapter_config.json").read_text())
    # dropout on the routed router/expert LoRA (target_parameters) too
    assert config["lora_dropout"] == 0.1 and config["target_parameters"]
    capsys.readouterr()
    resumed = sft_workdir["root"] / "resume_single_resumed"
    checkpoint = single_process_run / f"checkpoint-{SAVE_STEPS}"
    run_in_process(sft_workdir, resumed, "--resume_from_checkpoint", str(checkpoint))
    assert len(logged_losses(capsys.readouterr().out)) == MAX_STEPS - SAVE_STEPS  # trained steps 3 and 4 only
    assert_resumed_at_the_checkpoint(resumed, single_process_run)
    assert_same_adapter(resumed, single_process_run)

    # the same checkpoint without its RNG state: other dropout masks, another adapter (so the equality above is the
    # masks being replayed, not dropout being inert)
    without_rng = sft_workdir["root"] / "checkpoint-without-rng"
    # (and without its completion marker, which lists the RNG state)
    shutil.copytree(checkpoint, without_rng, ignore=shutil.ignore_patterns("rng_state*", "checkpoint_complete.json"))
    other_masks = sft_workdir["root"] / "resume_single_other_masks"
    run_in_process(sft_workdir, other_masks, "--resume_from_checkpoint", str(without_rng))
    _, _, weights = adapter_format(other_masks)
    _, _, reference = adapter_format(single_process_run)
    assert any(not torch.equal(weights[name], reference[name]) for name in weights)


@pytest.fixture(scope="module")
def fsdp2_run(sft_workdir):  # noqa: F811
    """The recipe on 2 CPU processes through train/accelerate/fsdp2.yaml, uninterrupted: (output folder, stdout)."""
    output_dir = sft_workdir["root"] / "resume_fsdp2"
    result = launch(FSDP2, sft_workdir, output_dir, *RECIPE, "--use_cpu", "true")
    assert result.returncode == 0, result.stderr[-4000:]
    assert_two_ranks_shared_the_data(result.stderr, "FSDP2")
    assert checkpoints(output_dir) == [f"checkpoint-{SAVE_STEPS}", f"checkpoint-{MAX_STEPS}"]
    assert len(logged_losses(result.stdout)) == MAX_STEPS
    return output_dir, result.stdout


@pytest.mark.slow
def test_fsdp2_resumes_from_its_sharded_checkpoint(sft_workdir, fsdp2_run):  # noqa: F811
    reference, reference_stdout = fsdp2_run
    checkpoint = reference / f"checkpoint-{SAVE_STEPS}"
    # what is resumed from: torch.distributed.checkpoint shards of the model and the optimizer, one per rank, and
    # each rank's RNG state
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(path.name for path in (checkpoint / folder).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert sorted(path.name for path in checkpoint.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]

    resumed = sft_workdir["root"] / "resume_fsdp2_resumed"
    result = launch(
        FSDP2, sft_workdir, resumed, *RECIPE, "--use_cpu", "true", "--resume_from_checkpoint", str(checkpoint)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_two_ranks_shared_the_data(result.stderr, "FSDP2")
    # trained steps 3 and 4 only, with the uninterrupted run's losses
    assert logged_losses(result.stdout) == logged_losses(reference_stdout)[SAVE_STEPS:]
    assert_resumed_at_the_checkpoint(resumed, reference)
    assert_same_adapter(resumed, reference)


@pytest.mark.slow
def test_fsdp2_tower_lora_trains_and_saves_the_single_process_format(fsdp2_run, single_process_run):
    shapes, config, weights = adapter_format(fsdp2_run[0])
    reference_shapes, reference_config, _ = adapter_format(single_process_run)
    assert shapes == reference_shapes and config == reference_config
    for tower in TOWERS:
        tower_lora_B = [name for name in weights if name.startswith(tower) and ".lora_B." in name]
        assert tower_lora_B, f"no LoRA on {tower}"
        # LoRA's B starts at zero: each one moved, so every tower layer trained on the ranks that ran it
        assert all(weights[name].abs().sum() > 0 for name in tower_lora_B), tower
