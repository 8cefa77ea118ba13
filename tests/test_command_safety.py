"""Careless commands are refused or survived: no command writes into its own inputs, a merge is written all at once,
a run killed while saving a checkpoint resumes from the last complete one, and impossible values (`--lora_r 0`, an
adapter whose base is not there, a config with no experts) are refused with one line naming the value and the fix."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from script_testing import load_script, sft_parser  # noqa: E402
from transformers import TrainingArguments

from qwen_omni.common.launching import (
    CHECKPOINT_COMPLETE_NAME,
    check_output_dir,
    incomplete_checkpoint_reason,
    mark_checkpoint_complete,
    resolve_resume_checkpoint,
)
from qwen_omni.qwen3_omni import tiny_checkpoints

from omni_testing import REPO_ROOT  # noqa: E402


ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
}


# --- a run killed while saving a checkpoint --------------------------------------------------------------------------

# A real training run (Trainer with the recipes' CompleteCheckpointsMixin) saving every 2 steps; KILL_AT names the
# moment it SIGKILLs itself: "rng_state" while checkpoint-4 is being written (weights and optimizer written, RNG state
# and trainer_state.json not), "rotation" while checkpoint-2 is being deleted for save_total_limit=1 (after one file).
TRAINING_RUN = textwrap.dedent("""
    import os, shutil, signal, sys
    import torch
    import transformers.trainer_utils
    from transformers import Trainer, TrainingArguments
    from qwen_omni.common.launching import CompleteCheckpointsMixin, resolve_resume_checkpoint

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
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
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
    with caplog.at_level("WARNING", logger="qwen_omni.common.launching"):
        assert resolved(tmp_path) == str(tmp_path / "checkpoint-2")
    assert (
        f"skipping incomplete {tmp_path / 'checkpoint-4'} (no {CHECKPOINT_COMPLETE_NAME} (its saving did not "
        f"finish: the run stopped while writing it)). Resuming from {tmp_path / 'checkpoint-2'}"
    ) in caplog.text

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
    with pytest.raises(
        ValueError,
        match=r"holds no complete checkpoint: .*checkpoint-4 \(no checkpoint_complete\.json"
        r".*checkpoint-2 \(no .*Name a checkpoint folder you know to be complete",
    ):
        resolved(tmp_path)
    # a folder named explicitly without a marker (a plain Trainer's) is taken, saying so; one whose marker does not
    # match its files is refused
    with caplog.at_level("WARNING", logger="qwen_omni.common.launching"):
        assert resolved(tmp_path, str(tmp_path / "checkpoint-2")) == str(tmp_path / "checkpoint-2")
    assert f"--resume_from_checkpoint {tmp_path / 'checkpoint-2'}: no {CHECKPOINT_COMPLETE_NAME}" in caplog.text
    mark_checkpoint_complete(tmp_path / "checkpoint-4", 4)
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"01")
    with pytest.raises(ValueError, match=r"checkpoint-4 is incomplete: model\.safetensors has 2 bytes, not the 1"):
        resolved(tmp_path, str(tmp_path / "checkpoint-4"))


# --- no command writes into its own inputs --------------------------------------------------------------------------


