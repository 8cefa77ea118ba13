# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Multimodal pretraining of an Omni model (text-to-speech, speech-to-text and text-only samples, packed).

    accelerate launch train/pretrain.py                          # offline main job: tiny model, command corpus
    accelerate launch train/pretrain.py --config train/configs/pretrain.yaml \
        --dataset_name data/prepared/librispeech --codec hubertsiuzdak/snac_24khz --tokenizer Qwen/Qwen3-0.6B
    accelerate launch --config_file train/accelerate/multi_gpu.yaml train/pretrain.py --config ...

Every `transformers.TrainingArguments` flag works, plus [`PretrainArguments`]; a YAML `--config` sets defaults that
the command line overrides (TRL's `TrlParser`; an unknown key is an error). With no arguments the run is fully
offline: it trains a BPE tokenizer on the corpus transcripts, fits a *stand-in* SNAC codec of the 24 kHz layout to
the corpus audio (real rates and token layout, small widths, codebooks fitted by k-means on a random encoder's
latents; see `omni/standin_codec.py`: its codes are not learned speech units and its decoder is random, use `--codec
hubertsiuzdak/snac_24khz` for real work), and trains the seed's tiny model (d_model 128, 4 heads, 3 layers) with Muon
to a checkpoint in `<output_dir>` that loads with `AutoModelForCausalLM.from_pretrained(output_dir,
trust_remote_code=True)`. Its corpus is the command corpus (`omni/command_corpus.py`): sentences of a bounded grammar
(commands, names, numbers, digit strings) spoken by three espeak-ng voices, synthesised once into the parent folder
of `--output_dir` and encoded once (cached in `<output_dir>/prepared`); a share of the sentences and a fourth voice
are held out. See docs/main_job.md.

At the end the run writes `<output_dir>/pretrain_report.json` and logs it: the code perplexity of each codebook on
the corpus, and on held-out sentences (and speakers) it never trained on the ASR character error rate, the
audio-token accuracy and the CER of its own ASR on its own TTS output, for the trained model against the untrained
one and against floors (predicting the most frequent code, one constant transcript), each check with its margin, so
that a run that learned nothing (or only a constant) shows as such.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, TrainingArguments
from transformers.utils import logging
from trl import TrlParser

from qwen_omni import OmniForCausalLM
from qwen_omni.common.launching import DistributedRunCallback, check_launch, check_output_dir, resolve_resume_checkpoint
from qwen_omni.omni.command_corpus import HELDOUT_VOICE, CommandCorpusSpec, ensure_command_corpus
from qwen_omni.omni.corpus import (
    check_prepared_rows,
    is_prepared_dataset,
    load_prepared_dataset,
    prepare_dataset,
    read_prepare_info,
    read_text_documents,
)
from qwen_omni.common.clips import load_audio_text_rows
from qwen_omni.common.hub import push_to_hub, validate_repo_id
from qwen_omni.omni.build import (
    build_omni_from_scratch,
    build_omni_from_text_model,
    save_omni_checkpoint,
    train_bpe_tokenizer,
)
from qwen_omni.omni.packing import (
    TASKS,
    OmniPackingCollator,
    build_packed_dataset,
    build_task_samples,
    parse_task_ratios,
)
from qwen_omni.omni.evaluation import (
    best_constant_transcript_cer,
    heldout_metrics,
    layout_code_perplexities,
    most_frequent_code_accuracy,
    speech_round_trip,
)
from qwen_omni.omni.standin_codec import STANDIN_CODEC_CONFIG, is_standin_codec, standin_codec
from qwen_omni.omni.trainer import OmniPretrainer, token_metrics_from_logits
from qwen_omni.common.clips import VoiceClip


logger = logging.get_logger("qwen_omni.pretrain")

REPORT_NAME = "pretrain_report.json"
# settings that must agree between a checkpoint and the model it resumes
CHECKPOINT_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "audio_token_offset", "codebook_size", "vq_strides",
)
# TrainingArguments defaults of the offline demo (a YAML --config or the command line override them)
DEMO_TRAINING_DEFAULTS = dict(
    output_dir="runs/omni-pretrain", max_steps=800, per_device_train_batch_size=2, per_device_eval_batch_size=4,
    learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=20, weight_decay=0.0, logging_steps=25,
    save_steps=200, save_total_limit=2, eval_strategy="steps", eval_steps=200, report_to=["tensorboard"], seed=42,
    remove_unused_columns=False, train_sampling_strategy="group_by_length", bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
)


