"""Launches that really distribute: what accelerate's launchers start for each shipped config, the refusal of launches
that cannot run as claimed, and real two-process CPU runs of train/sft.py (DDP and FSDP2 over gloo) with the world
size asserted inside the run. The two-process run of train/pretrain.py is in test_pretrain.py."""

import json
import math
import os
import re
import subprocess
import sys
from unittest import mock

import pytest
import torch
from accelerate.commands import launch as accelerate_launch
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
from safetensors.torch import load_file
from script_testing import instruct_recipe_argv, load_script, mixed_conversation_rows, sft_parser
from transformers import TrainingArguments

from qwen_omni.common.launching import (
    CHECKPOINT_COMPLETE_NAME,
    LaunchRequest,
    check_launch,
    incomplete_checkpoint_reason,
    mark_checkpoint_complete,
    refusal,
    resolve_resume_checkpoint,
)
from qwen_omni.qwen3_omni import tiny_checkpoints

from omni_testing import REPO_ROOT  # noqa: E402


CONFIGS = REPO_ROOT / "train" / "accelerate"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens on a machine without a GPU")


def launched(*launch_args):
    """`(launcher, num_processes, environment of rank 0)` that `accelerate launch *launch_args script` gives: accelerate's
    own argument handling and launcher choice, with the launchers replaced by a recorder; a torchrun-style launcher's
    per-rank variables are those torchrun sets."""
    calls = []
    with (
        mock.patch.object(accelerate_launch, "simple_launcher", lambda args: calls.append(("simple", args))),
        mock.patch.object(accelerate_launch, "multi_gpu_launcher", lambda args: calls.append(("torchrun", args))),
        mock.patch.object(accelerate_launch, "deepspeed_launcher", lambda args: calls.append(("deepspeed", args))),
    ):
        parser = accelerate_launch.launch_command_parser()
        accelerate_launch.launch_command(parser.parse_args([*launch_args, "train/sft.py"]))
    ((launcher, args),) = calls
    if launcher == "simple":
        # the single-process launcher runs the script once, whatever --num_processes says
        return launcher, 1, prepare_simple_launcher_cmd_env(args)[1]
    environ = prepare_multi_gpu_env(args) if launcher == "torchrun" else prepare_deepspeed_cmd_env(args)[1]
    nproc = int(args.nproc_per_node)
    return (
        launcher,
        nproc,
        {**environ, "WORLD_SIZE": str(nproc), "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(nproc)},
    )


def test_accelerate_cpu_flag_starts_one_process_and_is_refused():
    launcher, num_processes, environ = launched("--cpu", "--num_processes", "2")
    assert (launcher, num_processes) == ("simple", 1)
    request = LaunchRequest.from_environment(environ=environ)
    assert request.lost_processes and request.num_processes == 1
    reason = refusal(request, device_type="cpu", world_size=1, has_gpu=False)
    assert "started ONE process" in reason and "torchrun --nproc_per_node N" in reason and "--use_cpu true" in reason
    # the same without --cpu on a machine without GPUs
    if not torch.cuda.is_available():
        launcher, num_processes, environ = launched("--num_processes", "2")
        assert (launcher, num_processes) == ("simple", 1)
        assert LaunchRequest.from_environment(environ=environ).lost_processes
    # one process asked for, one started: nothing to refuse
    launcher, num_processes, environ = launched("--cpu", "--num_processes", "1")
    assert (
        refusal(LaunchRequest.from_environment(environ=environ), device_type="cpu", world_size=1, has_gpu=False)
        is None
    )


def test_cpu_2proc_config_starts_two_processes_that_must_be_told_to_use_the_cpu():
    launcher, num_processes, environ = launched("--config_file", str(CONFIGS / "cpu_2proc.yaml"))
    assert (launcher, num_processes) == ("torchrun", 2)
    request = LaunchRequest.from_environment(environ=environ)
    assert (request.num_processes, request.fsdp_version, request.deepspeed) == (2, None, False)
    # with --use_cpu true accelerate joins the two ranks over gloo (world size 2): runs
    assert refusal(request, device_type="cpu", world_size=2, has_gpu=False) is None
    # without it, on a machine without a GPU, each rank is a separate world of 1: refused
    reason = refusal(request, device_type="cpu", world_size=1, has_gpu=False)
    assert "2 processes were started but they did not join one process group" in reason and "--use_cpu true" in reason


def test_gpu_configs_without_a_gpu_are_refused():
    launcher, num_processes, environ = launched("--config_file", str(CONFIGS / "multi_gpu.yaml"))
    assert (launcher, num_processes) == ("torchrun", 8)
    assert "did not join one process group" in refusal(
        LaunchRequest.from_environment(environ=environ), device_type="cpu", world_size=1, has_gpu=False
    )
    assert (
        refusal(LaunchRequest.from_environment(environ=environ), device_type="cuda", world_size=8, has_gpu=True)
        is None
    )

    launcher, num_processes, environ = launched("--config_file", str(CONFIGS / "fsdp2.yaml"), "--num_processes", "2")
    request = LaunchRequest.from_environment(environ=environ)
    assert (launcher, num_processes, request.fsdp_version) == ("torchrun", 2, 2)
    assert "FSDP was asked for with 2 processes, but there is no GPU" in refusal(
        request, device_type="cpu", world_size=1, has_gpu=False
    )
    assert refusal(request, device_type="cpu", world_size=2, has_gpu=False) is None  # --use_cpu true: FSDP2 over gloo
    fsdp1 = LaunchRequest(num_processes=2, fsdp_version=1, deepspeed=False, lost_processes=False)
    assert "only FSDP2" in refusal(fsdp1, device_type="cpu", world_size=2, has_gpu=False)

    launcher, num_processes, environ = launched("--config_file", str(CONFIGS / "deepspeed_zero3.yaml"))
    request = LaunchRequest.from_environment(environ=environ)
    assert (launcher, num_processes, request.deepspeed) == ("deepspeed", 8, True)
    assert "DeepSpeed ZeRO-3 is GPU-only" in refusal(request, device_type="cpu", world_size=8, has_gpu=False)
    assert "(--use_cpu is set)" in refusal(request, device_type="cpu", world_size=8, has_gpu=True)
    assert refusal(request, device_type="cuda", world_size=8, has_gpu=True) is None


def test_resume_from_checkpoint_true_is_the_last_complete_checkpoint(tmp_path):
    def resolved(value):
        return resolve_resume_checkpoint(TrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint=value))

    with pytest.raises(ValueError, match=r"--resume_from_checkpoint true: .* holds no checkpoint-\* folder"):
        resolved("true")
    for step in (2, 10, 4):
        os.makedirs(tmp_path / f"checkpoint-{step}")
        mark_checkpoint_complete(tmp_path / f"checkpoint-{step}", step)
    assert resolved("true") == resolved("last") == str(tmp_path / "checkpoint-10")  # by step, not by name
    assert resolved(str(tmp_path / "checkpoint-2")) == str(tmp_path / "checkpoint-2")
    assert resolved(None) is None and resolved("false") is None
    with pytest.raises(ValueError, match="--resume_from_checkpoint .*checkpoint-3 does not exist"):
        resolved(str(tmp_path / "checkpoint-3"))


