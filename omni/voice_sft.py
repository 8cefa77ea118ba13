# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Voice fine-tuning of an Omni checkpoint: teach it one speaker's voice from (audio, transcript) pairs with TRL's
`SFTTrainer` and a PEFT LoRA adapter.

`train/sft.py` calls [`main`] when the model's config has `model_type == "omni"`:

    accelerate launch train/sft.py --model_name_or_path OMNI_DIR --dataset_name data/voice_clips \
        --output_dir out/nova --use_peft --num_train_epochs 3 --learning_rate 2e-4

Each clip becomes the text-to-speech sequence
`<|tts|><|text_start|>{speaker}: {text}<|text_end|><|audio_start|> AUDIO <|audio_end|>` (built by
[`OmniProcessor.tts_sequence_ids`]); by default only the audio tokens and the audio end carry loss
(`completion_only_loss`: the prompt is the text, the completion the speech).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from transformers import Trainer
from transformers.utils import logging
from trl import SFTTrainer

from ..common.audio import audio_path, read_audio
from ..common.clips import VoiceClip, check_sampling_rates, read_clips
from ..common.hub import defer_hub_push, push_after_training
from ..common.launching import (
    CompleteCheckpointsMixin,
    DistributedRunCallback,
    check_launch,
    check_output_dir,
    resolve_resume_checkpoint,
)
from ..configuration_omni import IGNORE_INDEX
from ..modeling_omni import OmniForCausalLM, next_token_targets
from ..processing_omni import OmniProcessor
from .trainer import ModalityWeightedLossMixin


logger = logging.get_logger(__name__)

# Attention and MLP projections of the Qwen3 decoder layers.
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class VoiceSFTArguments:
    """Options of the voice recipe that TRL's `ScriptArguments` / `SFTConfig` / `ModelConfig` do not hold."""

    speaker: str | None = field(
        default=None,
        metadata={"help": "Speaker name put in the prompt ('{speaker}: {text}') for clips whose metadata has none."},
    )
    audio_column: str = field(default="audio", metadata={"help": "Column holding the audio (path or Audio)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the transcript."})
    speaker_column: str | None = field(default="speaker", metadata={"help": "Column holding the speaker name."})
    lora_target_embeddings: bool = field(
        default=False, metadata={"help": "Also put LoRA on the token embeddings (embed_tokens)."}
    )
    allow_mixed_sampling_rates: bool = field(
        default=False,
        metadata={"help": "Accept one speaker's clips at several sampling rates (each is resampled to the codec's)."},
    )
    save_merged: bool = field(
        default=True,
        metadata={
            "help": "Also save the adapter merged into the base model, with processor and code, to "
            "OUTPUT_DIR/merged (a folder that loads with trust_remote_code and nothing else)."
        },
    )


# ---------------------------------------------------------------------------------------------------- data


def build_voice_dataset(clips: list[VoiceClip], processor: OmniProcessor, audio_only_loss: bool = True) -> Dataset:
    """
    Tokenise clips into TTS training sequences: `input_ids`, and `labels` with `-100` on the prompt when
    `audio_only_loss` (so only the speech and its end are learned).
    """
    rows = {"input_ids": [], "labels": []}
    for clip in clips:
        waveform, rate = read_audio(clip.audio)
        audio_ids = processor.audio_to_ids(waveform, sampling_rate=rate)[0].tolist()
        if not audio_ids:
            raise ValueError(
                f"{audio_path(clip.audio)} is shorter than one codec frame ({processor.audio_tokenizer.config.samples_per_frame} "
                "samples at the codec's rate); remove it."
            )
        prompt_length = len(processor.tts_prompt_ids(clip.text, speaker=clip.speaker))
        sequence = processor.tts_sequence_ids(clip.text, audio_ids, speaker=clip.speaker)
        labels = [IGNORE_INDEX] * prompt_length + sequence[prompt_length:] if audio_only_loss else list(sequence)
        rows["input_ids"].append(sequence)
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