@dataclass
class PretrainArguments:
    """Data, model and mixing options of train/pretrain.py (the training loop's are `TrainingArguments`)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Speech corpus: a prepared folder (train/prepare_data.py), a Hub id or local datasets "
                          "folder, a JSONL/CSV of audio paths + transcripts, or a LibriSpeech/LibriTTS folder. "
                          "Default: the command corpus (omni/command_corpus.py), synthesised once with espeak-ng "
                          "into --corpus_cache_dir."},
    )
    corpus_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the default command corpus is synthesised and cached; default the "
                                        "parent folder of --output_dir (runs/ for the default run)."},
    )
    command_corpus_sentences: int = field(
        default=CommandCorpusSpec.num_train,
        metadata={"help": "Sentences the training voices speak in the default command corpus (each once; "
                          "--eval_fraction of them are held out)."},
    )
    command_corpus_heldout_voice_sentences: int = field(
        default=CommandCorpusSpec.num_heldout_voice,
        metadata={"help": "Other sentences the held-out voice speaks in the default command corpus."},
    )
    heldout_speakers: str | None = field(
        default=None,
        metadata={"help": "Comma-separated speakers whose clips are never trained on; the report scores them apart "
                          "(default: the command corpus' held-out voice when it is the corpus, else none)."},
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
        metadata={"help": "Codes per codebook of the offline stand-in codec (runs without --codec): 256 codes seen "
                          "~4x as often as 1024 each, which a small corpus needs."},
    )
    bpe_vocab_size: int = field(default=1024, metadata={"help": "Vocabulary of the BPE trained on the corpus."})
    hidden_size: int = field(default=128, metadata={"help": "From-scratch model width (seed: 128)."})
    num_hidden_layers: int = field(default=3, metadata={"help": "From-scratch model depth (seed: 3)."})
    num_attention_heads: int = field(default=4, metadata={"help": "From-scratch attention heads (seed: 4)."})
    num_key_value_heads: int = field(default=2, metadata={"help": "From-scratch key/value heads."})
    text_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Loss weight of text targets. 1.0 for the from-scratch offline demo, whose transcripts are "
                          "~5% of the targets; the seed's 0.1 (train/configs/pretrain.yaml) suits a pretrained LM."},
    )
    audio_loss_weight: float = field(default=1.0, metadata={"help": "Loss weight of audio targets (seed: 1.0)."})
    task_ratios: str = field(
        default="tts=0.4,asr=0.4,text=0.2", metadata={"help": "Shares of text-to-speech, speech-to-text, text."}
    )
    num_samples: int | None = field(
        default=None, metadata={"help": "Training samples per pass; default: every clip once per speech task."}
    )
    max_length: int = field(default=1024, metadata={"help": "Tokens per packed row; longer samples are skipped."})
    packing: bool = field(default=True, metadata={"help": "Pack samples into rows (False: one padded sample per row)."})
    pack_fill_task: str | None = field(
        default=None,
        metadata={"help": "Fill the space packing leaves in training rows with repeated samples of this task "
                  "(e.g. 'text'; the copies are counted in the log). Off by default: it changes the task mix."},
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of clips held out for the per-task evaluation (0: no evaluation)."}
    )
    optimizer: str = field(
        default="muon", metadata={"help": "'muon' (Muon for hidden matrices + AdamW) or 'adamw' (uses --optim)."}
    )
    heldout_report: bool = field(
        default=True,
        metadata={"help": f"At the end, compare the trained model with the untrained one on held-out clips (ASR CER, "
                  f"audio-token accuracy; greedy decoding on the main process) and write <output_dir>/{REPORT_NAME}."},
    )
    report_max_clips: int = field(
        default=32, metadata={"help": "Held-out clips the end-of-run report transcribes (the first of the held-out split)."}
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
    differences = {key: (saved.get(key), current.get(key)) for key in CHECKPOINT_KEYS if saved.get(key) != current.get(key)}
    if differences:
        described = ", ".join(f"{key}: checkpoint {a!r} vs model {b!r}" for key, (a, b) in differences.items())
        raise ValueError(
            f"The checkpoint {checkpoint} is from another model ({described}). Resume with the options it was "
            "trained with (same --output_dir / --model_name_or_path / size flags), or start without "
            "--resume_from_checkpoint."
        )


STANDIN_CODEC_NOTE = (
    "a STAND-IN SNAC codec of the 24 kHz layout: random encoder and decoder, codebooks fitted to this corpus by "
    "k-means. Its codes are features of a random encoder, not learned speech units, and its decoded audio is not "
    "speech; pass --codec hubertsiuzdak/snac_24khz for a real model."
)


def offline_codec(script_args: PretrainArguments, output_dir: Path) -> Path:
    """The stand-in codec of a run without --codec, fitted to the corpus audio (once; cached in output_dir)."""
    if is_prepared_dataset(script_args.dataset_name):
        raise ValueError(
            f"--dataset_name {script_args.dataset_name} is a prepared dataset: its codes were made by the codec it was "
            "prepared with, so pass that codec with --codec (the offline stand-in codec is fitted on raw audio)."
        )
    rows = load_audio_text_rows(
        script_args.dataset_name, script_args.audio_column, script_args.text_column, script_args.speaker_column,
        split=script_args.dataset_split, dataset_config=script_args.dataset_config,
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
        script_args.dataset_name, script_args.audio_column, script_args.text_column, script_args.speaker_column,
        split=script_args.dataset_split, dataset_config=script_args.dataset_config,
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
        model, processor = build_omni_from_text_model(script_args.text_model, codec, tokenizer=script_args.tokenizer, **weights)
    else:
        tokenizer = script_args.tokenizer
        if tokenizer is None:
            logger.warning(f"No --tokenizer given: training a {script_args.bpe_vocab_size}-token BPE on the transcripts.")
            tokenizer = train_bpe_tokenizer(corpus_texts(script_args), vocab_size=script_args.bpe_vocab_size)
        model, processor = build_omni_from_scratch(
            tokenizer, codec, hidden_size=script_args.hidden_size, num_hidden_layers=script_args.num_hidden_layers,
            num_attention_heads=script_args.num_attention_heads, num_key_value_heads=script_args.num_key_value_heads,
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
            script_args.dataset_name, script_args.audio_column, script_args.text_column, script_args.speaker_column,
            split=script_args.dataset_split, dataset_config=script_args.dataset_config, streaming=script_args.streaming,
        )
        prepare_dataset(
            rows, prepared, processor.audio_tokenizer, max_duration=script_args.max_duration,
            num_proc=script_args.num_proc, source_name=script_args.dataset_name,
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
        raise ValueError(f"--heldout_speakers names {missing}, who speak no clip of the corpus (its speakers: "
                         f"{sorted(set(speakers), key=str)}).")
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
        train_rows, processor, ratios, script_args.max_length, num_samples=script_args.num_samples,
        text_rows=text_rows, seed=seed,
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
            task_samples, _ = build_task_samples(eval_rows, processor, {task: 1.0}, script_args.max_length, num_samples=len(eval_rows), seed=seed)
            if task_samples:
                # "text_only": "eval_text_loss" already names the loss on text targets
                eval_datasets["text_only" if task == "text" else task] = build_packed_dataset(task_samples, max_length, seed=seed)
    return train_dataset, eval_datasets, (train_indices, heldout_indices, voice_indices)


def audio_ids_of(rows, processor) -> list[list[int]]:
    """The model's audio ids of prepared rows (their `audio_codes` plus the audio offset)."""
    offset = processor.token_layout.audio_token_offset
    return [[code + offset for code in codes] for codes in rows["audio_codes"]]


