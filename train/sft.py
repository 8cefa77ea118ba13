"""LoRA fine-tuning of Qwen3-Omni's Thinker (attention, MoE router and experts) on conversation data, with TRL.

    accelerate launch train/sft.py --config train/configs/instruct.yaml \
        --model_name_or_path Qwen/Qwen3-Omni-30B-A3B-Instruct --dataset_name data.jsonl --output_dir out

Every TRL/Trainer flag works (`TrlParser` over `ScriptArguments`, `SFTConfig`, `ModelConfig`). A checkpoint whose
config has `model_type == "omni"` (the SNAC-token Omni model) is handed to `train/omni_voice_sft.py`, the Omni voice
recipe, with its own options (`--speaker`, `--lora_target_embeddings`, ...).
"""

import os
import runpy
import sys

from transformers import AutoProcessor
from trl import ScriptArguments, TrlParser

from qwen_omni.common.hub import defer_hub_push, push_after_training
from qwen_omni.common.launching import (
    DistributedRunCallback,
    check_launch,
    check_output_dir,
    checkpoint_model_type,
    resolve_resume_checkpoint,
    shard_by_decoder_layer,
)
from qwen_omni.qwen3_omni import (
    Qwen3OmniSFTCollator,
    Qwen3OmniSFTTrainer,
    build_lora_config,
    load_thinker,
)
from qwen_omni.qwen3_omni.arguments import Qwen3OmniArguments, Qwen3OmniModelConfig, Qwen3OmniSFTConfig
from qwen_omni.qwen3_omni.conversations import TooManyRowsSkipped
from qwen_omni.qwen3_omni.lora_targets import lora_config_kwargs
from qwen_omni.qwen3_omni.memory_estimate import estimate_for_run
from qwen_omni.qwen3_omni.sft_data import load_sft_data, save_collator_counts


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
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    try:
        # refused rows are counted per reason; too many stop the run here, before the model is loaded
        data = load_sft_data(script_args, omni_args, training_args, processor)
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
        data_collator=Qwen3OmniSFTCollator.from_recipe(processor, training_args, omni_args),
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=processor,
        peft_config=peft_config,
        moe_lora_impl=omni_args.moe_lora_impl,
        train_report=data.reports["train"],
        max_skipped_fraction=omni_args.max_skipped_fraction,
    )
    trainer.add_callback(DistributedRunCallback())
    try:
        trainer.train(resume_from_checkpoint=resume_checkpoint)
    except TooManyRowsSkipped as error:
        save_collator_counts(trainer, data.reports, training_args)
        sys.exit(str(error))
    save_collator_counts(trainer, data.reports, training_args)
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


if __name__ == "__main__":
    if checkpoint_model_type(sys.argv[1:], trust_remote_code=True) == "omni":
        runpy.run_path(
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "omni_voice_sft.py"), run_name="__main__"
        )
    else:
        parser = TrlParser((ScriptArguments, Qwen3OmniSFTConfig, Qwen3OmniModelConfig, Qwen3OmniArguments))
        main(*parser.parse_args_and_config())
