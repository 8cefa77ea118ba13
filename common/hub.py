# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Publishing an Omni checkpoint (or a LoRA adapter) on the Hugging Face Hub.

[`push_to_hub`] checks everything before anything is uploaded: the repo id is `owner/name`; the folder holds every
code file its `auto_map` entries (and their relative imports) need; the folder reloads and generates in a fresh
interpreter that cannot import `qwen_omni` (as on a user's machine that only has the Hub folder); then it renders the
model card from `model_card.md` (huggingface_hub's `ModelCard` / `ModelCardData`, with a `model-index` of the
evaluation results) and only then calls `HfApi.create_repo` and `HfApi.upload_folder`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError
from huggingface_hub.utils import validate_repo_id as hf_validate_repo_id
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging


logger = logging.get_logger(__name__)

# The package root, which holds the remote-code files a checkpoint ships.
REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
# Written by the Talker voice recipe beside its adapter: the new speaker's name and codec id.
TALKER_VOICE_CONFIG_NAME = "talker_voice_config.json"
# Files whose `auto_map` names the remote-code modules of a checkpoint.
AUTO_MAP_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
ADAPTER_FILES = ("adapter_config.json",)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "eval/*.wav", "*.pt", "training_args.bin"]


def validate_repo_id(repo_id: str | None) -> str:
    """`owner/name` as the Hub accepts it (`huggingface_hub`'s own check), or a `ValueError` saying what is wrong and
    the fix. The owner is required, unlike on the Hub, because the model card's usage snippet names the full id."""
    try:
        hf_validate_repo_id(repo_id)
        valid = isinstance(repo_id, str) and repo_id.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise ValueError(
            f"repo id {repo_id!r} is not of the form 'owner/name' (a user or organisation, a slash, a model name; "
            "letters, digits, '-', '_' and '.'), e.g. --repo-id your-name/omni-nova."
        )
    return repo_id