def evaluate_heldout(model, processor, heldout, round_trip: bool = False) -> dict:
    """[`heldout_metrics`] of `model` on the report's held-out rows; with `round_trip`, also its
    [`speech_round_trip`] on their texts (it speaks them, greedily, then transcribes what it said)."""
    clips = [VoiceClip(audio=row["id"], text=row["text"], speaker=row["speaker"]) for row in heldout]
    audio_ids = audio_ids_of(heldout, processor)
    metrics = heldout_metrics(model, processor, clips, audio_ids)
    if round_trip:
        metrics["speech_round_trip"] = speech_round_trip(model, processor, clips, audio_ids, do_sample=False)
    return metrics


def heldout_section(
    rows, train_indices: Sequence[int], indices: Sequence[int], untrained: dict, trained: dict, layout
) -> dict:
    """The report's numbers on the held-out clips `indices` of `rows` (whose `audio_codes` are ids of `layout`): both
    models' metrics, the floors (most frequent training code, best constant training transcript), and the checks with
    their margins."""
    heldout, training = rows.select(indices), rows.select(train_indices)
    section = {
        "clip_ids": list(heldout["id"]),
        "speakers": sorted(set(heldout["speaker"]), key=str),
        "num_clips": len(heldout),
        "untrained": untrained,
        "trained": trained,
        "most_frequent_code_audio_accuracy": most_frequent_code_accuracy(
            training["audio_codes"], heldout["audio_codes"], layout
        ),
        "references": list(heldout["text"]),
    }
    section["best_constant_transcript_cer"] = best_constant_transcript_cer(training["text"], section["references"])
    section["checks"], section["margins"] = heldout_checks(section)
    return section


