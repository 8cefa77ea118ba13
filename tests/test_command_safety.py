"""Careless commands are refused or survived: no command writes into its own inputs, a merge is written all at once,
a run killed while saving a checkpoint resumes from the last complete one, and impossible values (`--lora_r 0`, an
adapter whose base is not there, a config with no experts) are refused with one line naming the value and the fix."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from transformers import TrainingArguments

from qwen_omni.launching import (
    CHECKPOINT_COMPLETE_NAME,
    atomic_output_dir,
    check_output_dir,
    incomplete_checkpoint_reason,
    mark_checkpoint_complete,
    resolve_resume_checkpoint,
)


sys.path.insert(0, os.path.dirname(__file__))
from omni_testing import REPO_ROOT  # noqa: E402


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
       "OMP_NUM_THREADS": "1"}


# --- a run killed while saving a checkpoint --------------------------------------------------------------------------

# A real training run (Trainer with the recipes' CompleteCheckpointsMixin) saving every 2 steps; KILL_AT names the
# moment it SIGKILLs itself: "rng_state" while checkpoint-4 is being written (weights and optimizer written, RNG state
# and trainer_state.json not), "rotation" while checkpoint-2 is being deleted for save_total_limit=1 (after one file).
TRAINING_RUN = textwrap.dedent("""
    import os, shutil, signal, sys
    import torch
    import transformers.trainer_utils
    from transformers import Trainer, TrainingArguments
    from qwen_omni.launching import CompleteCheckpointsMixin, resolve_resume_checkpoint

    output_dir, kill_at, resume, save_total_limit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def forward(self, x, labels):
            return {"loss": ((self.linear(x).squeeze(-1) - labels) ** 2).mean()}

    class RecipeTrainer(CompleteCheckpointsMixin, Trainer):
        def _save_rng_state(self, output_dir):
            if kill_at == "rng_state" and output_dir.endswith("checkpoint-4"):
                os.kill(os.getpid(), signal.SIGKILL)
            super()._save_rng_state(output_dir)

    def rmtree_then_kill(path, *args, **kwargs):
        if kill_at == "rotation":
            os.remove(os.path.join(path, "model.safetensors"))
            os.kill(os.getpid(), signal.SIGKILL)
        shutil.rmtree(path, *args, **kwargs)

    transformers.trainer_utils.shutil.rmtree = rmtree_then_kill  # the deletion rotate_checkpoints runs
    torch.manual_seed(0)
    data = [{"x": torch.randn(4), "labels": torch.randn(())} for _ in range(12)]
    args = TrainingArguments(
        output_dir=output_dir, max_steps=6, per_device_train_batch_size=2, save_strategy="steps", save_steps=2,
        save_total_limit=int(save_total_limit) or None, report_to="none", use_cpu=True, logging_steps=1,
        resume_from_checkpoint=resume, disable_tqdm=True,
    )
    trainer = RecipeTrainer(model=Regression(), args=args, train_dataset=data)
    trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(args))
    print("global step", trainer.state.global_step)
""")


def training_run(output_dir, kill_at="never", resume="false", save_total_limit=0):
    return subprocess.run(
        [sys.executable, "-c", TRAINING_RUN, str(output_dir), kill_at, resume, str(save_total_limit)],
        env=ENV, capture_output=True, text=True, timeout=300,
    )


def resolved(output_dir, value="true"):
    return resolve_resume_checkpoint(TrainingArguments(output_dir=str(output_dir), resume_from_checkpoint=value))


def test_a_run_killed_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path, caplog):
    killed = training_run(tmp_path, kill_at="rng_state")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # checkpoint-4 was left with its weights and optimizer but no RNG state, trainer_state.json or marker
    assert {"model.safetensors", "optimizer.pt"} <= set(os.listdir(tmp_path / "checkpoint-4"))
    assert not (tmp_path / "checkpoint-4" / "trainer_state.json").exists()
    assert incomplete_checkpoint_reason(tmp_path / "checkpoint-2") is None
    with caplog.at_level("WARNING", logger="qwen_omni.launching"):
        assert resolved(tmp_path) == str(tmp_path / "checkpoint-2")
    assert (f"skipping incomplete {tmp_path / 'checkpoint-4'} (no {CHECKPOINT_COMPLETE_NAME} (its saving did not "
            f"finish: the run stopped while writing it)). Resuming from {tmp_path / 'checkpoint-2'}") in caplog.text

    resumed = training_run(tmp_path, resume="true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "global step 6" in resumed.stdout and "Resuming from" in resumed.stderr
    # checkpoint-4 was written again, whole, over the incomplete one
    assert all(incomplete_checkpoint_reason(tmp_path / f"checkpoint-{step}") is None for step in (2, 4, 6))
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5, 6]


def test_a_run_killed_while_deleting_an_old_checkpoint_resumes_from_the_new_one(tmp_path):
    killed = training_run(tmp_path, kill_at="rotation", save_total_limit=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # checkpoint-4 was marked complete before checkpoint-2's deletion began; checkpoint-2 lost its weights
    assert incomplete_checkpoint_reason(tmp_path / "checkpoint-2") == "model.safetensors is missing"
    assert resolved(tmp_path) == str(tmp_path / "checkpoint-4")


def test_resume_refuses_when_no_checkpoint_is_complete(tmp_path, caplog):
    for step in (2, 4):
        os.makedirs(tmp_path / f"checkpoint-{step}")
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"0")
    with pytest.raises(ValueError, match=r"holds no complete checkpoint: .*checkpoint-4 \(no checkpoint_complete\.json"
                                         r".*checkpoint-2 \(no .*Name a checkpoint folder you know to be complete"):
        resolved(tmp_path)
    # a folder named explicitly without a marker (a plain Trainer's) is taken, saying so; one whose marker does not
    # match its files is refused
    with caplog.at_level("WARNING", logger="qwen_omni.launching"):
        assert resolved(tmp_path, str(tmp_path / "checkpoint-2")) == str(tmp_path / "checkpoint-2")
    assert f"--resume_from_checkpoint {tmp_path / 'checkpoint-2'}: no {CHECKPOINT_COMPLETE_NAME}" in caplog.text
    mark_checkpoint_complete(tmp_path / "checkpoint-4", 4)
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"01")
    with pytest.raises(ValueError, match=r"checkpoint-4 is incomplete: model\.safetensors has 2 bytes, not the 1"):
        resolved(tmp_path, str(tmp_path / "checkpoint-4"))