def is_adapter(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def _auto_map_modules(folder: Path) -> dict[str, str]:
    """`{module: json file naming it}` for every `auto_map` entry of the folder's config files."""
    modules = {}
    for name in AUTO_MAP_FILES:
        path = folder / name
        if not path.is_file():
            continue
        auto_map = json.loads(path.read_text()).get("auto_map", {})
        for reference in auto_map.values():
            for item in reference if isinstance(reference, (list, tuple)) else [reference]:
                if item:
                    # "module.Class" or "repo--module.Class"
                    modules[item.split("--")[-1].rsplit(".", 1)[0]] = name
    return modules


def required_code_files(folder: str | os.PathLike) -> list[str]:
    """
    The Python files a folder needs for `trust_remote_code` loading: the modules its `auto_map` entries name, plus
    the modules those import relatively (transformers' own `get_relative_import_files`), read from the folder or, for
    the report of what is missing, from this repository.
    """
    folder = Path(folder)
    needed: set[str] = set()
    for module in _auto_map_modules(folder):
        filename = f"{module}.py"
        needed.add(filename)
        source = folder / filename if (folder / filename).is_file() else REPO_ROOT / filename
        if source.is_file():
            needed.update(Path(path).name for path in get_relative_import_files(source))
    return sorted(needed)


def check_folder(folder: str | os.PathLike) -> list[str]:
    """
    Check a folder is complete before upload; returns the code files it holds.

    Raises:
        `ValueError` naming the missing files and how to get them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass the directory written by save_pretrained / train/sft.py.")
    if is_adapter(folder):
        weights = [name for name in ADAPTER_WEIGHTS if (folder / name).is_file()]
        if not weights:
            raise ValueError(
                f"{folder} has adapter_config.json but no {' or '.join(ADAPTER_WEIGHTS)}; save the adapter with `model.save_pretrained`."
            )
    else:
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} has no config.json (nor adapter_config.json): it is not a model folder.")
        if not any(
            (folder / name).is_file()
            for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
        ):
            raise ValueError(f"{folder} has config.json but no model weights (model.safetensors).")
    code_files = required_code_files(folder)
    missing = [name for name in code_files if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder} lacks the code files {missing}, which its auto_map needs for trust_remote_code loading. "
            f"Save with `save_omni_checkpoint` / `save_pretrained` (they copy the code), or copy them from {REPO_ROOT}."
        )
    return code_files


_VERIFY_MODEL = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoProcessor
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert "qwen_omni" not in type(model).__module__, type(model).__module__
inputs = processor(text="Hello there.")
output = model.generate(**inputs, max_new_tokens=2 * model.config.token_layout.tokens_per_frame, do_sample=False)
assert output.shape[1] > inputs["input_ids"].shape[1], "generate produced no token"
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "generated": output.shape[1] - inputs["input_ids"].shape[1]}))
"""

_VERIFY_ADAPTER = r"""
import json, os, sys
from peft import PeftConfig
from safetensors import safe_open
folder = sys.argv[1]
config = PeftConfig.from_pretrained(folder)
keys = []
if os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
    with safe_open(os.path.join(folder, "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
assert keys or os.path.isfile(os.path.join(folder, "adapter_model.bin")), "no adapter weights"
result = {"peft_type": str(config.peft_type), "base_model": config.base_model_name_or_path, "tensors": len(keys)}
base = config.base_model_name_or_path
if base and os.path.isdir(base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True), folder)
    assert "qwen_omni" not in type(model.get_base_model()).__module__
    result["loaded_on_base"] = True
print(json.dumps(result))
"""


def verify_in_clean_process(folder: str | os.PathLike, timeout: int = 600) -> dict:
    """
    Reload the folder (and generate a few tokens, for a full model) in a fresh interpreter where `import qwen_omni`
    fails, with a private remote-code cache, offline: what a user who downloads the repository gets.

    Raises:
        `RuntimeError` with the subprocess' error when it fails.
    """
    folder = Path(folder).resolve()
    code = _VERIFY_ADAPTER if is_adapter(folder) else _VERIFY_MODEL
    with tempfile.TemporaryDirectory() as modules_cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=modules_cache, TOKENIZERS_PARALLELISM="false")
        result = subprocess.run(
            [sys.executable, "-c", "import sys\nsys.modules['qwen_omni'] = None\n" + code, str(folder)],
            cwd=modules_cache,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"{folder} does not reload in a clean Python without qwen_omni (what Hub users have):\n"
            f"{result.stderr[-3000:]}\nFix the folder before uploading (missing code files or a relative import "
            "of something that is not shipped)."
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- model card
def _hub_id(value: str | None) -> str | None:
    """A Hub id usable in card metadata: local paths are left out (the Hub rejects them)."""
    if not value or os.path.exists(value):
        return None
    try:
        return validate_repo_id(value)
    except ValueError:
        return None


def eval_results_from_report(report: dict, dataset_id: str, dataset_name: str) -> list[EvalResult]:
    """model-index entries from `train/evaluate.py`'s `eval_results.json` (a Qwen3-Omni report carries them ready,
    under `model_index`)."""
    common = dict(dataset_type=dataset_id, dataset_name=dataset_name)
    if "model_index" in report:
        return [EvalResult(**entry, **common) for entry in report["model_index"]]
    rows = [
        ("automatic-speech-recognition", "Speech recognition", "wer", "WER", report.get("asr", {}).get("wer")),
        ("automatic-speech-recognition", "Speech recognition", "cer", "CER", report.get("asr", {}).get("cer")),
        (
            "text-to-speech",
            "Text to speech",
            "wer",
            "Intelligibility WER",
            report.get("tts_intelligibility", {}).get("wer"),
        ),
        (
            "text-to-speech",
            "Text to speech",
            "cer",
            "Intelligibility CER",
            report.get("tts_intelligibility", {}).get("cer"),
        ),
        (
            "text-to-speech",
            "Text to speech",
            "mel_distance",
            "Codec log-mel distance",
            report.get("codec", {}).get("mel_distance"),
        ),
        ("text-to-speech", "Text to speech", "si_sdr", "Codec SI-SDR (dB)", report.get("codec", {}).get("si_sdr")),
        (
            "text-to-speech",
            "Text to speech",
            "perplexity",
            "Audio-token perplexity",
            report.get("teacher_forced", {}).get("audio_perplexity"),
        ),
    ]
    return [
        EvalResult(
            task_type=task,
            task_name=task_name,
            metric_type=metric,
            metric_name=name,
            metric_value=round(float(value), 4),
            **common,
        )
        for task, task_name, metric, name, value in rows
        if value is not None
    ]


def _eval_table(report: dict | None) -> str:
    if not report:
        return "No evaluation was run; `python train/evaluate.py --model DIR --dataset CLIPS` writes one."
    if "tasks" in report:  # a Qwen3-Omni report: base against fine-tune
        lines = ["| task | metric | base | fine-tune |", "|---|---|---|---|"]
        for task, entry in report["tasks"].items():
            for key, value in entry["finetune"].items():
                if isinstance(value, float) and isinstance(entry["base"].get(key), float):
                    base = entry["base"][key]
                    lines.append(f"| {task} ({entry['num_rows']} rows) | {key} | {base:.4g} | {value:.4g} |")
        lines += ["", f"Greedy answers on `{report.get('dataset', '?')}` (`train/evaluate.py`, `eval_results.json`)."]
        return "\n".join(lines)
    lines = ["| metric | value |", "|---|---|"]
    for section in ("asr", "tts_intelligibility", "codec", "teacher_forced"):
        for key, value in report.get(section, {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {section}.{key} | {value:.4g} |")
    transcriber = report.get("tts_intelligibility", {}).get("transcriber", "self")
    lines.append("")
    lines.append(
        f"{report.get('num_clips', '?')} clips of `{report.get('dataset', '?')}`; texts normalised as Whisper does; "
        f"WER/CER with jiwer; generated speech transcribed by {'the model itself' if transcriber == 'self' else transcriber}."
    )
    return "\n".join(lines)


def _usage(repo_id: str, kind: str, base_model: str | None, folder: Path) -> str:
    base = base_model or "BASE_MODEL"
    if kind == "talker_voice_adapter":
        voice = json.loads((folder / TALKER_VOICE_CONFIG_NAME).read_text())
        return (
            "from peft import PeftModel\nfrom transformers import Qwen3OmniMoeForConditionalGeneration\n\n"
            f'base = Qwen3OmniMoeForConditionalGeneration.from_pretrained("{base}", dtype="auto")\n'
            f'model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload()\n'
            "# the new speaker's codec id (talker_voice_config.json), looked up by generate(speaker=...)\n"
            f'model.config.talker_config.speaker_id["{voice["speaker_name"]}"] = {voice["speaker_codec_id"]}\n'
            f'# text_ids, audio = model.generate(**inputs, speaker="{voice["speaker_name"]}")  # 24 kHz'
        )
    if kind == "qwen3_omni_adapter":
        adapter_config = json.loads((folder / "adapter_config.json").read_text())
        lines = [
            "from peft import PeftConfig, PeftModel",
            "from transformers import AutoProcessor, Qwen3OmniMoeThinkerForConditionalGeneration",
            "",
            f'base = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained("{base}", dtype="auto")',
        ]
        if adapter_config.get("lora_dropout") and adapter_config.get("target_parameters"):
            lines += [
                f'config = PeftConfig.from_pretrained("{repo_id}")',
                "config.lora_dropout = 0.0  # dropout only acts in training; PEFT's parameter wrapper refuses it",
                f'model = PeftModel.from_pretrained(base, "{repo_id}", config=config)',
            ]
        else:
            lines.append(f'model = PeftModel.from_pretrained(base, "{repo_id}")')
        lines.append(f'processor = AutoProcessor.from_pretrained("{base}")')
        return "\n".join(lines)
    if kind == "omni_adapter":
        return (
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoProcessor\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base}", trust_remote_code=True)\n'
            f'model = PeftModel.from_pretrained(base, "{repo_id}")\n'
            f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)'
        )
    return (
        "from transformers import AutoModelForCausalLM, AutoProcessor\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)\n\n'
        'inputs = processor(text="Hello, nice to meet you.", speaker="nova")\n'
        "output = model.generate(**inputs, max_new_tokens=1200)\n"
        "speech = processor.batch_decode(output[:, inputs['input_ids'].shape[1]:])[0]  # float32 waveform\n"
        'processor.save_audio(speech, "hello.wav")'
    )


def build_model_card(
    folder: str | os.PathLike,
    repo_id: str,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    eval_report: dict | None = None,
    pipeline_tag: str | None = None,
    tags: list[str] | None = None,
    template_path: str | os.PathLike = MODEL_CARD_TEMPLATE,
) -> ModelCard:
    """
    Fill `model_card.md` for the folder.

    Args:
        folder: the model or adapter folder.
        repo_id: where it goes (`owner/name`), used in the usage snippet.
        base_model: the checkpoint it was fine-tuned from; for adapters the default is `adapter_config.json`'s
            `base_model_name_or_path`. Only Hub ids go into the metadata (local paths are named in the text).
        datasets: training datasets (Hub ids go into the metadata, the rest into the text).
        license: SPDX-style license id of the Hub.
        eval_report: `train/evaluate.py`'s report; becomes the `model-index` and the evaluation table.
        pipeline_tag: default `text-to-speech` for Omni models and their adapters.
        tags: extra tags.
    """
    folder = Path(folder)
    kind, model_type = card_kind(folder)
    adapter = kind.endswith("_adapter")
    if adapter:
        adapter_config = json.loads((folder / "adapter_config.json").read_text())
        base_model = base_model or adapter_config.get("base_model_name_or_path")
    datasets = [str(d) for d in (datasets or [])]
    hub_datasets = [d for d in (_hub_id(d) for d in datasets) if d]
    card_tags = list(CARD_TAGS[kind])
    if adapter:
        card_tags += [tag for tag in ("peft", "lora") if tag not in card_tags]
    card_tags += [tag for tag in (tags or []) if tag not in card_tags]
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        language=["en"],
        license=license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=pipeline_tag or ("text-to-speech" if kind in SPEECH_OUT_KINDS else None),
        tags=card_tags,
        base_model=_hub_id(base_model),
        datasets=hub_datasets or None,
        model_name=model_name,
        eval_results=eval_results_from_report(
            eval_report,
            (hub_datasets or [model_name + "-eval"])[0],
            Path(str(eval_report.get("dataset", "eval"))).name,
        )
        if eval_report
        else None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        description=CARD_DESCRIPTIONS[kind],
        model_type=("LoRA adapter (PEFT)" if adapter else f"causal LM, `model_type: {model_type}`"),
        base_model_text=f"`{base_model}`" if base_model else "trained from scratch",
        datasets_text=", ".join(f"`{d}`" for d in datasets) or "not recorded",
        license=license,
        usage=_usage(repo_id, kind, _hub_id(base_model), folder),
        eval_table=_eval_table(eval_report),
        training_text=CARD_TRAINING_TEXTS[kind],
        loading_text=_loading_text(folder, kind),
    )


