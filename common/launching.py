# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Launch checks shared by the training scripts: every process says which rank of how many it is, a launch that would not
run as it claims is refused before any work, progress is logged at INFO on the main process only, and
`--resume_from_checkpoint true` means the last complete checkpoint of the output folder in every script, and no
command writes into its own inputs ([`check_output_dir`], [`atomic_output_dir`]).

Library code only (`qwen_omni.common.launching`); the remote-code files at the repository root never import it, so it is not
part of any checkpoint.

What accelerate 1.15 and torch 2.14 really do (read from their launch code):

- `accelerate launch --cpu --num_processes N` and `distributed_type: MULTI_CPU` without `--mpirun_hostfile` take the
  single-process launcher: ONE process is started, whatever N says.
- `torchrun --nproc_per_node N` (and accelerate's multi-GPU launcher, which calls it: `--multi_gpu`, the
  `MULTI_GPU`/`FSDP` configs) starts N processes. Without a GPU they form a process group only when the script is told
  to train on CPU (`--use_cpu true`: DDP over gloo); otherwise each one trains the whole model alone and they all
  write the same output folder.
- accelerate turns an FSDP plugin on only for GPU-like distributed types: on CPU processes it drops the plugin and the
  Trainer runs DDP. FSDP2 (`fully_shard`) itself works over gloo, so [`check_launch`] lets accelerate's FSDP2 path
  (wrapping, sharded checkpoints) run on CPU processes when they were asked for with `--use_cpu true`.
- DeepSpeed needs CUDA GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging as std_logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, TrainerCallback, TrainingArguments
from transformers.utils import logging


logger = logging.get_logger(__name__)

CPU_LAUNCH = "torchrun --nproc_per_node N <script> ... --use_cpu true"
# environment variables through which a launcher tells a process the size of its process group
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "false").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class LaunchRequest:
    """What the launcher asked of this process, read from the environment it started the process with and from the
    training arguments (`--fsdp`, `--deepspeed`)."""

    num_processes: int
    """Processes the launcher started (1 when it gave no world size)."""
    fsdp_version: int | None
    """FSDP version asked for (`ACCELERATE_USE_FSDP` / `--fsdp`), or None."""
    deepspeed: bool
    """DeepSpeed asked for (`ACCELERATE_USE_DEEPSPEED` / `--deepspeed`)."""
    lost_processes: bool
    """accelerate's single-process launcher was asked for several processes (it sets `MASTER_ADDR` only then) and
    started this one alone."""

    @classmethod
    def from_environment(
        cls, training_args: TrainingArguments | None = None, environ: Mapping[str, str] | None = None
    ) -> LaunchRequest:
        environ = os.environ if environ is None else environ
        num_processes = next((int(environ[name]) for name in WORLD_SIZE_VARIABLES if environ.get(name)), 1)
        fsdp_version = None
        if _flag(environ, "ACCELERATE_USE_FSDP"):
            fsdp_version = int(environ.get("FSDP_VERSION", "1"))
        elif training_args is not None and training_args.fsdp:
            fsdp_version = int((training_args.fsdp_config or {}).get("version", 2))
        deepspeed = _flag(environ, "ACCELERATE_USE_DEEPSPEED") or bool(
            training_args is not None and training_args.deepspeed
        )
        # accelerate's simple launcher always sets ACCELERATE_USE_CPU; its multi-process launchers never do
        lost_processes = (
            "ACCELERATE_USE_CPU" in environ
            and "MASTER_ADDR" in environ
            and "LOCAL_RANK" not in environ
            and num_processes == 1
        )
        return cls(num_processes, fsdp_version, deepspeed, lost_processes)