def end_of_run_report(
    processor, rows, split, codec_name: str | None, untrained: dict | None, trained: dict | None,
    voice_untrained: dict | None = None, voice_trained: dict | None = None,
) -> dict:
    """
    The report of a finished run: the codec (and whether it is the offline stand-in), the code perplexity of each
    codebook over the corpus, and on the held-out clips (`split`: training, held-out and held-out speakers' indices)
    the metrics of the untrained and the trained model against the floors of [`heldout_section`].
    """
    layout = processor.token_layout
    corpus_layout = type(layout)(layout.vq_strides, layout.codebook_size, 0)
    stand_in = codec_name is not None and is_standin_codec(codec_name)
    report = {
        "codec": {"name_or_path": codec_name, "stand_in": stand_in, "note": STANDIN_CODEC_NOTE if stand_in else None},
        "codebook_size": layout.codebook_size,
        "code_perplexity": layout_code_perplexities(rows["audio_codes"], corpus_layout),
        "num_corpus_clips": len(rows),
    }
    train_indices, heldout_indices, *voice = split
    if untrained is not None and trained is not None:
        report["heldout"] = heldout_section(rows, train_indices, heldout_indices, untrained, trained, corpus_layout)
    if voice and voice[0] and voice_untrained is not None and voice_trained is not None:
        report["heldout_speakers"] = heldout_section(
            rows, train_indices, voice[0], voice_untrained, voice_trained, corpus_layout
        )
    return report


def heldout_checks(heldout: dict) -> tuple[dict, dict]:
    """
    What the held-out numbers say, as yes/no, and by how much each comparison is won (`margins`: the relative
    distance to the bar, positive when the check passes, e.g. 0.5 = a CER half the floor's). A run that learned
    nothing, or only one constant code per frame position, fails the audio checks; a model that answers without
    listening (one training transcript for every clip, at best) fails the ASR floor check; a model whose speech does
    not carry the words fails the round-trip check (its own ASR on its own TTS output).
    """
    untrained, trained = heldout["untrained"], heldout["trained"]
    audio, untrained_audio = (m["teacher_forced"]["audio_token_accuracy"] for m in (trained, untrained))
    cer, untrained_cer = trained["asr"]["cer"], untrained["asr"]["cer"]
    constant_cer, code_floor = heldout["best_constant_transcript_cer"], heldout["most_frequent_code_audio_accuracy"]

    def above(value, bar):
        if value is None or bar is None:
            return None
        # a bar of 0 (an untrained model that gets nothing right) is beaten by any share at all
        return (value - bar) / bar if bar else (math.inf if value > 0 else 0.0)

    def below(value, bar):
        return None if value is None or bar is None or bar == 0 else (bar - value) / bar

    margins = {
        "audio_accuracy_above_most_frequent_code": above(audio, code_floor),
        "audio_accuracy_above_untrained": above(audio, untrained_audio),
        "asr_cer_below_untrained": below(cer, untrained_cer),
        "asr_cer_below_best_constant_transcript": below(cer, constant_cer),
    }
    if "speech_round_trip" in trained:
        margins["speech_round_trip_cer_below_best_constant_transcript"] = below(
            trained["speech_round_trip"]["cer"], constant_cer
        )
    checks = {name: margin is not None and margin > 0 for name, margin in margins.items()}
    return checks, margins


