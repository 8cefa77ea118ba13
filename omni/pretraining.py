# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""What `train/pretrain.py` needs before training: its arguments ([`PretrainArguments`]), the offline default's
stand-in codec and command corpus, the model (loaded, or built around a tokenizer / text model and a codec), the
prepared (SNAC-encoded) rows, and the split into training rows, held-out sentences and held-out speakers."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, TrainingArguments
from transformers.utils import logging
from trl import TrlParser

from ..common.clips import load_audio_text_rows
from .build import (
    build_omni_from_scratch,
    build_omni_from_text_model,
    save_omni_checkpoint,
    train_bpe_tokenizer,
)
from .command_corpus import HELDOUT_VOICE, CommandCorpusSpec, ensure_command_corpus
from .corpus import (
    check_prepared_rows,
    is_prepared_dataset,
    load_prepared_dataset,
    prepare_dataset,
    read_prepare_info,
    read_text_documents,
)
from .packing import (
    TASKS,
    build_packed_dataset,
    build_task_samples,
    parse_task_ratios,
)
from .pretrain_report import REPORT_NAME
from .standin_codec import STANDIN_CODEC_CONFIG, STANDIN_CODEC_NOTE, standin_codec


logger = logging.get_logger(__name__)

# settings that must agree between a checkpoint and the model it resumes
CHECKPOINT_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "audio_token_offset",
    "codebook_size",
    "vq_strides",
)
# TrainingArguments defaults of the offline demo (a YAML --config or the command line override them)
DEMO_TRAINING_DEFAULTS = dict(
    output_dir="runs/omni-pretrain",
    max_steps=800,
    per_device_train_batch_size=2,
    per_device_eval_batch_size=4,
    learning_rate=3e-3,
    lr_scheduler_type="cosine",
    warmup_steps=20,
    weight_decay=0.0,
    logging_steps=25,
    save_steps=200,
    save_total_limit=2,
    eval_strategy="steps",
    eval_steps=200,
    report_to=["tensorboard"],
    seed=42,
    remove_unused_columns=False,
    train_sampling_strategy="group_by_length",
    bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
)