def test_single_process_is_logged_with_its_rank(tmp_path, caplog):
    with caplog.at_level("INFO", logger="qwen_omni.common.launching"):
        request = check_launch(TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"), environ={})
    assert request == LaunchRequest(num_processes=1, fsdp_version=None, deepspeed=False, lost_processes=False)
    assert "Process rank 0 of world size 1 (local rank 0) on cpu: a single process." in caplog.text


@NO_GPU
def test_scripts_refuse_before_any_work(tmp_path, monkeypatch):
    """pretrain.py and sft.py check the launch first: nothing is built, loaded or written."""
    pretrain, sft = load_script("pretrain"), load_script("sft")
    pretrain_args = pretrain.parse_args(["--output_dir", str(tmp_path / "pretrain"), "--report_to", "none"])
    parser = sft_parser(sft)
    sft_args = parser.parse_args_and_config(
        args=[
            "--model_name_or_path",
            str(tmp_path / "no-model"),
            "--dataset_name",
            str(tmp_path / "no-data.jsonl"),
            "--output_dir",
            str(tmp_path / "sft"),
            "--report_to",
            "none",
        ]
    )
    # accelerate launch --config_file train/accelerate/deepspeed_zero3.yaml on this machine (set after parsing: the
    # arguments would build a DeepSpeed plugin, which needs the deepspeed package, not installed here)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 is GPU-only"):
        pretrain.main(*pretrain_args)
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 is GPU-only"):
        sft.main(*sft_args)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    # accelerate launch --cpu --num_processes 2: one process started
    for name, value in launched("--cpu", "--num_processes", "2")[2].items():
        if name.startswith(("ACCELERATE_", "MASTER_")):
            monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="started ONE process"):
        pretrain.main(*pretrain_args)
    with pytest.raises(ValueError, match="started ONE process"):
        sft.main(*sft_args)
    assert not (tmp_path / "pretrain").exists() and not (tmp_path / "sft").exists()


