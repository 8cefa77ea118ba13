# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Multimodal pretraining of an Omni model (text-to-speech, speech-to-text and text-only samples, packed).

    accelerate launch train/pretrain.py                                   # offline demo: tiny model, shipped corpus
    accelerate launch train/pretrain.py --config train/configs/pretrain.yaml \
        --dataset_name data/prepared/librispeech --codec hubertsiuzdak/snac_24khz --tokenizer Qwen/Qwen3-0.6B
    accelerate launch --config_file train/accelerate/multi_gpu.yaml train/pretrain.py --config ...

Every `transformers.TrainingArguments` flag works, plus [`PretrainArguments`]; a YAML `--config` sets defaults that
the command line overrides (TRL's `TrlParser`; an unknown key is an error). With no arguments the run is fully
offline: it trains a BPE tokenizer on the corpus transcripts, builds a *random* SNAC codec of the 24 kHz layout
(real rates and token layout, small widths; its codes are not real speech units, use `--codec
hubertsiuzdak/snac_24khz` for real work), prepares `data/demo_corpus` (cached in `<output_dir>/prepared`) and trains
the seed's tiny model (d_model 128, 4 heads, 3 layers) with Muon to a checkpoint in `<output_dir>` that loads with
`AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)`.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, TrainingArguments
from transformers.utils import logging
from trl import TrlParser

from qwen_omni.feature_extraction_omni import SNACFeatureExtractor
from qwen_omni.launching import DistributedRunCallback, check_launch
from qwen_omni.omni.corpus import (
    is_prepared_dataset,
    load_audio_text_rows,
    load_prepared_dataset,
    prepare_dataset,
    read_prepare_info,
)
from qwen_omni.omni.hub import push_to_hub, validate_repo_id
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
from qwen_omni.omni.trainer import OmniPretrainer, token_metrics_from_logits


logger = logging.get_logger("qwen_omni.pretrain")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CORPUS = REPO_ROOT / "data" / "demo_corpus"
# The 24 kHz SNAC's rates and frame layout (hop 512, vq_strides [4, 2, 1]: 7 tokens per 85 ms frame), with small
# widths and 1024 codes per codebook instead of 4096, so that the offline demo encodes and trains on 2 CPU cores in
# minutes (a 4096-code vocabulary makes each step ~4x slower there). Random weights: a stand-in, not a speech codec.
OFFLINE_CODEC_CONFIG = dict(
    sampling_rate=24000, encoder_dim=16, encoder_rates=[2, 4, 8, 8], decoder_dim=64, decoder_rates=[8, 8, 4, 2],
    attn_window_size=None, codebook_size=1024, codebook_dim=8, vq_strides=[4, 2, 1], noise=True, depthwise=True,
)
# settings that must agree between a checkpoint and the model it resumes
CHECKPOINT_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "audio_token_offset", "codebook_size", "vq_strides",
)
# TrainingArguments defaults of the offline demo (a YAML --config or the command line override them)
DEMO_TRAINING_DEFAULTS = dict(
    output_dir="runs/omni-pretrain", max_steps=150, per_device_train_batch_size=2, per_device_eval_batch_size=4,
    learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=10, weight_decay=0.0, logging_steps=10,
    save_steps=50, save_total_limit=2, eval_strategy="steps", eval_steps=50, report_to=["tensorboard"], seed=42,
    remove_unused_columns=False, train_sampling_strategy="group_by_length", bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
)