@dataclass
class PretrainArguments:
    """Data, model and mixing options of train/pretrain.py (the training loop's are `TrainingArguments`)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Speech corpus: a prepared folder (train/prepare_data.py), a Hub id or local datasets "
            "folder, a JSONL/CSV of audio paths + transcripts, or a LibriSpeech/LibriTTS folder. "
            "Default: the command corpus (omni/command_corpus.py), synthesised once with espeak-ng "
            "into --corpus_cache_dir."
        },
    )
    corpus_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the default command corpus is synthesised and cached; default the "
            "parent folder of --output_dir (runs/ for the default run)."
        },
    )
    command_corpus_sentences: int = field(
        default=CommandCorpusSpec.num_train,
        metadata={
            "help": "Sentences the training voices speak in the default command corpus (each once; "
            "--eval_fraction of them are held out)."
        },
    )
    command_corpus_heldout_voice_sentences: int = field(
        default=CommandCorpusSpec.num_heldout_voice,
        metadata={"help": "Other sentences the held-out voice speaks in the default command corpus."},
    )
    heldout_speakers: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated speakers whose clips are never trained on; the report scores them apart "
            "(default: the command corpus' held-out voice when it is the corpus, else none)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a `datasets` source."})
    audio_column: str = field(default="audio", metadata={"help": "Column holding audio (path or Audio)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the transcript."})
    speaker_column: str | None = field(default="speaker", metadata={"help": "Column holding the speaker name."})
    prepared_dir: str | None = field(
        default=None, metadata={"help": "Where prepared (encoded) data is cached; default <output_dir>/prepared."}
    )
    max_duration: float = field(default=30.0, metadata={"help": "Clips longer than this (seconds) are skipped."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes decoding audio while preparing."})
    streaming: bool = field(default=False, metadata={"help": "Stream a `datasets` source while preparing."})
    text_file: str | None = field(default=None, metadata={"help": "Extra text-only documents, one per line."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An existing Omni checkpoint to continue pretraining."}
    )
    text_model: str | None = field(
        default=None, metadata={"help": "A Qwen3-family LM to start from (e.g. Qwen/Qwen3-0.6B) instead of scratch."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer of a from-scratch model; default: a BPE trained on the corpus."}
    )
    codec: str | None = field(
        default=None, metadata={"help": "SNAC codec (e.g. hubertsiuzdak/snac_24khz); default: a random offline one."}
    )
    standin_codebook_size: int = field(
        default=256,
        metadata={
            "help": "Codes per codebook of the offline stand-in codec (runs without --codec): 256 codes seen "
            "~4x as often as 1024 each, which a small corpus needs."
        },
    )
    bpe_vocab_size: int = field(default=1024, metadata={"help": "Vocabulary of the BPE trained on the corpus."})
    hidden_size: int = field(default=128, metadata={"help": "From-scratch model width (seed: 128)."})
    num_hidden_layers: int = field(default=3, metadata={"help": "From-scratch model depth (seed: 3)."})
    num_attention_heads: int = field(default=4, metadata={"help": "From-scratch attention heads (seed: 4)."})
    num_key_value_heads: int = field(default=2, metadata={"help": "From-scratch key/value heads."})
    text_loss_weight: float = field(
        default=1.0,
        metadata={
            "help": "Loss weight of text targets. 1.0 for the from-scratch offline demo, whose transcripts are "
            "~5% of the targets; the seed's 0.1 (train/configs/pretrain.yaml) suits a pretrained LM."
        },
    )
    audio_loss_weight: float = field(default=1.0, metadata={"help": "Loss weight of audio targets (seed: 1.0)."})
    task_ratios: str = field(
        default="tts=0.4,asr=0.4,text=0.2", metadata={"help": "Shares of text-to-speech, speech-to-text, text."}
    )
    num_samples: int | None = field(
        default=None, metadata={"help": "Training samples per pass; default: every clip once per speech task."}
    )
    max_length: int = field(default=1024, metadata={"help": "Tokens per packed row; longer samples are skipped."})
    packing: bool = field(
        default=True, metadata={"help": "Pack samples into rows (False: one padded sample per row)."}
    )
    pack_fill_task: str | None = field(
        default=None,
        metadata={
            "help": "Fill the space packing leaves in training rows with repeated samples of this task "
            "(e.g. 'text'; the copies are counted in the log). Off by default: it changes the task mix."
        },
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of clips held out for the per-task evaluation (0: no evaluation)."}
    )
    optimizer: str = field(
        default="muon", metadata={"help": "'muon' (Muon for hidden matrices + AdamW) or 'adamw' (uses --optim)."}
    )
    heldout_report: bool = field(
        default=True,
        metadata={
            "help": f"At the end, compare the trained model with the untrained one on held-out clips (ASR CER, "
            f"audio-token accuracy; greedy decoding on the main process) and write <output_dir>/{REPORT_NAME}."
        },
    )
    report_max_clips: int = field(
        default=32,
        metadata={"help": "Held-out clips the end-of-run report transcribes (the first of the held-out split)."},
    )


def parse_args(argv: list[str] | None = None) -> tuple[PretrainArguments, TrainingArguments]:
    parser = TrlParser((PretrainArguments, TrainingArguments))
    parser.set_defaults(**DEMO_TRAINING_DEFAULTS)
    script_args, training_args = parser.parse_args_and_config(args=argv)
    return script_args, training_args


def check_checkpoint(checkpoint: str, model) -> None:
    """Raise before training when `checkpoint` does not belong to a model of `model`'s shape."""
    config_file = Path(checkpoint) / "config.json"
    if not config_file.exists():
        raise ValueError(f"--resume_from_checkpoint {checkpoint} holds no config.json; it is not a checkpoint folder.")
    saved = json.loads(config_file.read_text())
    current = model.config.to_dict()
    differences = {
        key: (saved.get(key), current.get(key)) for key in CHECKPOINT_KEYS if saved.get(key) != current.get(key)
    }
    if differences:
        described = ", ".join(f"{key}: checkpoint {a!r} vs model {b!r}" for key, (a, b) in differences.items())
        raise ValueError(
            f"The checkpoint {checkpoint} is from another model ({described}). Resume with the options it was "
            "trained with (same --output_dir / --model_name_or_path / size flags), or start without "
            "--resume_from_checkpoint."
        )


def offline_codec(script_args: PretrainArguments, output_dir: Path) -> Path:
    """The stand-in codec of a run without --codec, fitted to the corpus audio (once; cached in output_dir)."""
    if is_prepared_dataset(script_args.dataset_name):
        raise ValueError(
            f"--dataset_name {script_args.dataset_name} is a prepared dataset: its codes were made by the codec it was "
            "prepared with, so pass that codec with --codec (the offline stand-in codec is fitted on raw audio)."
        )
    rows = load_audio_text_rows(
        script_args.dataset_name,
        script_args.audio_column,
        script_args.text_column,
        script_args.speaker_column,
        split=script_args.dataset_split,
        dataset_config=script_args.dataset_config,
    )
    config = {**STANDIN_CODEC_CONFIG, "codebook_size": script_args.standin_codebook_size}
    path = standin_codec(rows, output_dir, config=config)
    logger.warning(f"No --codec given: using {STANDIN_CODEC_NOTE} ({path})")
    return path