def refusal(request: LaunchRequest, *, device_type: str, world_size: int, has_gpu: bool) -> str | None:
    """Why this launch cannot run as asked (None when it can). `device_type` and `world_size` are what accelerate
    resolved for this process; `has_gpu` whether a CUDA GPU is visible."""
    if request.lost_processes:
        return (
            "accelerate launch started ONE process although several were asked for: in accelerate 1.15 "
            "`--num_processes N` with `--cpu` (or without `--multi_gpu` on a machine without GPUs) and "
            "`distributed_type: MULTI_CPU` without `--mpirun_hostfile` take the single-process path. For N processes "
            "on CPU (DDP over gloo) run "
            f"`{CPU_LAUNCH}` or `accelerate launch --config_file train/accelerate/cpu_2proc.yaml <script> ... "
            "--use_cpu true`."
        )
    if request.deepspeed and (device_type == "cpu" or not has_gpu):
        return (
            "DeepSpeed was asked for (ACCELERATE_USE_DEEPSPEED / --deepspeed, e.g. train/accelerate/"
            "deepspeed_zero3.yaml) but there is no CUDA GPU to run it on"
            + (" (--use_cpu is set)" if has_gpu else "")
            + f". DeepSpeed ZeRO-3 is GPU-only here; on CPU use DDP (`{CPU_LAUNCH}`) or FSDP2 "
            "(`accelerate launch --config_file train/accelerate/fsdp2.yaml --num_processes N <script> ... "
            "--use_cpu true`)."
        )
    if request.fsdp_version is not None and device_type == "cpu":
        if world_size == 1 and request.num_processes > 1:
            return (
                f"FSDP was asked for with {request.num_processes} processes, but there is no GPU and --use_cpu is "
                "not set, so the processes did not join one process group: each would train the whole model and "
                "write the same output_dir. Add `--use_cpu true` to shard over gloo on CPU (FSDP2 only), or "
                "launch on GPUs."
            )
        if request.fsdp_version != 2:
            return (
                f"FSDP version {request.fsdp_version} was asked for on CPU; only FSDP2 (`fully_shard`) runs on "
                "CPU processes. Use train/accelerate/fsdp2.yaml (fsdp_version: 2) or launch on GPUs."
            )
    if request.num_processes > 1 and world_size == 1:
        return (
            f"{request.num_processes} processes were started but they did not join one process group (no GPU, and "
            "--use_cpu is not set): each would train the whole model alone and write the same output_dir. Add "
            f"`--use_cpu true` for DDP over gloo on CPU (`{CPU_LAUNCH}`), or launch on GPUs."
        )
    return None


def configure_logging(level: int) -> None:
    """Show this package's and the running script's log records from `level` up, in transformers' format. (They are
    not under transformers' root logger, so without a handler Python would print warnings only.)"""
    for name in ("qwen_omni", "__main__"):
        named = std_logging.getLogger(name)
        named.setLevel(level)
        if not any(getattr(handler, "_qwen_omni", False) for handler in named.handlers):
            handler = std_logging.StreamHandler()
            handler.setFormatter(
                std_logging.Formatter("[%(levelname)s|%(filename)s:%(lineno)d] %(asctime)s >> %(message)s")
            )
            handler._qwen_omni = True
            named.addHandler(handler)


def configure_process_logging(training_args: TrainingArguments) -> None:
    """Progress at INFO on the main process and warnings only on the others; `--log_level` / `--log_level_replica`
    set transformers' own verbosity as in the Trainer (and ours too, when given)."""
    process_level = training_args.get_process_log_level()
    logging.set_verbosity(process_level)
    passive_main = training_args.should_log and training_args.log_level == "passive"
    configure_logging(std_logging.INFO if passive_main else process_level)
    # every process states its rank, world size and data share once: what a multi-process run is debugged from
    std_logging.getLogger(__name__).setLevel(min(std_logging.getLogger("qwen_omni").level, std_logging.INFO))


def check_launch(training_args: TrainingArguments, environ: Mapping[str, str] | None = None) -> LaunchRequest:
    """Set up logging per process ([`configure_process_logging`]), refuse a launch that would not run as asked, log
    this process's rank and the world size, and (FSDP2 on CPU processes) let accelerate's FSDP2 path run over gloo.
    Call it first in a training script's `main`.

    Raises:
        ValueError: naming what was asked for, why it cannot run here and the launch that does.
    """
    request = LaunchRequest.from_environment(training_args, environ)
    has_gpu = torch.cuda.is_available()
    # DeepSpeed without a GPU fails inside accelerate's state set-up (or silently becomes DDP under --use_cpu), so it
    # is refused before the device is resolved
    if request.deepspeed and (training_args.use_cpu or not has_gpu):
        raise ValueError(refusal(request, device_type="cpu", world_size=request.num_processes, has_gpu=has_gpu))
    device_type = training_args.device.type  # resolves accelerate's state: joins the process group, if any
    configure_process_logging(training_args)
    reason = refusal(request, device_type=device_type, world_size=training_args.world_size, has_gpu=has_gpu)
    if reason is not None:
        raise ValueError(reason)
    state = training_args.distributed_state
    if request.fsdp_version == 2 and device_type == "cpu":
        _let_accelerate_shard_cpu_processes()
    mode = "FSDP2" if request.fsdp_version == 2 else "DeepSpeed" if request.deepspeed else "DDP"
    logger.info(
        f"Process rank {training_args.process_index} of world size {training_args.world_size} (local rank "
        f"{training_args.local_process_index}) on {training_args.device}"
        + (f": {mode} over {state.backend}." if training_args.world_size > 1 else ": a single process.")
    )
    return request