CARD_TAGS = {
    "omni": ("custom_code", "text-to-speech", "speech", "snac", "qwen3", "qwen-omni"),
    "omni_adapter": ("custom_code", "text-to-speech", "speech", "snac", "qwen3", "qwen-omni"),
    "qwen3_omni_adapter": ("qwen3-omni",),
    "talker_voice_adapter": ("qwen3-omni", "text-to-speech", "speech", "talker", "voice"),
}
SPEECH_OUT_KINDS = ("omni", "omni_adapter", "talker_voice_adapter")
CARD_DESCRIPTIONS = {
    "omni": "An Omni model: a Qwen3 decoder that speaks and listens through SNAC audio tokens (text to speech "
    "with named speakers, speech to text).",
    "omni_adapter": "A LoRA adapter for an Omni text/speech model.",
    "qwen3_omni_adapter": "A LoRA adapter for the Thinker of Qwen3-Omni.",
    "talker_voice_adapter": "A LoRA adapter that gives the Talker of Qwen3-Omni a new voice.",
}
CARD_TRAINING_TEXTS = {
    "omni": "Trained with qwen-omni's recipes: `train/pretrain.py` on text and SNAC audio-token sequences and, "
    "for a voice, `train/omni_voice_sft.py` with its LoRA adapter merged by `train/merge.py`.",
    "omni_adapter": "Fine-tuned with TRL's `SFTTrainer` and a PEFT LoRA adapter on (audio, transcript) pairs "
    "in the format `<|tts|><|text_start|>{speaker}: {text}<|text_end|><|audio_start|> AUDIO <|audio_end|>`, "
    "loss on the audio tokens (`train/omni_voice_sft.py`).",
    "qwen3_omni_adapter": "Fine-tuned with TRL's `SFTTrainer` (`train/sft.py`): LoRA on the Thinker's "
    "attention, MoE routers and fused experts.",
    "talker_voice_adapter": "LoRA on the Talker's attention, MoE routers and experts and on the code "
    "predictor, plus the new speaker's codec-embedding row, teacher-forced on (clip, transcript) pairs whose "
    "audio is encoded with Mimi (`train/talker_voice_sft.py`).",
}