def format_section(title: str, heldout: dict) -> list[str]:
    untrained, trained = heldout["untrained"], heldout["trained"]
    rows = [
        # None: no reference had words to err on
        *((f"ASR {name} error rate", *(math.nan if m["asr"][key] is None else m["asr"][key] for m in (untrained, trained)))
          for name, key in (("character", "cer"), ("word", "wer"))),
        ("audio-token accuracy (TTS)", untrained["teacher_forced"]["audio_token_accuracy"], trained["teacher_forced"]["audio_token_accuracy"]),
        ("text-token accuracy (ASR)", untrained["teacher_forced"]["text_token_accuracy"], trained["teacher_forced"]["text_token_accuracy"]),
    ]
    speakers = ", ".join(map(str, heldout["speakers"]))
    lines = [f"  {title}: {heldout['num_clips']} clips of {speakers}:  untrained -> trained"]
    lines += [f"    {name:<28} {before:.3f} -> {after:.3f}" for name, before, after in rows]
    round_trip = trained.get("speech_round_trip")
    if round_trip is not None:
        lines.append(
            f"    its own ASR on its own TTS of these texts (codes in, codes out): CER {_number(round_trip['cer'])}, "
            f"WER {_number(round_trip['wer'])}, speech length {round_trip['duration_ratio']:.2f} x the clips'"
        )
    lines.append(f"    audio-token accuracy of always predicting the most frequent code: {heldout['most_frequent_code_audio_accuracy']:.3f}")
    lines.append(f"    ASR CER of the best single training transcript given for every clip: {_number(heldout['best_constant_transcript_cer'])}")
    for name, passed in heldout["checks"].items():
        margin = heldout["margins"][name]
        lines.append(f"    {name.replace('_', ' ')}: {'yes' if passed else 'NO'} (margin {_number(margin, '+.0%')})")
    examples = list(zip(heldout["references"], trained["asr"]["transcripts"]))[:3]
    for index, (reference, transcript) in enumerate(examples):
        spoken = f" | spoken and heard back {round_trip['transcripts'][index]!r}" if round_trip else ""
        lines.append(f"    heard {reference!r} -> {transcript!r}{spoken}")
    return lines