def use_command_corpus(script_args: PretrainArguments, output_dir: Path) -> None:
    """No --dataset_name: train on the command corpus (synthesised once into --corpus_cache_dir) and hold its
    held-out voice out, unless --heldout_speakers says otherwise."""
    spec = CommandCorpusSpec(
        num_train=script_args.command_corpus_sentences,
        num_heldout_voice=script_args.command_corpus_heldout_voice_sentences,
    )
    cache_dir = Path(script_args.corpus_cache_dir) if script_args.corpus_cache_dir else output_dir.resolve().parent
    script_args.dataset_name = str(ensure_command_corpus(cache_dir, spec))
    if script_args.heldout_speakers is None and spec.num_heldout_voice:
        script_args.heldout_speakers = HELDOUT_VOICE.speaker
    logger.info(f"No --dataset_name given: training on the command corpus {script_args.dataset_name}.")


def corpus_texts(script_args: PretrainArguments) -> list[str]:
    if is_prepared_dataset(script_args.dataset_name):
        return list(load_prepared_dataset(script_args.dataset_name)["text"])
    rows = load_audio_text_rows(
        script_args.dataset_name,
        script_args.audio_column,
        script_args.text_column,
        script_args.speaker_column,
        split=script_args.dataset_split,
        dataset_config=script_args.dataset_config,
    )
    return [text for text in rows["text"] if text]


def load_or_build_model(script_args: PretrainArguments, output_dir: Path):
    """The model and processor: an existing Omni checkpoint, the one this output_dir started from, or a new one."""
    init_dir = output_dir / "init"
    if script_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path, trust_remote_code=True)
        if getattr(model.config, "model_type", None) != "omni":
            raise ValueError(
                f"--model_name_or_path {script_args.model_name_or_path} is a {model.config.model_type!r} model, not "
                "an Omni checkpoint; use --text_model to start from a Qwen3 LM."
            )
        return model, AutoProcessor.from_pretrained(script_args.model_name_or_path, trust_remote_code=True)
    if (init_dir / "config.json").exists():
        # the same tokenizer, codec and initial weights as the run that created output_dir (resume, re-runs)
        from qwen_omni import OmniForCausalLM, OmniProcessor

        return OmniForCausalLM.from_pretrained(init_dir), OmniProcessor.from_pretrained(init_dir)
    codec = script_args.codec or offline_codec(script_args, output_dir)
    weights = dict(text_loss_weight=script_args.text_loss_weight, audio_loss_weight=script_args.audio_loss_weight)
    if script_args.text_model:
        model, processor = build_omni_from_text_model(
            script_args.text_model, codec, tokenizer=script_args.tokenizer, **weights
        )
    else:
        tokenizer = script_args.tokenizer
        if tokenizer is None:
            logger.warning(
                f"No --tokenizer given: training a {script_args.bpe_vocab_size}-token BPE on the transcripts."
            )
            tokenizer = train_bpe_tokenizer(corpus_texts(script_args), vocab_size=script_args.bpe_vocab_size)
        model, processor = build_omni_from_scratch(
            tokenizer,
            codec,
            hidden_size=script_args.hidden_size,
            num_hidden_layers=script_args.num_hidden_layers,
            num_attention_heads=script_args.num_attention_heads,
            num_key_value_heads=script_args.num_key_value_heads,
            **weights,
        )
    save_omni_checkpoint(model, processor, init_dir)
    return model, processor


def prepared_rows(script_args: PretrainArguments, processor, output_dir: Path):
    """Encode the corpus once (cached; a second run reuses it) and return the prepared rows."""
    if is_prepared_dataset(script_args.dataset_name):
        prepared = Path(script_args.dataset_name)
    else:
        prepared = Path(script_args.prepared_dir or output_dir / "prepared")
        rows = load_audio_text_rows(
            script_args.dataset_name,
            script_args.audio_column,
            script_args.text_column,
            script_args.speaker_column,
            split=script_args.dataset_split,
            dataset_config=script_args.dataset_config,
            streaming=script_args.streaming,
        )
        prepare_dataset(
            rows,
            prepared,
            processor.audio_tokenizer,
            max_duration=script_args.max_duration,
            num_proc=script_args.num_proc,
            source_name=script_args.dataset_name,
        )
    info = read_prepare_info(prepared)
    layout = processor.token_layout
    if (info["vq_strides"], info["codebook_size"]) != (layout.vq_strides, layout.codebook_size):
        raise ValueError(
            f"{prepared} was encoded with a codec of vq_strides={info['vq_strides']}, codebook_size="
            f"{info['codebook_size']}, but the model's layout has vq_strides={layout.vq_strides}, codebook_size="
            f"{layout.codebook_size}. Prepare the data with the model's codec (--codec of prepare_data.py)."
        )
    rows = load_prepared_dataset(prepared)
    check_prepared_rows(rows, processor, prepared)
    return rows


