"""Fold a LoRA adapter into its Qwen3-Omni base and write a full checkpoint.

The output folder is never one of the inputs (nor inside or around them), and it is written all at once: into a
temporary sibling renamed to it on success (a failed merge leaves nothing); an existing non-empty output is refused.
"""

from __future__ import annotations

import os

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from peft import PeftConfig, PeftModel
from transformers import (
    AutoConfig,
    AutoProcessor,
    Qwen3OmniMoeForConditionalGeneration,
    Qwen3OmniMoeThinkerForConditionalGeneration,
)
from transformers.utils import logging

from ..common.launching import atomic_output_dir, check_output_dir
from .loading import FULL_MODEL_TYPE, load_thinker
from .peft_lora import silence_false_expert_rank_warning


logger = logging.get_logger(__name__)


def _is_local_or_hub_id(name: str) -> bool:
    """`name` is a local folder, or has the form of a Hub repo id (a path that is not there has not)."""
    if os.path.isdir(name):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_merge_inputs(adapter_path: str, base_model_name_or_path: str | None = None) -> tuple[str, str]:
    """The base an adapter is merged into, and the name of its flag: `base_model_name_or_path` (`--base_model`) or
    else the adapter's `base_model_name_or_path`. An adapter or base that is neither a local folder nor a Hub id is
    refused before anything is loaded.

    Raises:
        ValueError: naming the missing adapter or base and the flag that gives it.
    """
    if not _is_local_or_hub_id(adapter_path):
        raise ValueError(
            f"--adapter {adapter_path} does not exist: name the adapter's folder (adapter_config.json and "
            "adapter_model.safetensors)."
        )
    if base_model_name_or_path is not None:
        if not _is_local_or_hub_id(base_model_name_or_path):
            raise ValueError(
                f"--base_model {base_model_name_or_path} does not exist: name the folder of the checkpoint the "
                "adapter was trained on."
            )
        return base_model_name_or_path, "--base_model"
    base = PeftConfig.from_pretrained(adapter_path).base_model_name_or_path
    if not base or not _is_local_or_hub_id(base):
        raise ValueError(
            f"The adapter {adapter_path} names its base as {base!r} (base_model_name_or_path in its "
            "adapter_config.json), which does not exist on this machine: give the base checkpoint's folder with "
            "--base_model PATH (merge_adapter's base_model_name_or_path)."
        )
    return base, "the adapter's base_model_name_or_path"


def merge_adapter(
    adapter_path: str,
    output_dir: str,
    base_model_name_or_path: str | None = None,
    dtype: str | torch.dtype = "auto",
) -> str:
    """Merge the adapter at `adapter_path` into its base and save the result (and the base's processor) to `output_dir`.

    The base is always read from its original (bf16) checkpoint, also for an adapter trained on 4-bit experts
    (`--load_in_4bit`): the low-rank update is added to the full-precision weights, never to dequantized 4-bit ones.

    A full base (`qwen3_omni_moe`: thinker + talker + code2wav) gives a full checkpoint, loadable with
    `Qwen3OmniMoeForConditionalGeneration`, whose talker and code2wav are the base's; a thinker-only base gives a
    thinker checkpoint (`Qwen3OmniMoeThinkerForConditionalGeneration`).

    Args:
        adapter_path (`str`):
            Folder (or Hub id) of the adapter (`adapter_config.json` + `adapter_model.safetensors`).
        output_dir (`str`):
            Where the merged checkpoint is written: a new (or empty) folder, apart from the adapter and the base,
            written all at once (see the module docstring).
        base_model_name_or_path (`str`, *optional*):
            The base; defaults to the adapter config's `base_model_name_or_path`.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`):
            Dtype the base is loaded and saved in.
    """
    base, base_flag = resolve_merge_inputs(adapter_path, base_model_name_or_path)
    check_output_dir(output_dir, {"--adapter": adapter_path, base_flag: base})
    with atomic_output_dir(output_dir) as staging:
        if AutoConfig.from_pretrained(base).model_type == FULL_MODEL_TYPE:
            model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(base, dtype=dtype)
            model.thinker = _merged(model.thinker, adapter_path)
        else:
            model = _merged(load_thinker(base, dtype=dtype), adapter_path)
        _save_with_base_processor(model, base, staging)
    return output_dir


def _save_with_base_processor(model, base: str, output_dir: str) -> None:
    """Save the merged model and, when the base has one, its processor (a merge keeps the base's inputs)."""
    model.save_pretrained(output_dir)
    try:
        AutoProcessor.from_pretrained(base).save_pretrained(output_dir)
    except (OSError, ValueError) as error:
        logger.warning(f"The base {base!r} has no loadable processor, so none is saved with the merge: {error}")


def _merged(
    thinker: Qwen3OmniMoeThinkerForConditionalGeneration, adapter_path: str
) -> Qwen3OmniMoeThinkerForConditionalGeneration:
    config = PeftConfig.from_pretrained(adapter_path)
    if getattr(config, "target_parameters", None) and getattr(config, "lora_dropout", 0.0):
        # Dropout only acts in training: merging ignores it, and PEFT's parameter wrapper refuses to be built with it
        config.lora_dropout = 0.0
    with silence_false_expert_rank_warning():
        return PeftModel.from_pretrained(thinker, adapter_path, config=config).merge_and_unload()


def merge_talker_voice_adapter(
    adapter_path: str,
    output_dir: str,
    base_model_name_or_path: str | None = None,
    dtype: str | torch.dtype = "auto",
) -> str:
    """Merge a Talker voice adapter (`train/talker_voice_sft.py`) into its full Qwen3-Omni base and save the result.

    The adapter's LoRA (Talker attention, routers, experts, code predictor) and its trained codec-embedding row are
    folded into the Talker, and `talker_config.speaker_id` gains the adapter's speaker (from
    `talker_voice_config.json`; `voice_preservation.json`, which speakers were kept, is copied), so that `generate(..., speaker=NAME)` on the result speaks with the voice. The
    Thinker and code2wav are the base's tensors, written unchanged.

    Args:
        adapter_path (`str`): local folder of the adapter (with `talker_voice_config.json`).
        output_dir (`str`): where the merged checkpoint is written (a new folder, written all at once).
        base_model_name_or_path (`str`, *optional*): the base; defaults to the adapter config's.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): dtype the base is loaded and saved in.
    """
    from ..common.hub import TALKER_VOICE_CONFIG_NAME
    from .talker_voice import (
        load_talker_model,
        read_talker_voice_config,
        read_voice_preservation,
        write_voice_preservation,
    )

    voice = read_talker_voice_config(adapter_path)
    if voice is None:
        raise ValueError(
            f"{adapter_path} has no {TALKER_VOICE_CONFIG_NAME}: it is not a Talker voice adapter of "
            "train/talker_voice_sft.py. Merge Thinker adapters with merge_adapter."
        )
    base, base_flag = resolve_merge_inputs(adapter_path, base_model_name_or_path)
    check_output_dir(output_dir, {"--adapter": adapter_path, base_flag: base})
    with atomic_output_dir(output_dir) as staging:
        model = load_talker_model(base, dtype=dtype)
        with silence_false_expert_rank_warning():
            model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
        speakers = dict(model.config.talker_config.speaker_id or {})
        speakers[voice["speaker_name"]] = voice["speaker_codec_id"]
        model.config.talker_config.speaker_id = speakers
        _save_with_base_processor(model, base, staging)
        preservation = read_voice_preservation(adapter_path)
        if preservation is not None:  # which speakers still speak as the base, for the evaluation of the merge
            write_voice_preservation(staging, preservation)
    return output_dir