def card_kind(folder: Path) -> tuple[str, str | None]:
    """`(kind, model_type)` of the folder a card is written for: an Omni model (`omni`) or adapter (`omni_adapter`),
    a Qwen3-Omni Thinker adapter or a Talker voice adapter; anything else is refused."""
    adapter = is_adapter(folder)
    model_type = None
    if (folder / "config.json").is_file():
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    omni = (
        model_type == "omni"
        or (folder / "processor_config.json").is_file()
        and "snac" in (folder / "processor_config.json").read_text().lower()
    )
    if omni:
        return ("omni_adapter" if adapter else "omni"), model_type
    if adapter:
        kind = "talker_voice_adapter" if (folder / TALKER_VOICE_CONFIG_NAME).is_file() else "qwen3_omni_adapter"
        return kind, model_type
    raise ValueError(
        f"{folder} is neither an Omni model nor a LoRA adapter: build_model_card writes cards for Omni models and "
        "for adapters (Omni, Qwen3-Omni Thinker, Qwen3-Omni Talker voice)."
    )


def _loading_text(folder: Path, kind: str) -> str:
    """How the card's model loads: an Omni model's code ships with it (remote code); Qwen3-Omni is in transformers."""
    if kind == "omni":
        code_files = required_code_files(folder)
    elif kind == "omni_adapter":
        code_files = sorted(p.name for p in folder.glob("*.py"))
    else:
        return "transformers has the Qwen3-Omni classes: the adapter needs `peft` and no remote code."
    return (
        f"The model's code (`{'`, `'.join(code_files) or 'none'}`) ships in this repository, so it loads with "
        "`trust_remote_code=True` and needs no package beyond `transformers`, `snac`"
        + (", `peft`." if kind == "omni_adapter" else ".")
    )


