"""LoRA fine-tuning of Qwen3-Omni's Thinker (attention, MoE router and experts) on conversation data, with TRL.

    accelerate launch train/sft.py --config train/configs/instruct.yaml \
        --model_name_or_path Qwen/Qwen3-Omni-30B-A3B-Instruct --dataset_name data.jsonl --output_dir out

Every TRL/Trainer flag works (`TrlParser` over `ScriptArguments`, `SFTConfig`, `ModelConfig`). A checkpoint whose
config has `model_type == "omni"` (the SNAC-token Omni model) is handed to `train/omni_voice_sft.py`, the Omni voice
recipe, with its own options (`--speaker`, `--lora_target_embeddings`, ...).
"""

import argparse
import os
import runpy
import sys

import yaml
from transformers import AutoConfig, AutoProcessor
from transformers.utils import logging
from trl import ScriptArguments, TrlParser

from qwen_omni.common.hub import defer_hub_push, push_after_training
from qwen_omni.common.launching import (
    DistributedRunCallback,
    check_launch,
    check_output_dir,
    resolve_resume_checkpoint,
    shard_by_decoder_layer,
)
from qwen_omni.qwen3_omni import (
    ModalityLossWeights,
    Qwen3OmniSFTCollator,
    Qwen3OmniSFTTrainer,
    build_lora_config,
    load_conversation_dataset,
    load_thinker,
)
from qwen_omni.qwen3_omni.arguments import Qwen3OmniArguments, Qwen3OmniModelConfig, Qwen3OmniSFTConfig
from qwen_omni.qwen3_omni.conversations import DatasetReport, TooManyRowsSkipped, control_token_strings
from qwen_omni.qwen3_omni.lora_targets import lora_config_kwargs
from qwen_omni.qwen3_omni.memory_estimate import estimate_for_run


logger = logging.get_logger(__name__)


def checkpoint_model_type(argv: list[str]) -> str | None:
    """`model_type` of the checkpoint named by `--model_name_or_path`, on the command line or in `--config`'s YAML."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--model_name_or_path")
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
    return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=True).model_type


def main(script_args, training_args, model_args, omni_args):
    if model_args.estimate_memory:
        # from the checkpoint's config only: no weights, data or launch needed
        print(estimate_for_run(model_args, training_args, omni_args).format())
        return
    check_output_dir(
        training_args.output_dir,
        {
            "--model_name_or_path": model_args.model_name_or_path,
            "--dataset_name": script_args.dataset_name,
            "--eval_dataset_name": omni_args.eval_dataset_name,
        },
    )
    check_launch(training_args)
    resume_checkpoint = resolve_resume_checkpoint(training_args)  # before the data and the model are loaded
    # An adapter is published at the end, with a card whose usage code is tested (TRL's would upload checkpoints and
    # a card that does not load it as it goes); a full fine-tune is a plain transformers Thinker, uploaded by TRL.
    adapter_repo_id = defer_hub_push(training_args) if model_args.use_peft else None
    reports = {}
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)

    def load(path, split):
        # Refused rows are counted per reason; too many stop the run here, before the model is loaded. The report is
        # written whenever loading ends, also when it stops the run.
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

    try:
        train_dataset = load(script_args.dataset_name, "train")
        eval_dataset = load(omni_args.eval_dataset_name, "eval") if omni_args.eval_dataset_name else None
    except ValueError as error:  # TooManyRowsSkipped, unreadable files
        sys.exit(str(error))  # one message naming the file, rows and fix; no traceback
    # not trl.get_quantization_config: its BitsAndBytesConfig reaches nn.Linear only; load_thinker adds the NF4 fused
    # experts (and --quantize_towers false)
    model = load_thinker(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        experts_implementation=omni_args.experts_implementation,
        attn_implementation=model_args.attn_implementation,
        **model_args.quantization_kwargs(),
        offload_experts=model_args.offload_experts,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    shard_by_decoder_layer(model, model.model.language_model.layers)  # FSDP units every rank runs through
    peft_config = None
    if model_args.use_peft:
        # not trl.get_peft_config: routers and fused experts are parameter targets named in full (PEFT matches 4-bit
        # expert tensors by full name only), with their own rank, which ModelConfig's flags cannot express
        peft_config = build_lora_config(model, **lora_config_kwargs(model_args, omni_args))

    trainer = Qwen3OmniSFTTrainer(
        model=model,
        args=training_args,
        data_collator=Qwen3OmniSFTCollator(
            processor,
            max_length=training_args.max_length,
            truncation=omni_args.overlong_samples,
            loss_weights=ModalityLossWeights.from_value(omni_args.loss_weights),
            video_fps=omni_args.video_fps,
            max_video_frames=omni_args.max_video_frames,
            use_audio_in_video=omni_args.use_audio_in_video,
        ),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=peft_config,
        moe_lora_impl=omni_args.moe_lora_impl,
        train_report=reports["train"],
        max_skipped_fraction=omni_args.max_skipped_fraction,
    )
    trainer.add_callback(DistributedRunCallback())
    try:
        trainer.train(resume_from_checkpoint=resume_checkpoint)
    except TooManyRowsSkipped as error:
        save_collator_counts(trainer, reports, training_args)
        sys.exit(str(error))
    save_collator_counts(trainer, reports, training_args)
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name)
    if training_args.push_to_hub:  # full fine-tuning: a plain transformers Thinker, uploaded by TRL
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    push_after_training(
        training_args.output_dir,
        adapter_repo_id,
        training_args,
        base_model=model_args.model_name_or_path,
        verify=False,
        datasets=[script_args.dataset_name],
        commit_message="Qwen3-Omni Thinker LoRA adapter",
    )
    trainer.end()


def save_collator_counts(trainer, reports: dict, training_args) -> None:
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


if __name__ == "__main__":
    if checkpoint_model_type(sys.argv[1:]) == "omni":
        runpy.run_path(
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "omni_voice_sft.py"), run_name="__main__"
        )
    else:
        parser = TrlParser((ScriptArguments, Qwen3OmniSFTConfig, Qwen3OmniModelConfig, Qwen3OmniArguments))
        main(*parser.parse_args_and_config())
