"""The SFT recipe's train / eval conversations, each with the report of what was refused: written to
`output_dir/data_report_{split}.json` whenever loading ends (also when too many refusals stop the run there, before the
model is loaded), and again after training with the collator's running counts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from datasets import Dataset
from transformers.utils import logging

from .conversations import DatasetReport, control_token_strings, load_conversation_dataset


logger = logging.get_logger(__name__)


@dataclass
class SFTData:
    """The recipe's datasets and their reports by split ("train", "eval")."""

    train: Dataset
    eval: Dataset | None
    reports: dict[str, DatasetReport]


def load_sft_data(script_args, omni_args, training_args, processor) -> SFTData:
    """Load `--dataset_name` (and `--eval_dataset_name`) with the recipe's format options. Raises ValueError
    (`TooManyRowsSkipped`, an unreadable file) with one message naming the file, rows and fix."""
    reports = {}

    def load(path: str, split: str):
        reports[split] = DatasetReport(name=f"{split} data ({path})")
        try:
            dataset = load_conversation_dataset(
                path,
                split=script_args.dataset_train_split if split == "train" else script_args.dataset_test_split,
                config_name=script_args.dataset_config,
                system_prompt=omni_args.system_prompt,
                dataset_format=omni_args.dataset_format,
                media_dir=omni_args.media_dir,
                use_audio_in_video=omni_args.use_audio_in_video,
                report=reports[split],
                control_tokens=control_token_strings(processor.tokenizer),
            )
        finally:
            save_data_report(reports[split], split, training_args)
        reports[split].check(omni_args.max_skipped_fraction)
        return dataset

    train = load(script_args.dataset_name, "train")
    evaluation = load(omni_args.eval_dataset_name, "eval") if omni_args.eval_dataset_name else None
    return SFTData(train=train, eval=evaluation, reports=reports)


def save_collator_counts(trainer, reports: dict[str, DatasetReport], training_args) -> None:
    """Add the collator's running counts (rows seen, skipped for unreadable media, cut or dropped as overlong, steps
    without labels; the whole run's, resumes included) to the data reports and write them."""
    for split, report in reports.items():
        report.collator_counts = dict(trainer.collator_counts.totals[split])
        save_data_report(report, split, training_args)


def save_data_report(report: DatasetReport, split: str, training_args) -> None:
    """Log the data report and write it to `output_dir/data_report_{split}.json` (main process)."""
    if training_args.process_index != 0:
        return
    (logger.warning if report.num_refused else logger.info)(report.summary())
    os.makedirs(training_args.output_dir, exist_ok=True)
    report.save(os.path.join(training_args.output_dir, f"data_report_{split}.json"))
