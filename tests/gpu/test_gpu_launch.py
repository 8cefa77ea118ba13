"""GPU tier, launches: `train/sft.py` under FSDP2 and DeepSpeed ZeRO-3 with one process on one GPU, through the shipped
accelerate configs with `--num_processes 1`, so that their code paths have run at least once. On CPU the launcher's
choice and environment for those configs are checked (accelerate's own argument handling), then the test stops."""

import json
import subprocess
import sys

import pytest
import test_launch as cpu_launch  # accelerate's launcher choice, recorded
from gpu_testing import REPO_ROOT, SCRIPT_ENV, cuda_device, require_package
from safetensors.torch import load_file
from script_testing import TEXT_ROW, instruct_recipe_argv, load_script, sft_parser

from qwen_omni.common.launching import LaunchRequest
from qwen_omni.qwen3_omni import tiny_checkpoints


pytestmark = pytest.mark.gpu

MAX_STEPS = 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_launch")
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base")
    rows = [TEXT_ROW] * 8
    (root / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return {"root": root, "base": base, "data": str(root / "train.jsonl")}


def sft_args(workdir, output_dir):
    return instruct_recipe_argv(workdir, output_dir, MAX_STEPS, 2, 128, "--dtype", "bfloat16", "--bf16", "true")


# config file -> (accelerate's launcher, what the checkpoint of that engine holds)
ENGINES = {
    "fsdp2.yaml": ("torchrun", "pytorch_model_fsdp_0/__0_0.distcp"),
    "deepspeed_zero3.yaml": ("deepspeed", f"global_step{MAX_STEPS}/zero_pp_rank_0_mp_rank_00_model_states.pt"),
}


@pytest.mark.parametrize("config_file", list(ENGINES))
def test_sft_with_one_process_on_one_gpu_under_the_shipped_config(config_file, workdir, record_figure):
    expected_launcher, checkpoint_file = ENGINES[config_file]
    launch_args = ["--config_file", str(REPO_ROOT / "train" / "accelerate" / config_file), "--num_processes", "1"]
    launcher, num_processes, environ = cpu_launch.launched(*launch_args)
    request = LaunchRequest.from_environment(environ=environ)
    assert (launcher, num_processes) == (expected_launcher, 1)
    assert (request.fsdp_version, request.deepspeed) == ((2, False) if config_file == "fsdp2.yaml" else (None, True))
    output_dir = workdir["root"] / config_file.removesuffix(".yaml")
    sft = load_script("sft")
    parser = sft_parser(sft)
    parser.parse_args_and_config(args=sft_args(workdir, output_dir))  # the flags as the script reads them
    device = cuda_device(f"{config_file} launches on GPUs")
    if config_file == "deepspeed_zero3.yaml":
        require_package("deepspeed", "DeepSpeed ZeRO-3")
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--main_process_port",
        "0",
        *launch_args,
        str(REPO_ROOT / "train" / "sft.py"),
        *sft_args(workdir, output_dir),
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=SCRIPT_ENV, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Process rank 0 of world size 1 (local rank 0) on {device.type}" in result.stderr
    # the engine really ran: its own checkpoint format
    assert (output_dir / f"checkpoint-{MAX_STEPS}" / checkpoint_file).exists(), sorted(
        str(path.relative_to(output_dir)) for path in output_dir.rglob("*")
    )
    weights = load_file(output_dir / "adapter_model.safetensors")
    record_figure("adapter_tensors", len(weights))
    assert any(".mlp.experts." in name for name in weights)
    # LoRA's B starts at zero: every B (attention, router, experts) moved
    assert all(value.abs().sum() > 0 for name, value in weights.items() if ".lora_B." in name)