# ---------------------------------------------------------------------------------------------------- training
class _OmniLossSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss is the Omni model's own: TRL 1.16's `SFTTrainer.compute_loss` runs a fused LM head and
    a plain token-mean cross-entropy, which would drop the modality weights and the text / audio losses. This runs
    `Trainer.compute_loss` (the model's forward with `labels` and `num_items_in_batch`) and keeps TRL's
    `mean_token_accuracy` metric."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False
        loss, outputs = Trainer.compute_loss(
            self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        with torch.no_grad():
            targets = next_token_targets(inputs["labels"])
            valid = targets != IGNORE_INDEX
            correct = (outputs.logits.argmax(-1) == targets) & valid
            num_valid = self.accelerator.gather_for_metrics(valid.sum()).sum()
            num_correct = self.accelerator.gather_for_metrics(correct.sum()).sum()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        return (loss, outputs) if return_outputs else loss


class VoiceSFTTrainer(CompleteCheckpointsMixin, ModalityWeightedLossMixin, _OmniLossSFTTrainer):
    """TRL's `SFTTrainer` for Omni voice fine-tuning: the model's modality-weighted loss, exact under gradient
    accumulation, with `text_loss` / `audio_loss` / `mean_token_accuracy` logged; checkpoints marked complete
    ([`CompleteCheckpointsMixin`])."""


def lora_config(model_args, voice_args: VoiceSFTArguments):
    """The LoRA config: attention and MLP projections (or `model_args.lora_target_modules`), embeddings on request.
    No option for LoRA on `lm_head`: TRL's `SFTTrainer` refuses an adapter there (it would never train)."""
    from peft import LoraConfig

    targets = list(model_args.lora_target_modules or DEFAULT_LORA_TARGETS)
    if voice_args.lora_target_embeddings and "embed_tokens" not in targets:
        targets.append("embed_tokens")
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        task_type="CAUSAL_LM",
    )


def _check_lengths(dataset: Dataset, max_length: int | None) -> None:
    if max_length is None:
        return
    lengths = [len(ids) for ids in dataset["input_ids"]]
    overlong = [length for length in lengths if length > max_length]
    if overlong:
        raise ValueError(
            f"{len(overlong)} of {len(lengths)} clips give sequences longer than max_length={max_length} (longest "
            f"{max(overlong)} tokens); truncating would cut their speech and its end. Raise --max_length to at least "
            f"{max(overlong)} or split those clips."
        )


def save_merged_model(base_model: str | os.PathLike, adapter_dir: str | os.PathLike, processor: OmniProcessor) -> str:
    """Merge the adapter saved in `adapter_dir` into a fresh copy of the base model and save it, with the processor
    and the remote-code files, to `adapter_dir/merged`; returns that folder. Reloading from disk leaves the trainer's
    model (and its adapter) untouched."""
    from peft import PeftModel

    merged_dir = os.path.join(adapter_dir, "merged")
    base = OmniForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
    logger.info(f"Adapter merged into {base_model} and written to {merged_dir}")
    return merged_dir


def main(script_args, training_args, model_args, voice_args: VoiceSFTArguments | None = None):
    """
    Fine-tune an Omni checkpoint on a speaker's clips.

    Args:
        script_args (`trl.ScriptArguments`): `dataset_name` is the clips' source (see [`read_clips`]);
            `dataset_train_split` and `dataset_config` apply to a `datasets` source.
        training_args (`trl.SFTConfig`): the trainer settings; `completion_only_loss=False` also trains on the prompt
            text (default: audio tokens only); `max_length` must hold the longest clip (nothing is truncated).
        model_args (`trl.ModelConfig`): `model_name_or_path`, `dtype`, and the LoRA settings (`use_peft`, `lora_r`,
            `lora_alpha`, `lora_dropout`, `lora_target_modules`, `lora_modules_to_save`, `use_rslora`).
        voice_args ([`VoiceSFTArguments`], *optional*): the recipe's own options.

    Returns:
        The trainer, after training and saving.
    """
    voice_args = voice_args or VoiceSFTArguments()
    check_output_dir(
        training_args.output_dir,
        {
            "--model_name_or_path": model_args.model_name_or_path,
            "--dataset_name": script_args.dataset_name,
        },
    )
    check_launch(training_args)
    resume_checkpoint = resolve_resume_checkpoint(training_args)  # before the clips and the model are loaded
    # published at the end, after push_to_hub's checks (code files, clean-process reload)
    repo_id = defer_hub_push(training_args)
    audio_only_loss = training_args.completion_only_loss is not False
    clips = read_clips(
        script_args.dataset_name,
        speaker=voice_args.speaker,
        audio_column=voice_args.audio_column,
        text_column=voice_args.text_column,
        speaker_column=voice_args.speaker_column,
        split=script_args.dataset_train_split,
        dataset_config=script_args.dataset_config,
    )
    rates = check_sampling_rates(clips, allow_mixed=voice_args.allow_mixed_sampling_rates)
    logger.info(f"{len(clips)} clips of speakers {sorted(rates)} at {rates} Hz.")

    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
    model = OmniForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype,
        attn_implementation=model_args.attn_implementation,
    )
    processor = OmniProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    train_dataset = build_voice_dataset(clips, processor, audio_only_loss=audio_only_loss)
    _check_lengths(train_dataset, training_args.max_length)

    if not model_args.use_peft:
        logger.warning(
            "use_peft is off: every weight of the model is fine-tuned (pass --use_peft for a LoRA adapter)."
        )
    trainer = VoiceSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=lora_config(model_args, voice_args) if model_args.use_peft else None,
    )
    trainer.add_callback(DistributedRunCallback())
    trainer.train(resume_from_checkpoint=resume_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:  # the training curves of train/evaluate.py
        trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
    folder = training_args.output_dir
    if model_args.use_peft and voice_args.save_merged and trainer.accelerator.is_main_process:
        folder = save_merged_model(model_args.model_name_or_path, training_args.output_dir, processor)
    push_after_training(folder, repo_id, training_args, datasets=[script_args.dataset_name])
    return trainer