@dataclass
class PretrainArguments:
    """Data, model and mixing options of train/pretrain.py (the training loop's are `TrainingArguments`)."""

    dataset_name: str = field(
        default=str(DEMO_CORPUS),
        metadata={"help": "Speech corpus: a prepared folder (train/prepare_data.py), a Hub id or local datasets "
                          "folder, a JSONL/CSV of audio paths + transcripts, or a LibriSpeech/LibriTTS folder."},
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
    bpe_vocab_size: int = field(default=1024, metadata={"help": "Vocabulary of the BPE trained on the corpus."})
    hidden_size: int = field(default=128, metadata={"help": "From-scratch model width (seed: 128)."})
    num_hidden_layers: int = field(default=3, metadata={"help": "From-scratch model depth (seed: 3)."})
    num_attention_heads: int = field(default=4, metadata={"help": "From-scratch attention heads (seed: 4)."})
    num_key_value_heads: int = field(default=2, metadata={"help": "From-scratch key/value heads."})
    text_loss_weight: float = field(default=0.1, metadata={"help": "Loss weight of text targets (seed: 0.1)."})
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


def resolve_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint folder to resume from (`--resume_from_checkpoint true` means the last one in output_dir)."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    if str(value).lower() in ("true", "last", "latest"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: {training_args.output_dir} holds no checkpoint-* folder.")
        return last
    if not os.path.isdir(value):
        raise ValueError(f"--resume_from_checkpoint {value} does not exist.")
    return value


def offline_codec(output_dir: Path) -> Path:
    """Save (once) the random 24 kHz-layout SNAC of the offline demo in SNAC's layout and return its folder."""
    import snac

    path = output_dir / "random_snac_24khz"
    if not (path / "pytorch_model.bin").exists():
        torch.manual_seed(0)
        codec = snac.SNAC(**OFFLINE_CODEC_CONFIG)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(OFFLINE_CODEC_CONFIG))
        torch.save(codec.state_dict(), path / "pytorch_model.bin")
    logger.warning(
        f"No --codec given: using a RANDOM SNAC codec with the 24 kHz layout ({path}), so that the demo runs offline. "
        "Its tokens are not real speech units; pass --codec hubertsiuzdak/snac_24khz for a real model."
    )
    return path


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
    codec = script_args.codec or offline_codec(output_dir)
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
            rows, prepared, processor.feature_extractor, max_duration=script_args.max_duration,
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
    return load_prepared_dataset(prepared)


def build_datasets(script_args: PretrainArguments, processor, rows, seed: int):
    """Training rows (the task mix, packed) and one evaluation set per task, from held-out clips."""
    ratios = parse_task_ratios(script_args.task_ratios)
    indices = list(range(len(rows)))
    random.Random(seed).shuffle(indices)
    num_eval = round(script_args.eval_fraction * len(rows)) if script_args.eval_fraction > 0 and len(rows) > 1 else 0
    num_eval = min(max(num_eval, 1 if script_args.eval_fraction > 0 and len(rows) > 1 else 0), len(rows) - 1)
    eval_rows, train_rows = rows.select(indices[:num_eval]), rows.select(indices[num_eval:])
    text_rows = Path(script_args.text_file).read_text(encoding="utf-8").splitlines() if script_args.text_file else None
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
    logger.warning(
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
    return train_dataset, eval_datasets


def main(script_args: PretrainArguments, training_args: TrainingArguments, callbacks: list | None = None):
    check_launch(training_args)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    push = training_args.push_to_hub
    if push:
        validate_repo_id(training_args.hub_model_id)
        # the Trainer would upload checkpoints as it goes; publishing waits for hub.push_to_hub's checks at the end
        training_args.push_to_hub = False
    checkpoint = resolve_checkpoint(training_args)
    with training_args.main_process_first(desc="building the model and preparing the data"):
        model, processor = load_or_build_model(script_args, output_dir)
        if checkpoint:
            check_checkpoint(checkpoint, model)
        rows = prepared_rows(script_args, processor, output_dir)
    train_dataset, eval_datasets = build_datasets(script_args, processor, rows, training_args.seed)
    if not eval_datasets and training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"
    logger.warning(
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
        logger.warning(
            f"Done: {result.global_step} steps, final training loss {result.training_loss:.4f}. The checkpoint in "
            f"{output_dir} loads with AutoModelForCausalLM.from_pretrained({str(output_dir)!r}, trust_remote_code=True)."
        )
        if push:
            push_to_hub(output_dir, training_args.hub_model_id, private=bool(training_args.hub_private_repo),
                        datasets=[script_args.dataset_name])
    return trainer, result


if __name__ == "__main__":
    logging.set_verbosity_warning()
    main(*parse_args(sys.argv[1:]))