# --- real two-process runs of train/sft.py on CPU ------------------------------------------------------------------

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
}
NUM_ROWS, BATCH_SIZE, MAX_STEPS = 12, 2, 2


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
    """The tiny Qwen3-Omni checkpoint and 12 rows (audio, image and text-only conversations)."""
    root = tmp_path_factory.mktemp("launch_sft")
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base")
    tiny_checkpoints.write_media(root / "data")
    rows = mixed_conversation_rows(NUM_ROWS // 3)
    (root / "data" / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return {"root": root, "base": base, "data": str(root / "data" / "train.jsonl")}


def sft_args(workdir, output_dir):
    flags = ("--dtype", "float32", "--gradient_checkpointing", "false")
    return instruct_recipe_argv(workdir, output_dir, MAX_STEPS, BATCH_SIZE, 256, *flags)


def launch(launcher_args, workdir, output_dir, *extra):
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--main_process_port",
        "0",
        *launcher_args,
        str(REPO_ROOT / "train" / "sft.py"),
        *sft_args(workdir, output_dir),
        *extra,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def assert_two_ranks_shared_the_data(log, mode):
    for rank in (0, 1):
        assert (
            f"Process rank {rank} of world size 2 (local rank {rank}) on cpu" in log and f": {mode} over gloo." in log
        )
        # each rank is given half of the rows: ceil(12 / (2 * 2)) = 3 batches of 2 per epoch (one process: 6)
        shares = re.findall(
            rf"Process rank {rank} of world size 2: (\d+) batches of {BATCH_SIZE} rows per epoch, "
            rf"of (\d+) training rows",
            log,
        )
        assert shares == [(str(math.ceil(NUM_ROWS / (2 * BATCH_SIZE))), str(NUM_ROWS))], shares


def adapter_format(folder):
    weights = load_file(folder / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    for key in ("target_modules", "target_parameters"):
        config[key] = sorted(config[key] or [])
    return {name: tuple(value.shape) for name, value in weights.items()}, config, weights


@pytest.fixture(scope="module")
def single_process_adapter(sft_workdir):
    """The same recipe trained by one process (in this one), the reference for the adapters' format."""
    sft = load_script("sft")
    parser = sft_parser(sft)
    output_dir = sft_workdir["root"] / "single"
    sft.main(*parser.parse_args_and_config(args=[*sft_args(sft_workdir, output_dir), "--use_cpu", "true"]))
    return output_dir


@pytest.mark.slow
def test_sft_ddp_on_two_cpu_processes(sft_workdir, single_process_adapter):
    output_dir = sft_workdir["root"] / "ddp"
    result = launch(["--config_file", str(CONFIGS / "cpu_2proc.yaml")], sft_workdir, output_dir, "--use_cpu", "true")
    assert result.returncode == 0, result.stderr[-4000:]
    assert_two_ranks_shared_the_data(result.stderr, "DDP")
    # one checkpoint and one adapter, written by the main process, in the single-process run's format
    assert sorted(p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint-")) == [
        f"checkpoint-{MAX_STEPS}"
    ]
    shapes, config, _ = adapter_format(output_dir)
    reference_shapes, reference_config, _ = adapter_format(single_process_adapter)
    assert shapes == reference_shapes and config == reference_config


@pytest.mark.slow
def test_sft_fsdp2_on_two_cpu_processes_saves_the_single_process_adapter_format(sft_workdir, single_process_adapter):
    output_dir = sft_workdir["root"] / "fsdp2"
    result = launch(
        ["--config_file", str(CONFIGS / "fsdp2.yaml"), "--num_processes", "2"],
        sft_workdir,
        output_dir,
        "--use_cpu",
        "true",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_two_ranks_shared_the_data(result.stderr, "FSDP2")
    # the checkpoint holds the sharded state of both ranks (torch.distributed.checkpoint, one file per rank)
    checkpoints = sorted(p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == [f"checkpoint-{MAX_STEPS}"]
    shards = sorted(p.name for p in (output_dir / checkpoints[0] / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    # marked complete once both ranks had written their parts: the marker lists every rank's shards and RNG state
    marker = json.loads((output_dir / checkpoints[0] / CHECKPOINT_COMPLETE_NAME).read_text())
    assert {f"{folder}/__{rank}_0.distcp" for folder in ("pytorch_model_fsdp_0", "optimizer_0") for rank in (0, 1)} | {
        "rng_state_0.pth",
        "rng_state_1.pth",
        "trainer_state.json",
    } <= set(marker["files"])
    assert incomplete_checkpoint_reason(output_dir / checkpoints[0]) is None
    # the final adapter is whole (gathered from the shards) and has the single-process adapter's keys, shapes and config
    shapes, config, weights = adapter_format(output_dir)
    reference_shapes, reference_config, _ = adapter_format(single_process_adapter)
    assert shapes == reference_shapes and config == reference_config
    # LoRA's B starts at zero: every B (attention, router, experts) moved, so every sharded layer trained
    assert all(value.abs().sum() > 0 for name, value in weights.items() if ".lora_B." in name)


@pytest.mark.slow
def test_qlora_fsdp2_on_two_cpu_processes_in_bf16_saves_the_bf16_base_adapter_format(
    sft_workdir, single_process_adapter
):
    # 4-bit experts, attention and towers, stored from the fp32 checkpoint, trained with --bf16 (TRL's default, kept
    # with --use_cpu): FSDP2 hands the 4-bit experts bf16 activations
    output_dir = sft_workdir["root"] / "qlora_fsdp2"
    result = launch(
        ["--config_file", str(CONFIGS / "fsdp2.yaml"), "--num_processes", "2"],
        sft_workdir,
        output_dir,
        "--use_cpu",
        "true",
        "--load_in_4bit",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_two_ranks_shared_the_data(result.stderr, "FSDP2")
    shapes, config, weights = adapter_format(output_dir)
    reference_shapes, reference_config, _ = adapter_format(single_process_adapter)
    # the expert wrappers are nested as on the fp32 base: the same keys, so the adapter merges onto it
    assert shapes == reference_shapes and config == reference_config
    assert all(value.abs().sum() > 0 for name, value in weights.items() if ".lora_B." in name)


@NO_GPU
@pytest.mark.slow
def test_fsdp2_config_without_gpu_or_use_cpu_stops_with_a_clear_error(sft_workdir):
    output_dir = sft_workdir["root"] / "refused"
    result = launch(["--config_file", str(CONFIGS / "fsdp2.yaml"), "--num_processes", "2"], sft_workdir, output_dir)
    assert result.returncode != 0
    assert "FSDP was asked for with 2 processes, but there is no GPU and --use_cpu is not set" in result.stderr
    assert not output_dir.exists()  # no rank trained