def _find_eval_report(folder: Path) -> dict | None:
    for candidate in (
        folder / "eval_results.json",
        folder / "eval" / "eval_results.json",
        folder.parent / "eval" / "eval_results.json",
    ):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str | None,
    private: bool = False,
    token: str | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    eval_results: str | os.PathLike | None = None,
    commit_message: str = "Upload Omni model with qwen-omni",
    verify: bool = True,
    dry_run: bool = False,
) -> str | None:
    """
    Check, verify, write the card and upload a model or adapter folder. Nothing is uploaded unless every check
    passes.

    Args:
        folder: the model folder (e.g. `OUTPUT_DIR/merged`) or adapter folder (`OUTPUT_DIR`).
        repo_id: `owner/name`.
        private: create the repository private.
        token: a Hub token (default: the logged-in one).
        base_model, datasets, license: card metadata (see [`build_model_card`]).
        eval_results: `eval_results.json` of `train/evaluate.py`; default the one found in `folder`, `folder/eval`
            or `folder/../eval`.
        commit_message: the upload's commit message.
        verify: reload and generate in a clean process first (turn off only for folders verified already).
        dry_run: do every check and write README.md, but create and upload nothing.

    Returns:
        The URL of the commit (None for a dry run).
    """
    repo_id = validate_repo_id(repo_id)
    folder = Path(folder)
    check_folder(folder)
    if verify:
        logger.info(f"Clean-process reload check: {verify_in_clean_process(folder)}")
    if base_model is None and not is_adapter(folder) and (folder.parent / "adapter_config.json").is_file():
        base_model = json.loads((folder.parent / "adapter_config.json").read_text()).get("base_model_name_or_path")
    report = json.loads(Path(eval_results).read_text()) if eval_results else _find_eval_report(folder)
    card = build_model_card(
        folder, repo_id, base_model=base_model, datasets=datasets, license=license, eval_report=report
    )
    card.save(folder / "README.md")
    if dry_run:
        logger.info(f"Dry run: {folder} is ready for {repo_id}; nothing uploaded.")
        return None
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=UPLOAD_IGNORE,
    )
    return str(getattr(commit, "commit_url", commit))


def defer_hub_push(training_args) -> str | None:
    """
    For a training script run with `--push_to_hub`: check `--hub_model_id` before any work, and take the push away
    from the Trainer (which would create the repository and upload checkpoints, with its own card, as it goes).

    Returns:
        The repo id to publish to with [`push_after_training`] once the run is done, or None without `--push_to_hub`.
    """
    if not training_args.push_to_hub:
        return None
    repo_id = validate_repo_id(training_args.hub_model_id)
    training_args.push_to_hub = False
    return repo_id


def push_after_training(folder: str | os.PathLike, repo_id: str | None, training_args, **kwargs) -> str | None:
    """[`push_to_hub`] with the run's `--hub_private_repo` / `--hub_token`, from the main process only; nothing
    without a repo id (see [`defer_hub_push`])."""
    if repo_id is None or training_args.process_index != 0:
        return None
    return push_to_hub(
        folder, repo_id, private=bool(training_args.hub_private_repo), token=training_args.hub_token, **kwargs
    )