def _let_accelerate_shard_cpu_processes() -> None:
    """Have accelerate's `AcceleratorState` honour an FSDP plugin on CPU processes.

    `AcceleratorState.__init__` turns the plugin into `DistributedType.FSDP` only in its branch for GPU-like
    distributed types and drops it for `MULTI_CPU`. Presenting the CPU process group as that branch's type for the
    duration of the call makes it take the FSDP path; the process group (gloo) and the device (cpu) stay those that
    `PartialState` set up, and the state ends as `DistributedType.FSDP`.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "shards_cpu_processes", False):
        return

    @functools.wraps(original)
    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        shared = PartialState._shared_state
        if fsdp_plugin is not None and shared.get("distributed_type") == DistributedType.MULTI_CPU:
            shared["distributed_type"] = DistributedType.MULTI_GPU
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)

    __init__.shards_cpu_processes = True
    AcceleratorState.__init__ = __init__


def shard_by_decoder_layer(model, decoder_layers) -> None:
    """Make FSDP's `TRANSFORMER_BASED_WRAP` (train/accelerate/fsdp2.yaml), which wraps the classes named in
    `model._no_split_modules`, shard `model` per decoder layer only.

    Every rank must gather the same FSDP units in the same order at each step. A multimodal model's towers run only on
    the ranks whose batch holds their modality, so wrapping their layers (as Qwen3-Omni's `_no_split_modules` asks,
    along with Talker classes that the Thinker loaded alone does not even contain) leaves the ranks waiting on
    different collectives as soon as their batches differ. The towers' weights stay in the root unit, which every rank
    gathers at each forward.
    """
    model._no_split_modules = {type(layer).__name__ for layer in decoder_layers}


class DistributedRunCallback(TrainerCallback):
    """Logs each process's share of the training data when training starts and, under FSDP, makes the final
    `Trainer.save_model` write the whole model as the model's own class.

    - With accelerate's `SHARDED_STATE_DICT` (train/accelerate/fsdp2.yaml, kept for the checkpoints, which every rank
      writes its shard of) `Trainer.save_model` writes no weights at all; switching to `FULL_STATE_DICT` once training
      has ended makes it gather the full state dict and save it (an adapter for PEFT models) from the main process.
    - FSDP2 turns the model into an instance of a subclass it creates in its own module (`FSDPOmniForCausalLM` in
      `torch.distributed.fsdp._fully_shard._fsdp_init`); `save_pretrained` of a remote-code model would then copy
      torch's FSDP files into the checkpoint and point `auto_map` at them. The subclass is given the name and module of
      the model's class, so the checkpoint gets the model's own code files.
    """

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is None or not hasattr(train_dataloader.dataset, "__len__"):
            return
        logger.info(
            f"Process rank {args.process_index} of world size {args.world_size}: {len(train_dataloader)} batches of "
            f"{args.per_device_train_batch_size} rows per epoch, of {len(train_dataloader.dataset)} training rows."
        )

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from accelerate.state import AcceleratorState
        from torch.distributed.fsdp import FSDPModule

        fsdp_plugin = AcceleratorState._shared_state.get("fsdp_plugin")
        if fsdp_plugin is None:
            return
        if "FULL_STATE_DICT" not in str(fsdp_plugin.state_dict_type):
            fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        if isinstance(model, FSDPModule):
            fsdp_class = type(model)
            model_class = next(cls for cls in fsdp_class.__mro__[1:] if not issubclass(cls, FSDPModule))
            fsdp_class.__module__, fsdp_class.__name__ = model_class.__module__, model_class.__name__
            fsdp_class.__qualname__ = model_class.__qualname__


# ---------------------------------------------------------------------------------------------------- output folders
def check_output_dir(
    output_dir: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], flag: str = "--output_dir"
) -> None:
    """Refuse an output folder that is, lies inside, or contains one of the command's local inputs (base checkpoint,
    adapter, data): writing there would overwrite the input or mix the output into it. Call it before any work.

    Args:
        output_dir: the folder the command writes.
        inputs: each input's flag (as the user wrote it, e.g. `"--model_name_or_path"`) and value; values that are
            not local paths (Hub ids) or None are not inputs on this machine and are left out.
        flag: the output's flag, for the message.

    Raises:
        ValueError: naming the output, the input it overlaps, how, and the fix.
    """
    output = Path(output_dir).resolve()
    for name, value in inputs.items():
        if value is None or not os.path.exists(value):
            continue
        source = Path(value).resolve()  # symlinks followed: a link to the base is the base
        if output == source:
            relation = "is"
        elif source in output.parents:
            relation = "is inside"
        elif output in source.parents:
            relation = "contains"
        else:
            continue
        raise ValueError(
            f"{flag} {output_dir} {relation} the input {name} {value}: the command would write into its own input "
            f"(overwrite it, or leave it loading as something else). Give {flag} a folder that neither is, lies "
            f"inside nor contains {value}."
        )


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, flag: str = "--output_dir") -> Iterator[str]:
    """Write a folder all at once: yields a new temporary sibling of `output_dir` (`.NAME.incomplete-XXXXXXXX`) to
    write into, which becomes `output_dir` by one rename when the block succeeds and is removed when it fails, so a
    failed command leaves no half-written output. An existing non-empty `output_dir` is refused on entry (before any
    work): it is never replaced or mixed into."""
    output = Path(output_dir).resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(
            f"{flag} {output_dir} already exists and is not empty; nothing is written into or over an existing "
            f"output. Remove it first, or give {flag} a new folder."
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.incomplete-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield str(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        output.rmdir()  # empty (checked on entry)
    os.rename(staging, output)


# ---------------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_COMPLETE_NAME = "checkpoint_complete.json"
"""Written last into each `checkpoint-N` by [`CompleteCheckpointsMixin`], once every process has written its part: the
checkpoint's files and their sizes. A checkpoint without it (or whose files differ from it) is incomplete."""