def _number(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(report: dict, path: Path) -> str:
    """The report as the lines the run logs."""
    perplexities = " / ".join(f"{value:.0f}" for value in report["code_perplexity"])
    lines = [f"End-of-run report ({path}):"]
    if report["codec"]["stand_in"]:
        lines.append(f"  codec: {report['codec']['note']}")
    lines.append(f"  code perplexity per codebook over the corpus: {perplexities} (of {report['codebook_size']} codes)")
    heldout = report.get("heldout")
    if heldout is None:
        lines.append("  no held-out metrics (no held-out clips, or --heldout_report false)")
        return "\n".join(lines)
    lines += format_section("held-out sentences (never trained on)", heldout)
    if "heldout_speakers" in report:
        lines += format_section("held-out speakers (never trained on)", report["heldout_speakers"])
    return "\n".join(lines)


def main(script_args: PretrainArguments, training_args: TrainingArguments, callbacks: list | None = None):
    # the prepared cache (--prepared_dir, default <output_dir>/prepared) is the run's own: written, then reused
    check_output_dir(training_args.output_dir, {
        f"--{name}": getattr(script_args, name)
        for name in ("dataset_name", "model_name_or_path", "text_model", "tokenizer", "codec", "text_file")
    })
    check_launch(training_args)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    push = training_args.push_to_hub
    if push:
        validate_repo_id(training_args.hub_model_id)
        # the Trainer would upload checkpoints as it goes; publishing waits for hub.push_to_hub's checks at the end
        training_args.push_to_hub = False
    checkpoint = resolve_resume_checkpoint(training_args)
    with training_args.main_process_first(desc="building the model and preparing the data"):
        if script_args.dataset_name is None:
            use_command_corpus(script_args, output_dir)
        elif (script_args.command_corpus_sentences, script_args.command_corpus_heldout_voice_sentences) != (
            CommandCorpusSpec.num_train, CommandCorpusSpec.num_heldout_voice
        ):
            raise ValueError(
                f"--command_corpus_* options size the default command corpus, but --dataset_name "
                f"{script_args.dataset_name} was given; leave them out, or drop --dataset_name."
            )
        model, processor = load_or_build_model(script_args, output_dir)
        if checkpoint:
            check_checkpoint(checkpoint, model)
        rows = prepared_rows(script_args, processor, output_dir)
    train_dataset, eval_datasets, split = build_datasets(script_args, processor, rows, training_args.seed)
    report_split = tuple(indices[: script_args.report_max_clips] for indices in split)
    report_rows, voice_rows = rows.select(report_split[1]), rows.select(report_split[2])
    reporting = script_args.heldout_report and len(report_rows) > 0 and training_args.process_index == 0
    # the model this run starts from (before the Trainer wraps it), on the clips the report uses
    untrained = evaluate_heldout(model, processor, report_rows) if reporting else None
    voice_untrained = evaluate_heldout(model, processor, voice_rows) if reporting and len(voice_rows) else None
    if not eval_datasets and training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"
    logger.info(
        f"Model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocabulary {model.config.vocab_size} "
        f"(audio from {model.config.audio_token_offset}), optimizer {script_args.optimizer}, loss weights text "
        f"{model.config.text_loss_weight} / audio {model.config.audio_loss_weight}."
    )
    # packed rows are told apart by their position ids only when no cache is built (see OmniPackingCollator)
    model.config.use_cache = False
    # the model also accepts `shift_labels`; evaluation must not wait for both
    training_args.label_names = ["labels"]
    preprocess_logits, compute_metrics = token_metrics_from_logits(model.config)
    trainer = OmniPretrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        data_collator=OmniPackingCollator(
            processor.tokenizer.pad_token_id, packed=script_args.packing,
            pad_to_multiple_of=8 if torch.cuda.is_available() else None,
        ),
        processing_class=processor,
        compute_metrics=compute_metrics if eval_datasets else None,
        preprocess_logits_for_metrics=preprocess_logits if eval_datasets else None,
        optimizer_name=script_args.optimizer,
        callbacks=callbacks,
    )
    trainer.add_callback(DistributedRunCallback())
    result = trainer.train(resume_from_checkpoint=checkpoint)
    model.config.use_cache = True
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        model.generation_config.save_pretrained(output_dir)
        logger.info(
            f"Done: {result.global_step} steps, final training loss {result.training_loss:.4f}. The checkpoint in "
            f"{output_dir} loads with AutoModelForCausalLM.from_pretrained({str(output_dir)!r}, trust_remote_code=True)."
        )
        # the saved checkpoint, as a user loads it (whatever sharding the Trainer trained it with)
        saved = OmniForCausalLM.from_pretrained(output_dir) if reporting else None
        trained = evaluate_heldout(saved, processor, report_rows, round_trip=True) if reporting else None
        voice_trained = evaluate_heldout(saved, processor, voice_rows) if voice_untrained is not None else None
        codec_name = processor.codec_name_or_path
        report = end_of_run_report(
            processor, rows, (split[0], *report_split[1:]), codec_name, untrained, trained,
            voice_untrained, voice_trained,
        )
        (output_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
        logger.info(format_report(report, output_dir / REPORT_NAME))
        if push:
            push_to_hub(output_dir, training_args.hub_model_id, private=bool(training_args.hub_private_repo),
                        datasets=[script_args.dataset_name])
    return trainer, result


if __name__ == "__main__":
    main(*parse_args(sys.argv[1:]))