def parse_speakers(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def split_heldout(num_rows: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """`(train_indices, heldout_indices)`: a seeded shuffle of the clips, `eval_fraction` of them (at least one, and
    never all) held out from training for the evaluation sets and the end-of-run report."""
    indices = list(range(num_rows))
    random.Random(seed).shuffle(indices)
    num_eval = round(eval_fraction * num_rows) if eval_fraction > 0 and num_rows > 1 else 0
    num_eval = min(max(num_eval, 1 if eval_fraction > 0 and num_rows > 1 else 0), num_rows - 1)
    return indices[num_eval:], indices[:num_eval]


def split_rows(
    rows, eval_fraction: float, seed: int, heldout_speakers: Sequence[str] = ()
) -> tuple[list[int], list[int], list[int]]:
    """`(train_indices, heldout_indices, heldout_speaker_indices)`: the clips of `heldout_speakers` are all held out
    (never trained on); of the others, [`split_heldout`] holds out `eval_fraction`."""
    speakers = rows["speaker"]
    missing = sorted(set(heldout_speakers) - set(speakers))
    if missing:
        raise ValueError(
            f"--heldout_speakers names {missing}, who speak no clip of the corpus (its speakers: "
            f"{sorted(set(speakers), key=str)})."
        )
    voice_indices = [index for index, speaker in enumerate(speakers) if speaker in heldout_speakers]
    kept = [index for index, speaker in enumerate(speakers) if speaker not in heldout_speakers]
    if not kept:
        raise ValueError(
            f"--heldout_speakers {list(heldout_speakers)} hold out every clip: nothing is left to train on."
        )
    train, heldout = split_heldout(len(kept), eval_fraction, seed)
    return [kept[i] for i in train], [kept[i] for i in heldout], voice_indices


def build_datasets(script_args: PretrainArguments, processor, rows, seed: int):
    """Training rows (the task mix, packed) and one evaluation set per task, from held-out clips; also the indices in
    `rows` of the training clips, the held-out clips and the held-out speakers' clips (see [`split_rows`])."""
    ratios = parse_task_ratios(script_args.task_ratios)
    train_indices, heldout_indices, voice_indices = split_rows(
        rows, script_args.eval_fraction, seed, parse_speakers(script_args.heldout_speakers)
    )
    eval_rows, train_rows = rows.select(heldout_indices), rows.select(train_indices)
    text_rows = read_text_documents(script_args.text_file) if script_args.text_file else None
    max_length = script_args.max_length if script_args.packing else None
    samples, stats = build_task_samples(
        train_rows,
        processor,
        ratios,
        script_args.max_length,
        num_samples=script_args.num_samples,
        text_rows=text_rows,
        seed=seed,
    )
    if not samples:
        raise ValueError(
            f"No training sample is left after filtering ({len(train_rows)} clips, {stats.too_long} longer than "
            f"max_length={script_args.max_length}); raise --max_length or lower --max_duration."
        )
    train_dataset = build_packed_dataset(samples, max_length, seed=seed, fill_task=script_args.pack_fill_task)
    row_tokens = sum(train_dataset["length"])
    logger.info(
        f"Training data: {stats.per_task} samples, {row_tokens} tokens in {len(train_dataset)} rows of <= "
        f"{script_args.max_length} tokens ({row_tokens / (len(train_dataset) * script_args.max_length):.1%} full)."
    )
    eval_datasets = {}
    for task in TASKS:
        if ratios[task] > 0 and len(eval_rows):
            task_samples, _ = build_task_samples(
                eval_rows, processor, {task: 1.0}, script_args.max_length, num_samples=len(eval_rows), seed=seed
            )
            if task_samples:
                # "text_only": "eval_text_loss" already names the loss on text targets
                eval_datasets["text_only" if task == "text" else task] = build_packed_dataset(
                    task_samples, max_length, seed=seed
                )
    return train_dataset, eval_datasets, (train_indices, heldout_indices, voice_indices)