def _checkpoint_files(folder: str | os.PathLike) -> dict[str, int]:
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != CHECKPOINT_COMPLETE_NAME
    }


def mark_checkpoint_complete(folder: str | os.PathLike, global_step: int) -> None:
    """Write `folder`'s [`CHECKPOINT_COMPLETE_NAME`] (its files and sizes) in one rename: the marker is either absent
    or whole."""
    marker = Path(folder) / CHECKPOINT_COMPLETE_NAME
    partial = marker.with_name(f".{CHECKPOINT_COMPLETE_NAME}.partial")
    partial.write_text(json.dumps({"global_step": global_step, "files": _checkpoint_files(folder)}, indent=1))
    os.replace(partial, marker)


def incomplete_checkpoint_reason(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint `folder` is incomplete (None when it is complete): no completion marker, or a file of its
    marker missing or of another size (a checkpoint being deleted, or written over)."""
    marker = Path(folder) / CHECKPOINT_COMPLETE_NAME
    if not marker.is_file():
        return f"no {CHECKPOINT_COMPLETE_NAME} (its saving did not finish: the run stopped while writing it)"
    try:
        expected = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"its {CHECKPOINT_COMPLETE_NAME} is unreadable ({error})"
    present = _checkpoint_files(folder)
    for name, size in expected.items():
        if name not in present:
            return f"{name} is missing"
        if present[name] != size:
            return f"{name} has {present[name]} bytes, not the {size} it was saved with"
    return None


class CompleteCheckpointsMixin:
    """`Trainer` mixin: each `checkpoint-N` gets [`CHECKPOINT_COMPLETE_NAME`] as its last file, so that a run killed
    while saving never leaves a checkpoint that looks complete ([`resolve_resume_checkpoint`] skips it).

    transformers 5.23's `Trainer._save_checkpoint` writes straight into `checkpoint-N` (weights, optimizer, scheduler,
    RNG states, `trainer_state.json` last from the main process, without waiting for the other processes' files) and
    then deletes checkpoints beyond `save_total_limit`. Here the processes wait for each other, the main process marks
    the checkpoint complete, and only then are older checkpoints deleted: a kill at any point leaves a complete
    checkpoint to resume from. A checkpoint saved again (a run resumed from an earlier one) loses its marker first.
    """

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer import TRAINING_ARGS_NAME
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, CHECKPOINT_COMPLETE_NAME))
        save_total_limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation waits (below)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = save_total_limit
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        if os.path.isfile(os.path.join(folder, TRAINING_ARGS_NAME)):  # saved while the rotation was held back
            torch.save(self.args, os.path.join(folder, TRAINING_ARGS_NAME))
        mark_checkpoint_complete(folder, self.state.global_step)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )


def _checkpoints_by_step(output_dir: str) -> list[str]:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = {
        int(match.group(1)): os.path.join(output_dir, name)
        for name in os.listdir(output_dir)
        if (match := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    }
    return [steps[step] for step in sorted(steps, reverse=True)]


def resolve_resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` names: `true` (or `last`, `latest`) is the last complete
    `checkpoint-*` of `output_dir` (by step), as in the `transformers` examples (`Trainer` itself would take `true` for
    a folder name). Incomplete checkpoints ([`incomplete_checkpoint_reason`]: a run killed while saving) are skipped
    with a warning naming each and why. A folder named explicitly is refused when its marker does not match its files,
    and taken with a warning when it has no marker (written by a plain `Trainer`, or interrupted: the `Trainer`'s own
    checks follow)."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    if str(value).lower() in ("true", "last", "latest"):
        output_dir = training_args.output_dir
        checkpoints = _checkpoints_by_step(output_dir) if os.path.isdir(output_dir) else []
        if not checkpoints:
            raise ValueError(
                f"--resume_from_checkpoint {value}: {output_dir} holds no checkpoint-* folder. Name a checkpoint "
                "folder, or start without --resume_from_checkpoint."
            )
        skipped = []
        for checkpoint in checkpoints:
            reason = incomplete_checkpoint_reason(checkpoint)
            if reason is None:
                if skipped:
                    logger.warning(
                        f"--resume_from_checkpoint {value}: skipping incomplete {'; '.join(skipped)}. Resuming from "
                        f"{checkpoint}, the last complete checkpoint."
                    )
                return checkpoint
            skipped.append(f"{checkpoint} ({reason})")
        raise ValueError(
            f"--resume_from_checkpoint {value}: {output_dir} holds no complete checkpoint: {'; '.join(skipped)}. "
            "Name a checkpoint folder you know to be complete (--resume_from_checkpoint PATH), or start without "
            "--resume_from_checkpoint."
        )
    if not os.path.isdir(value):
        raise ValueError(f"--resume_from_checkpoint {value} does not exist; name a checkpoint-* folder or `true`.")
    reason = incomplete_checkpoint_reason(value)
    if reason is not None and (Path(value) / CHECKPOINT_COMPLETE_NAME).exists():
        raise ValueError(
            f"--resume_from_checkpoint {value} is incomplete: {reason}. Name a complete checkpoint folder, or `true` "
            "for the last complete one."
        )
    if reason is not None:  # written by a plain Trainer, or its saving was interrupted: the Trainer's checks follow
        logger.warning(f"--resume_from_checkpoint {value}: {reason}; taken as named.")
    return value


def checkpoint_model_type(
    argv: list[str], model_flags: tuple[str, ...] = ("--model_name_or_path",), trust_remote_code: bool = False
) -> str | None:
    """`model_type` of the checkpoint a command line names (one of `model_flags`, else `model_name_or_path` in
    `--config`'s YAML, at `--model_revision`), read before the script's own parser so that it can hand the command to
    the recipe of that model family; None when none is named."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument(*model_flags, dest="model_name_or_path")
    peek.add_argument("--model_revision")
    peek.add_argument("--config")
    known, _ = peek.parse_known_args(argv)
    name, revision = known.model_name_or_path, known.model_revision
    if known.config and name is None:
        with open(known.config) as f:
            values = yaml.safe_load(f) or {}
        name, revision = values.get("model_name_or_path"), values.get("model_revision", revision)
    if name is None:
        return None
    return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code).model_type
