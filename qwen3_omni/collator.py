"""The training collator for Qwen3-Omni conversations, built on the model's own `Qwen3OmniMoeProcessor`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import ProcessorMixin
from transformers.utils import logging
from trl.trainer.utils import pad

from .conversations import ModalityLossWeights, conversation_modalities, decode_media, template_conversation


logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
ASSISTANT_HEADER = "<|im_start|>assistant\n"
# Stands in for an assistant reply while the chat template renders the rest of the conversation.
REPLY_PLACEHOLDER = "\x00reply-{}\x00"
# Keys of the collated batch that carry counts for the trainer's logs rather than model inputs.
STAT_KEYS = ("num_rows_seen", "num_truncated", "num_dropped_too_long", "num_skipped_media")


@dataclass
class Qwen3OmniSFTCollator:
    """Turn conversation rows into a training batch for `Qwen3OmniMoeThinkerForConditionalGeneration`.

    Each row is processed alone: its media are decoded as Qwen's inference path decodes them, with `qwen-omni-utils`
    (see [`decode_media`]: the frames sampled and sized as at serving time), the processor applies the chat template
    and expands the media placeholders, and the labels are the
    input ids inside the assistant turns (the turn's text and its closing `<|im_end|>`) and -100 everywhere else. The
    rows are then padded on the right and their media tensors concatenated.

    The chat template renders everything but the assistant replies, which are put in verbatim (see `render`): Qwen's
    templates rewrite replies (Qwen3-Omni's drops `<think>...</think>` from list-form replies), and the labels must be
    the text the model has to produce. Parts are stripped of keys set to `None` first, so that key-presence templates
    (`'image' in content`) see the right kind for rows that went through `datasets`.

    A row whose media cannot be read is skipped; a row longer than `max_length` is truncated or dropped (see
    `truncation`). The counts travel with the batch (`num_rows_seen`, `num_truncated`, `num_dropped_too_long`,
    `num_skipped_media`) for the trainer to log and hold against `--max_skipped_fraction`, so they survive dataloader
    worker processes. When every row of a batch is skipped, the batch holds a single padding token with no label, so
    that every rank still runs a forward and backward (the trainer then takes no optimizer step).

    Args:
        processor (`ProcessorMixin`):
            The model's `Qwen3OmniMoeProcessor` (tokenizer with the chat template, feature extractor, image and video
            processors).
        max_length (`int`, *optional*):
            Longest sequence kept, in tokens after the media are expanded. `None` keeps everything.
        truncation (`"truncate"` or `"drop"`, *optional*, defaults to `"truncate"`):
            What to do with a longer row: cut it to `max_length` tokens, or drop it. A row is dropped anyway when the
            cut would fall inside or before its media placeholders (the media features would no longer match) or
            leave no assistant token to learn.
        loss_weights (`ModalityLossWeights`, *optional*):
            Per-sample loss weights by input modality, returned as `sample_weight`.
        video_fps (`float`, *optional*, defaults to 2.0):
            Frame rate video files are sampled at (`qwen-omni-utils`' `fps`, whose default is 2), and the rate of
            frame lists (its `sample_fps`).
        max_video_frames (`int`, *optional*):
            Most frames sampled from a video file (`qwen-omni-utils`' `max_frames`; default its own, 768).
        processor_kwargs (`dict`, *optional*):
            Extra keyword arguments for the processor call (e.g. `{"videos_kwargs": {"size": ...}}`).
        use_audio_in_video (`bool`, *optional*, defaults to `False`):
            Feed each video's sound too: its paired audio file (LLaMA-Factory's `<video><audio>`) or else its own
            sound track, given to the processor as the video's audio, which interleaves the video and audio tokens by
            time inside the video's placeholder; the batch then carries `use_audio_in_video=True` for the model's
            position ids. A video without either fails its row (skipped and counted;
            `load_conversation_dataset(use_audio_in_video=True)` refuses such rows before training).
    """

    processor: ProcessorMixin
    max_length: int | None = None
    truncation: Literal["truncate", "drop"] = "truncate"
    loss_weights: ModalityLossWeights = field(default_factory=ModalityLossWeights)
    video_fps: float = 2.0
    max_video_frames: int | None = None
    processor_kwargs: dict = field(default_factory=dict)
    use_audio_in_video: bool = False

    @classmethod
    def from_recipe(cls, processor: ProcessorMixin, training_args, omni_args) -> Qwen3OmniSFTCollator:
        """The collator `train/sft.py`'s parsed `Qwen3OmniSFTConfig` and `Qwen3OmniArguments` ask for."""
        return cls(
            processor,
            max_length=training_args.max_length,
            truncation=omni_args.overlong_samples,
            loss_weights=ModalityLossWeights.from_value(omni_args.loss_weights),
            video_fps=omni_args.video_fps,
            max_video_frames=omni_args.max_video_frames,
            use_audio_in_video=omni_args.use_audio_in_video,
        )

    def __post_init__(self):
        if self.truncation not in ("truncate", "drop"):
            raise ValueError(f"truncation={self.truncation!r} is not supported; use 'truncate' or 'drop'.")
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.im_start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.assistant_header = tokenizer.encode("assistant\n", add_special_tokens=False)
        self.media_token_ids = torch.tensor(
            [
                tokenizer.convert_tokens_to_ids(token)
                for token in (
                    self.processor.audio_token,
                    self.processor.image_token,
                    self.processor.video_token,
                    self.processor.audio_bos_token,
                    self.processor.audio_eos_token,
                    self.processor.vision_bos_token,
                    self.processor.vision_eos_token,
                )
            ]
        )
        self.sampling_rate = self.processor.feature_extractor.sampling_rate

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        stats = dict.fromkeys(STAT_KEYS, 0)
        stats["num_rows_seen"] = len(examples)
        samples = []
        for example in examples:
            conversation = example["conversations"] if "conversations" in example else example["messages"]
            try:
                encoded = self.encode(conversation)
            except ChatTemplateError:
                raise
            except Exception as error:  # noqa: BLE001 -- any decoding failure of user media skips the row
                stats["num_skipped_media"] += 1
                logger.warning(f"Skipping row {example.get('row_id', '?')}, whose media could not be read: {error!r}")
                continue
            length = encoded["input_ids"].shape[-1]
            if self.max_length is not None and length > self.max_length:
                if self.truncation == "drop" or not self._truncate(encoded):
                    stats["num_dropped_too_long"] += 1
                    logger.warning(f"Dropping a conversation of {length} tokens (max_length={self.max_length}).")
                    continue
                stats["num_truncated"] += 1
            encoded["sample_weight"] = self.loss_weights.for_modalities(conversation_modalities(conversation))
            samples.append(encoded)
        batch = self._pad(samples) if samples else self._empty_batch()
        batch.update({key: torch.tensor(value) for key, value in stats.items()})
        if self.use_audio_in_video:
            batch["use_audio_in_video"] = True
        return batch

    def encode(self, conversation: list[dict]) -> dict[str, torch.Tensor]:
        """Process one conversation: media loading, chat template, placeholder expansion and assistant-only labels."""
        media = decode_media(
            conversation,
            use_audio_in_video=self.use_audio_in_video,
            fps=self.video_fps,
            max_frames=self.max_video_frames,
        )
        kwargs = dict(self.processor_kwargs)
        fps = media["video_fps"]
        if media["videos"]:
            if self.use_audio_in_video and len(set(fps)) > 1:
                # the processor places every video's audio by one frame rate
                raise ValueError(
                    f"The videos of this row were sampled at different rates {fps}; with "
                    "use_audio_in_video every video of a row needs the same."
                )
            kwargs["videos_kwargs"] = {"fps": fps[0], "do_sample_frames": False, **kwargs.get("videos_kwargs", {})}
            if self.use_audio_in_video:
                kwargs.update(load_audio_from_video=True, audio_from_video_indices=media["audio_sources"])
        encoded = self.processor(
            text=[self.render(conversation)],
            audio=media["audios"],
            images=media["images"],
            videos=media["videos"],
            return_tensors="pt",
            **kwargs,
        )
        if media["videos"]:
            # each video's own sampling rate (the processor call takes one)
            temporal_patch_size = self.processor.video_processor.temporal_patch_size
            encoded["video_second_per_grid"] = torch.tensor([temporal_patch_size / rate for rate in fps])
        encoded = {key: value for key, value in encoded.items() if key != "num_audio_tokens"}
        encoded["input_ids"] = encoded["input_ids"][0]
        encoded["attention_mask"] = encoded["attention_mask"][0]
        encoded["labels"] = self.assistant_labels(encoded["input_ids"])
        return encoded

    def render(self, conversation: list[dict]) -> str:
        """The conversation's text: the chat template's rendering with each assistant reply put in verbatim.

        The template renders the conversation with every reply replaced by a placeholder; then everything between the
        reply's `<|im_start|>assistant\\n` and its placeholder (e.g. an empty `<think></think>` block the template
        adds) is replaced by the reply's own text, so `<think>...</think>` in the data stays in the labels whatever
        the template does with reasoning.
        """
        replies, templated = [], []
        for turn in template_conversation(conversation):
            if turn["role"] == "assistant":
                content = turn["content"]
                templated.append({"role": "assistant", "content": REPLY_PLACEHOLDER.format(len(replies))})
                replies.append(content if isinstance(content, str) else "".join(part["text"] for part in content))
            else:
                templated.append(turn)
        text = self.processor.apply_chat_template(templated, tokenize=False, add_generation_prompt=False)
        for index, reply in enumerate(replies):
            placeholder = REPLY_PLACEHOLDER.format(index)
            end = text.find(placeholder)
            start = text.rfind(ASSISTANT_HEADER, 0, end)
            if end < 0 or start < 0:
                raise ChatTemplateError(
                    f"The chat template did not render assistant turn {index} as {ASSISTANT_HEADER!r} followed by its "
                    "content; this collator needs a ChatML template (<|im_start|>role\\n...<|im_end|>)."
                )
            text = text[: start + len(ASSISTANT_HEADER)] + reply + text[end + len(placeholder) :]
        return text

    def assistant_labels(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Labels equal to `input_ids` from after each `<|im_start|>assistant\\n` up to and including its `<|im_end|>`,
        -100 elsewhere."""
        # not TRL's assistant_only_loss: it needs `{% generation %}` blocks, which Qwen3-Omni's chat template lacks
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        ids = input_ids.tolist()
        header = [self.im_start_id, *self.assistant_header]
        position = 0
        while position < len(ids):
            if ids[position : position + len(header)] == header:
                start = position + len(header)
                end = ids.index(self.im_end_id, start) + 1 if self.im_end_id in ids[start:] else len(ids)
                labels[start:end] = input_ids[start:end]
                position = end
            else:
                position += 1
        return labels

    def _truncate(self, encoded: dict[str, torch.Tensor]) -> bool:
        """Cut a row to `max_length` in place; `False` when that would cut media placeholders or every label."""
        cut = self.max_length
        if torch.isin(encoded["input_ids"][cut:], self.media_token_ids).any():
            return False
        if not (encoded["labels"][:cut] != IGNORE_INDEX).any():
            return False
        for key in ("input_ids", "attention_mask", "labels"):
            encoded[key] = encoded[key][:cut]
        return True

    def _pad(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": pad([sample["input_ids"] for sample in samples], self.pad_token_id),
            "attention_mask": pad([sample["attention_mask"] for sample in samples], 0),
            "labels": pad([sample["labels"] for sample in samples], IGNORE_INDEX),
            "sample_weight": torch.tensor([sample["sample_weight"] for sample in samples], dtype=torch.float32),
        }
        for key in (
            "pixel_values",
            "image_grid_thw",
            "pixel_values_videos",
            "video_grid_thw",
            "video_second_per_grid",
        ):
            values = [sample[key] for sample in samples if key in sample]
            if values:
                batch[key] = torch.cat(values)
        features = [sample["input_features"] for sample in samples if "input_features" in sample]
        if features:
            frames = max(feature.shape[-1] for feature in features)
            batch["input_features"] = torch.cat([F.pad(f, (0, frames - f.shape[-1])) for f in features])
            masks = [sample["feature_attention_mask"] for sample in samples if "feature_attention_mask" in sample]
            batch["feature_attention_mask"] = torch.cat([F.pad(m, (0, frames - m.shape[-1])) for m in masks])
        return batch

    def _empty_batch(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.tensor([[self.pad_token_id]]),
            "attention_mask": torch.ones(1, 1, dtype=torch.long),
            "labels": torch.full((1, 1), IGNORE_INDEX),
            "sample_weight": torch.zeros(1),
        }


class ChatTemplateError(ValueError):
    """The processor's chat template does not render conversations the way this collator needs."""