def snapshot(folder):
    """Every file under `folder` with its size and modification time: what "left untouched" is checked against."""
    return {
        path.relative_to(folder): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The tiny Qwen3-Omni checkpoint, a Thinker LoRA adapter trained on nothing (B made non-zero) that names it as
    its base, and a conversation file."""
    import torch
    from peft import get_peft_model

    from qwen_omni.qwen3_omni import build_lora_config, load_thinker

    root = tmp_path_factory.mktemp("command_safety")
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base")
    thinker = load_thinker(base, dtype="float32")
    model = get_peft_model(thinker, build_lora_config(thinker, r=2, lora_alpha=4, target_experts=False))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0.0, 0.1)
    model.save_pretrained(root / "adapter")
    (root / "data").mkdir()
    rows = [{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}] * 4
    (root / "data" / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return {"root": root, "base": Path(base), "adapter": root / "adapter", "data": root / "data" / "train.jsonl"}


def test_output_folder_that_is_inside_or_contains_an_input_is_refused(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "data.jsonl").write_text("{}")
    os.symlink(tmp_path / "base", tmp_path / "link")
    inputs = {
        "--model_name_or_path": str(tmp_path / "base"),
        "--dataset_name": str(tmp_path / "data.jsonl"),
        "--codec": "hubertsiuzdak/snac_24khz",
    }  # a Hub id: not a local input
    for output, relation, name in [
        ("base", "is", "--model_name_or_path"),
        ("link", "is", "--model_name_or_path"),
        ("base/out", "is inside", "--model_name_or_path"),
        ("link/a/b", "is inside", "--model_name_or_path"),
        (".", "contains", "--model_name_or_path"),
        ("data.jsonl", "is", "--dataset_name"),
    ]:
        with pytest.raises(ValueError) as refused:
            check_output_dir(tmp_path / output, inputs)
        value = inputs[name]
        assert str(refused.value) == (
            f"--output_dir {tmp_path / output} {relation} the input {name} {value}: the command would write into its "
            f"own input (overwrite it, or leave it loading as something else). Give --output_dir a folder that "
            f"neither is, lies inside nor contains {value}."
        )
    for output in ("base2", "out", "base-sft/checkpoint-1"):  # siblings, even with a common prefix
        check_output_dir(tmp_path / output, inputs)


def test_merge_into_its_base_or_its_adapter_is_refused_before_any_work(workdir):
    base, adapter = workdir["base"], workdir["adapter"]
    before = snapshot(workdir["root"])
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train" / "merge.py"), "--adapter", str(adapter), "--output_dir", str(base)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"ValueError: --output_dir {base} is the input the adapter's base_model_name_or_path {base}: the command "
        f"would write into its own input (overwrite it, or leave it loading as something else). Give --output_dir a "
        f"folder that neither is, lies inside nor contains {base}."
    )
    from qwen_omni.qwen3_omni import merge_adapter

    for output, relation, name in [
        (adapter, "is", "--adapter"),
        (adapter / "merged", "is inside", "--adapter"),
        (workdir["root"], "contains", "--adapter"),
        (base / "merged", "is inside", "--base_model"),
    ]:
        with pytest.raises(ValueError, match=f"--output_dir {output} {relation} the input {name} "):
            merge_adapter(str(adapter), str(output), base_model_name_or_path=str(base) if "base" in name else None)
    assert snapshot(workdir["root"]) == before


def test_talker_voice_merge_into_its_adapter_is_refused(workdir, tmp_path):
    from qwen_omni.qwen3_omni.adapter_merge import merge_talker_voice_adapter

    shutil.copytree(workdir["adapter"], tmp_path / "voice")
    (tmp_path / "voice" / "talker_voice_config.json").write_text(json.dumps({"speaker_name": "nova"}))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"^--output_dir {tmp_path / 'voice'} is the input --adapter "):
        merge_talker_voice_adapter(str(tmp_path / "voice"), str(tmp_path / "voice"))
    assert snapshot(tmp_path) == before


def test_merge_is_written_all_at_once(workdir, tmp_path, monkeypatch):
    from transformers import Qwen3OmniMoeForConditionalGeneration

    from qwen_omni.qwen3_omni import merge_adapter

    adapter = str(workdir["adapter"])
    # an existing non-empty output is refused before anything is loaded, and left as it was
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(
        ValueError,
        match=rf"--output_dir {tmp_path / 'taken'} already exists and is not empty.*Remove "
        r"it first, or give --output_dir a new folder",
    ):
        merge_adapter(adapter, str(tmp_path / "taken"))
    assert os.listdir(tmp_path / "taken") == ["notes.txt"]

    # a merge that fails while writing leaves neither the output nor its temporary folder
    def write_half_then_fail(self, folder, **kwargs):
        Path(folder, "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Qwen3OmniMoeForConditionalGeneration, "save_pretrained", write_half_then_fail)
        with pytest.raises(OSError, match="No space left"):
            merge_adapter(adapter, str(tmp_path / "merged"))
    assert os.listdir(tmp_path) == ["taken"]

    assert merge_adapter(adapter, str(tmp_path / "merged")) == str(tmp_path / "merged")
    assert sorted(os.listdir(tmp_path)) == ["merged", "taken"]
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(os.listdir(tmp_path / "merged"))
    assert "adapter_config.json" not in os.listdir(tmp_path / "merged")


def test_merge_names_a_missing_base_and_the_flag_that_gives_it(workdir, tmp_path):
    shutil.copytree(workdir["adapter"], tmp_path / "moved")
    config = json.loads((tmp_path / "moved" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "elsewhere" / "base")
    (tmp_path / "moved" / "adapter_config.json").write_text(json.dumps(config))
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train" / "merge.py"),
            "--adapter",
            str(tmp_path / "moved"),
            "--output_dir",
            str(tmp_path / "merged"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"ValueError: The adapter {tmp_path / 'moved'} names its base as '{tmp_path / 'elsewhere' / 'base'}' "
        "(base_model_name_or_path in its adapter_config.json), which does not exist on this machine: give the base "
        "checkpoint's folder with --base_model PATH (merge_adapter's base_model_name_or_path)."
    )
    from qwen_omni.qwen3_omni import merge_adapter

    with pytest.raises(ValueError, match=rf"^--base_model {tmp_path / 'nowhere'} does not exist: name the folder"):
        merge_adapter(str(tmp_path / "moved"), str(tmp_path / "merged"), str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=rf"^--adapter {tmp_path / 'no-adapter'} does not exist"):
        merge_adapter(str(tmp_path / "no-adapter"), str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def parse_sft_run(sft, workdir, output_dir, *extra):
    """`train/sft.py`'s parsed arguments for a CPU run on `workdir`'s base and data into `output_dir`."""
    return sft_parser(sft).parse_args_and_config(
        args=[
            "--model_name_or_path",
            str(workdir["base"]),
            "--dataset_name",
            str(workdir["data"]),
            "--output_dir",
            str(output_dir),
            "--report_to",
            "none",
            "--use_cpu",
            "true",
            *extra,
        ]
    )


def test_sft_into_its_base_or_data_is_refused_before_any_work(workdir):
    sft = load_script("sft")
    before = snapshot(workdir["root"])
    data_dir = workdir["data"].parent
    for output, relation, name, value in [
        (workdir["base"], "is", "--model_name_or_path", workdir["base"]),
        (workdir["base"] / "sft", "is inside", "--model_name_or_path", workdir["base"]),
        (data_dir, "contains", "--dataset_name", workdir["data"]),
    ]:
        args = parse_sft_run(sft, workdir, output)
        with pytest.raises(ValueError, match=f"^--output_dir {output} {relation} the input {name} {value}: "):
            sft.main(*args)
    assert snapshot(workdir["root"]) == before


def test_talker_voice_and_omni_scripts_into_their_inputs_are_refused(workdir, tmp_path):
    talker = load_script("talker_voice_sft")
    parser = talker.TrlParser(
        (talker.ScriptArguments, talker.Qwen3OmniSFTConfig, talker.Qwen3OmniModelConfig, talker.TalkerVoiceArguments)
    )
    before = snapshot(workdir["root"])
    args = parser.parse_args_and_config(
        args=[
            "--model_name_or_path",
            str(workdir["base"]),
            "--dataset_name",
            str(tmp_path),
            "--speaker_name",
            "nova",
            "--output_dir",
            str(workdir["base"]),
            "--report_to",
            "none",
            "--use_cpu",
            "true",
        ]
    )
    with pytest.raises(ValueError, match=f"^--output_dir {workdir['base']} is the input --model_name_or_path "):
        talker.main(*args)
    assert snapshot(workdir["root"]) == before

    from trl import ScriptArguments, SFTConfig

    from qwen_omni.common.lora_arguments import LoraModelConfig
    from qwen_omni.omni import voice_sft

    (tmp_path / "clips").mkdir()
    inside = tmp_path / "clips" / "out"
    with pytest.raises(ValueError, match=f"^--output_dir {inside} is inside the input --dataset_name"):
        voice_sft.main(
            ScriptArguments(dataset_name=str(tmp_path / "clips")),
            SFTConfig(output_dir=str(tmp_path / "clips" / "out"), report_to="none", use_cpu=True),
            LoraModelConfig(model_name_or_path=str(workdir["base"])),
        )
    pretrain = load_script("pretrain")
    with pytest.raises(ValueError, match=f"^--output_dir {tmp_path / 'clips'} is the input --dataset_name"):
        pretrain.main(
            *pretrain.parse_args(
                [
                    "--dataset_name",
                    str(tmp_path / "clips"),
                    "--output_dir",
                    str(tmp_path / "clips"),
                    "--report_to",
                    "none",
                ]
            )
        )
    assert os.listdir(tmp_path / "clips") == []


# --- impossible values refused where they are given -----------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--lora_r", "0"],
            (
                "--lora_r 0: a LoRA rank is the number of dimensions of the update and must be at least 1 "
                "(e.g. --lora_r 16)."
            ),
        ),
        (["--lora_r", "-4"], "--lora_r -4: a LoRA rank"),
        (["--lora_expert_r", "0"], "--lora_expert_r 0: a LoRA rank"),
        (
            ["--lora_alpha", "0"],
            (
                "--lora_alpha 0: the LoRA update is scaled by --lora_alpha / --lora_r, so it must be "
                "positive (commonly twice the rank, e.g. --lora_alpha 32 with --lora_r 16)."
            ),
        ),
    ],
)
def test_lora_rank_and_alpha_that_cannot_train_are_refused_at_parsing(flags, message):
    sft, talker = load_script("sft"), load_script("talker_voice_sft")
    omni_voice = load_script("omni_voice_sft")
    parsers = {
        "sft": sft_parser(sft),
        "talker_voice_sft": talker.TrlParser(
            (
                talker.ScriptArguments,
                talker.Qwen3OmniSFTConfig,
                talker.Qwen3OmniModelConfig,
                talker.TalkerVoiceArguments,
            )
        ),
        "omni_voice_sft": omni_voice.TrlParser(
            (
                omni_voice.ScriptArguments,
                omni_voice.SFTConfig,
                omni_voice.LoraModelConfig,
                omni_voice.VoiceSFTArguments,
            )
        ),
    }
    for script, parser in parsers.items():
        if script == "omni_voice_sft" and flags[0] == "--lora_expert_r":
            continue  # the Omni model has no experts
        with pytest.raises(ValueError) as refused:
            parser.parse_args_and_config(
                args=[
                    "--model_name_or_path",
                    "m",
                    "--dataset_name",
                    "d",
                    "--output_dir",
                    "o",
                    "--report_to",
                    "none",
                    "--bf16",
                    "false",
                    "--use_peft",
                    "true",
                    *flags,
                ]
            )
        assert str(refused.value).startswith(message), (script, str(refused.value))
    # without LoRA the LoRA flags are unused, and not checked
    parsers["sft"].parse_args_and_config(
        args=[
            "--model_name_or_path",
            "m",
            "--dataset_name",
            "d",
            "--output_dir",
            "o",
            "--use_peft",
            "false",
            "--lora_r",
            "0",
        ]
    )


@pytest.mark.parametrize(
    "part, name, value, least",
    [
        ("text_config", "num_experts", 0, 1),
        ("text_config", "num_hidden_layers", 0, 1),
        ("text_config", "hidden_size", -8, 1),
        ("audio_config", "encoder_layers", -1, 1),
        ("vision_config", "depth", 0, 1),
        ("text_config", "shared_expert_intermediate_size", -1, 0),
    ],
)
def test_memory_estimate_refuses_a_config_no_model_can_be_built_from(part, name, value, least, tmp_path, capsys):
    config = tiny_checkpoints.build_config(tiny_checkpoints.build_tokenizer())
    setattr(getattr(config.thinker_config, part), name, value)
    config.save_pretrained(tmp_path / "model")
    sft = load_script("sft")
    args = sft_parser(sft).parse_args_and_config(
        args=[
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--dataset_name",
            "d",
            "--output_dir",
            str(tmp_path / "out"),
            "--estimate_memory",
            "true",
            "--report_to",
            "none",
        ]
    )
    with pytest.raises(ValueError) as refused:
        sft.main(*args)
    assert str(refused.value) == (
        f"thinker_config.{part}.{name} = {value} in the checkpoint's config: a Qwen3-Omni Thinker needs at least "
        f"{least}, so there is no model to estimate. Correct it in config.json."
    )
    assert capsys.readouterr().out == ""  # no figure printed


def test_memory_estimate_refuses_more_experts_per_token_than_experts():
    from qwen_omni.qwen3_omni.memory_estimate import estimate_training_memory

    config = tiny_checkpoints.build_config(tiny_checkpoints.build_tokenizer())
    text_config = config.thinker_config.text_config
    text_config.num_experts_per_tok = text_config.num_experts + 1
    with pytest.raises(
        ValueError,
        match=rf"^thinker_config\.text_config\.num_experts_per_tok = "
        rf"{text_config.num_experts + 1} .* more than its num_experts = "
        rf"{text_config.num_experts}: each token",
    ):
        estimate_training_memory(config)


def test_sft_resume_without_a_complete_checkpoint_stops_before_loading_anything(workdir, tmp_path):
    sft = load_script("sft")
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"0")
    args = parse_sft_run(sft, workdir, tmp_path, "--resume_from_checkpoint", "true")
    with pytest.raises(
        ValueError,
        match=rf"^--resume_from_checkpoint true: {tmp_path} holds no complete checkpoint: "
        rf"{tmp_path / 'checkpoint-3'} \(no checkpoint_complete\.json",
    ):
        sft.main(*args)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]  # no data report: the data was not read
