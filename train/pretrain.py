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
are held out. See docs/omni.md.

At the end the run writes `<output_dir>/pretrain_report.json` and logs it: the code perplexity of each codebook on
the corpus, and on held-out sentences (and speakers) it never trained on the ASR character error rate, the
audio-token accuracy and the CER of its own ASR on its own TTS output, for the trained model against the untrained
one and against floors (predicting the most frequent code, one constant transcript), each check with its margin, so
that a run that learned nothing (or only a constant) shows as such.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.utils import logging

from qwen_omni import OmniForCausalLM
from qwen_omni.common.hub import defer_hub_push, push_after_training
from qwen_omni.common.launching import (
    DistributedRunCallback,
    check_launch,
    check_output_dir,
    resolve_resume_checkpoint,
)
from qwen_omni.omni.command_corpus import CommandCorpusSpec
from qwen_omni.omni.packing import OmniPackingCollator
from qwen_omni.omni.pretrain_report import REPORT_NAME, end_of_run_report, evaluate_heldout, format_report
from qwen_omni.omni.pretraining import (
    PretrainArguments,
    build_datasets,
    check_checkpoint,
    load_or_build_model,
    parse_args,
    prepared_rows,
    use_command_corpus,
)
from qwen_omni.omni.trainer import OmniPretrainer, token_metrics_from_logits


logger = logging.get_logger("qwen_omni.pretrain")


def main(script_args: PretrainArguments, training_args: TrainingArguments, callbacks: list | None = None):
    # the prepared cache (--prepared_dir, default <output_dir>/prepared) is the run's own: written, then reused
    check_output_dir(
        training_args.output_dir,
        {
            f"--{name}": getattr(script_args, name)
            for name in ("dataset_name", "model_name_or_path", "text_model", "tokenizer", "codec", "text_file")
        },
    )
    check_launch(training_args)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    repo_id = defer_hub_push(training_args)  # checked now, published after push_to_hub's checks at the end
    checkpoint = resolve_resume_checkpoint(training_args)
    with training_args.main_process_first(desc="building the model and preparing the data"):
        if script_args.dataset_name is None:
            use_command_corpus(script_args, output_dir)
        elif (script_args.command_corpus_sentences, script_args.command_corpus_heldout_voice_sentences) != (
            CommandCorpusSpec.num_train,
            CommandCorpusSpec.num_heldout_voice,
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
            processor.tokenizer.pad_token_id,
            packed=script_args.packing,
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
            processor,
            rows,
            (split[0], *report_split[1:]),
            codec_name,
            untrained,
            trained,
            voice_untrained,
            voice_trained,
        )
        (output_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
        logger.info(format_report(report, output_dir / REPORT_NAME))
        push_after_training(output_dir, repo_id, training_args, datasets=[script_args.dataset_name])
    return trainer, result


if __name__ == "__main__":
    main(*parse_args(sys.argv[1:]))
