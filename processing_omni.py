# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Processor of the Omni model: a text tokenizer plus the SNAC feature extractor, and the task formats."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .configuration_omni import OmniConfig, SNACTokenLayout
from .feature_extraction_omni import SNACFeatureExtractor


logger = logging.get_logger(__name__)

IGNORE_INDEX = -100

# The special tokens the Omni formats use; `train/init_model.py` adds them to the tokenizer.
SPECIAL_TOKENS = {
    "tts_token": "<|tts|>",
    "asr_token": "<|asr|>",
    "text_start_token": "<|text_start|>",
    "text_end_token": "<|text_end|>",
    "audio_start_token": "<|audio_start|>",
    "audio_end_token": "<|audio_end|>",
}
PAD_TOKEN = "<|pad|>"

TASKS = ("tts", "asr", "text")


class OmniProcessor(ProcessorMixin):
    r"""
    Builds Omni model inputs from text and audio, and turns generated ids back into text and waveforms.

    The sequence formats (ids from the tokenizer's special tokens, audio ids from [`SNACTokenLayout`]):

    - text to speech: `<|tts|><|text_start|>{speaker}: {text}<|text_end|><|audio_start|> AUDIO <|audio_end|>`
      (a voice prompt is an earlier utterance of the same form: reference transcript and audio first);
    - speech to text: `<|asr|><|audio_start|> AUDIO <|audio_end|><|text_start|>{text}<|text_end|>`;
    - text only: `{text}<eos>`.

    Prompts (for `generate`) stop where the model takes over and are left-padded; training sequences hold the
    whole format, are right-padded, and carry `labels` (`-100` on padding).

    Args:
        feature_extractor ([`SNACFeatureExtractor`]): the audio tokenizer.
        tokenizer ([`PreTrainedTokenizerBase`]): the text tokenizer, holding the special tokens above.
        chat_template (`str`, *optional*): unused by the Omni formats; kept for `ProcessorMixin` compatibility.
    """

    def __init__(self, feature_extractor: SNACFeatureExtractor, tokenizer, chat_template: str | None = None):
        missing = [token for token in SPECIAL_TOKENS.values() if token not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(
                f"The tokenizer lacks the Omni special tokens {missing}. Build checkpoints with "
                "`train/init_model.py`, which adds them, or call `tokenizer.add_special_tokens("
                "{'additional_special_tokens': [...]})` and resize the model."
            )
        if feature_extractor.audio_token_offset != len(tokenizer):
            raise ValueError(
                f"The feature extractor's audio_token_offset ({feature_extractor.audio_token_offset}) must equal the "
                f"tokenizer's length ({len(tokenizer)}): audio ids start right after the text vocabulary. Rebuild the "
                "checkpoint with `train/init_model.py`."
            )
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        for name, token in SPECIAL_TOKENS.items():
            setattr(self, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; `train/init_model.py` sets one.")

    # ------------------------------------------------------------------ layout helpers
    @property
    def token_layout(self) -> SNACTokenLayout:
        return self.feature_extractor.token_layout

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    @property
    def _special_token_strings(self) -> list[str]:
        """Every special token of the tokenizer, the added Omni tokens included."""
        added = [token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special]
        return sorted({*self.tokenizer.all_special_tokens, *added} - {""})

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def _text_ids(self, text: str, what: str = "text") -> list[int]:
        """Token ids of user text, which may never smuggle in control tokens through their strings."""
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a string, got {type(text).__name__}.")
        special_strings = [token for token in self._special_token_strings if token in text]
        if special_strings:
            raise ValueError(
                f"{what} {text!r} contains the special-token string(s) {special_strings}, which would be read as "
                "control tokens; remove them from the text."
            )
        if not text.strip():
            raise ValueError(f"{what} {text!r} is empty; give some words to {'speak' if what == 'text' else 'use'}.")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _speaker_text(self, text: str, speaker: str | None) -> str:
        return f"{speaker}: {text}" if speaker else text

    def _audio_ids(self, audio, sampling_rate: int | None) -> list[torch.Tensor]:
        return self.feature_extractor(audio, sampling_rate=sampling_rate)["audio_token_ids"]

    # ------------------------------------------------------------------ task formats (lists of ids)
    def tts_prompt_ids(
        self,
        text: str,
        speaker: str | None = None,
        voice_prompt_ids: Sequence[int] | None = None,
        voice_prompt_text: str | None = None,
    ) -> list[int]:
        """Ids of a text-to-speech prompt that ends with `<|audio_start|>`, optionally after a voice prompt."""
        ids: list[int] = [self.tts_token_id]
        if voice_prompt_ids is not None:
            if not voice_prompt_text:
                raise ValueError("A voice prompt needs its transcript: pass `voice_prompt_text`.")
            ids += [self.text_start_token_id, *self._text_ids(self._speaker_text(voice_prompt_text, speaker), "voice_prompt_text")]
            ids += [self.text_end_token_id, self.audio_start_token_id, *[int(i) for i in voice_prompt_ids], self.audio_end_token_id]
        ids += [self.text_start_token_id, *self._text_ids(self._speaker_text(text, speaker))]
        ids += [self.text_end_token_id, self.audio_start_token_id]
        return ids

    def asr_prompt_ids(self, audio_ids: Sequence[int]) -> list[int]:
        """Ids of a speech-to-text prompt that ends with `<|text_start|>`."""
        return [self.asr_token_id, self.audio_start_token_id, *[int(i) for i in audio_ids], self.audio_end_token_id, self.text_start_token_id]

    def tts_sequence_ids(self, text: str, audio_ids: Sequence[int], speaker: str | None = None) -> list[int]:
        """A whole text-to-speech training sequence."""
        return self.tts_prompt_ids(text, speaker=speaker) + [int(i) for i in audio_ids] + [self.audio_end_token_id]

    def asr_sequence_ids(self, audio_ids: Sequence[int], text: str) -> list[int]:
        """A whole speech-to-text training sequence."""
        return self.asr_prompt_ids(audio_ids) + self._text_ids(text, "transcript") + [self.text_end_token_id]

    def text_sequence_ids(self, text: str) -> list[int]:
        """A text-only training sequence."""
        return self._text_ids(text) + [self.eos_token_id]

    # ------------------------------------------------------------------ batching
    def pad(
        self,
        sequences: Sequence[Sequence[int]],
        padding_side: str = "right",
        with_labels: bool = False,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Pad id lists into `input_ids` + `attention_mask` (+ `labels` with `-100` on padding)."""
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or None.")
        if return_tensors is None:
            data = {"input_ids": [list(s) for s in sequences], "attention_mask": [[1] * len(s) for s in sequences]}
            if with_labels:
                data["labels"] = [list(s) for s in sequences]
            return BatchFeature(data)
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            span = slice(length - len(sequence), length) if padding_side == "left" else slice(0, len(sequence))
            input_ids[row, span] = torch.as_tensor(list(sequence), dtype=torch.long)
            attention_mask[row, span] = 1
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_labels:
            data["labels"] = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return BatchFeature(data, tensor_type="pt")

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        audio=None,
        sampling_rate: int | None = None,
        task: str | None = None,
        speaker: str | Sequence[str | None] | None = None,
        return_tensors: str | None = "pt",
        voice_prompt_audio=None,
        voice_prompt_text: str | None = None,
        voice_prompt_sampling_rate: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Build model inputs.

        - `text` only: text-to-speech prompts (left-padded), ready for `model.generate`; `task="text"` gives
          text-only training sequences instead.
        - `audio` only (with `sampling_rate`): speech-to-text prompts (left-padded).
        - `text` and `audio`: training sequences with `labels`, `task="tts"` (default) or `"asr"`.

        Args:
            text (`str` or `list[str]`): the text to speak, or the transcripts of `audio`.
            audio: one waveform or a batch (see [`SNACFeatureExtractor.encode`]).
            sampling_rate (`int`): the sampling rate of `audio`; required with audio.
            task (`str`, *optional*): `"tts"`, `"asr"` or `"text"`.
            speaker (`str` or `list[str]`, *optional*): speaker names for text-to-speech, as in `"tara: text"`.
            voice_prompt_audio (*optional*): one reference clip for text-to-speech prompts; it is placed, with its
                transcript `voice_prompt_text`, before each text, so the model continues in that voice.
            voice_prompt_text (`str`, *optional*): the transcript of `voice_prompt_audio` (required with it).
            voice_prompt_sampling_rate (`int`, *optional*): the sampling rate of `voice_prompt_audio` (required with it).
        """
        if task is not None and task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {TASKS}.")
        texts = [text] if isinstance(text, str) else (list(text) if text is not None else None)
        if texts is not None and not texts:
            raise ValueError("`text` is an empty list; give at least one text.")
        speakers = speaker if isinstance(speaker, (list, tuple)) else [speaker] * (len(texts) if texts else 1)

        if audio is None:
            if texts is None:
                raise ValueError("Give `text`, `audio` or both.")
            if task == "text":
                return self.pad([self.text_sequence_ids(t) for t in texts], with_labels=True, return_tensors=return_tensors)
            if task == "asr":
                raise ValueError("task='asr' needs `audio` (with its `sampling_rate`).")
            voice_ids = None
            if voice_prompt_audio is not None:
                voice_ids = self._audio_ids(voice_prompt_audio, voice_prompt_sampling_rate)
                if len(voice_ids) != 1:
                    raise ValueError(f"voice_prompt_audio must be one clip, got a batch of {len(voice_ids)}.")
                voice_ids = voice_ids[0].tolist()
            elif voice_prompt_text is not None:
                raise ValueError("voice_prompt_text was given without voice_prompt_audio; pass both or neither.")
            prompts = [
                self.tts_prompt_ids(t, speaker=s, voice_prompt_ids=voice_ids, voice_prompt_text=voice_prompt_text)
                for t, s in zip(texts, speakers)
            ]
            return self.pad(prompts, padding_side="left", return_tensors=return_tensors)

        audio_ids = self._audio_ids(audio, sampling_rate)
        if texts is None:
            return self.pad([self.asr_prompt_ids(ids) for ids in audio_ids], padding_side="left", return_tensors=return_tensors)
        if len(texts) != len(audio_ids):
            raise ValueError(f"Got {len(texts)} texts for {len(audio_ids)} audio clips; pass one text per clip.")
        if task in (None, "tts"):
            sequences = [self.tts_sequence_ids(t, ids, speaker=s) for t, ids, s in zip(texts, audio_ids, speakers)]
        elif task == "asr":
            sequences = [self.asr_sequence_ids(ids, t) for t, ids in zip(texts, audio_ids)]
        else:
            raise ValueError("task='text' takes `text` only.")
        return self.pad(sequences, with_labels=True, return_tensors=return_tensors)

    def apply_transcription_request(
        self, audio, sampling_rate: int | None = None, return_tensors: str | None = "pt", **kwargs
    ) -> BatchFeature:
        """Speech-to-text prompts for one clip or a batch, ready for `model.generate` (transformers' audio-LLM convention)."""
        return self(audio=audio, sampling_rate=sampling_rate, return_tensors=return_tensors)

    # ------------------------------------------------------------------ decoding
    def audio_spans(self, token_ids: Sequence[int] | torch.Tensor) -> list[torch.Tensor]:
        """The maximal runs of audio ids in a sequence, each trimmed to whole frames (a partial frame is logged)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        is_audio = self.token_layout.is_audio(ids)
        spans, start = [], None
        for index, flag in enumerate(is_audio.tolist() + [False]):
            if flag and start is None:
                start = index
            elif not flag and start is not None:
                spans.append(ids[start:index])
                start = None
        frame = self.token_layout.tokens_per_frame
        trimmed = []
        for span in spans:
            leftover = span.numel() % frame
            if leftover:
                logger.warning(f"Dropped {leftover} audio tokens of an incomplete frame at the end of an audio span.")
                span = span[: span.numel() - leftover]
            trimmed.append(span)
        return trimmed

    def decode_audio(self, token_ids: Sequence[int] | torch.Tensor) -> np.ndarray | None:
        """The waveform of the last audio span of a sequence (the generated speech), or None if it has none."""
        spans = [span for span in self.audio_spans(token_ids) if span.numel()]
        return self.feature_extractor.decode(spans[-1]) if spans else None

    def decode_text(self, token_ids: Sequence[int] | torch.Tensor, **kwargs) -> str:
        """The text of a sequence, audio ids left out."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        ids = ids[ids < self.token_layout.audio_token_offset]
        return self.tokenizer.decode(ids.tolist(), **kwargs)

    def decode(self, token_ids: Sequence[int] | torch.Tensor, **kwargs) -> str | np.ndarray | torch.Tensor:
        """
        A sequence's speech (1-D float32 waveform at `sampling_rate`) if it holds audio ids, else its text.

        A `(1, seq_len)` tensor (one `generate` output, as transformers' text-to-audio pipeline passes it) gives the
        waveform as a 1-D `torch.FloatTensor`, as Dia's and CSM's processors do; more rows need `batch_decode`.
        """
        if isinstance(token_ids, torch.Tensor) and token_ids.dim() == 2:
            if token_ids.shape[0] != 1:
                raise ValueError(f"`decode` takes one sequence, got a batch of {token_ids.shape[0]}; use `batch_decode`.")
            decoded = self.decode(token_ids[0], **kwargs)
            return torch.from_numpy(decoded) if isinstance(decoded, np.ndarray) else decoded
        transcript = self._transcript_ids(token_ids)
        if transcript is not None:
            return self.decode_text(transcript, **kwargs)
        waveform = self.decode_audio(token_ids)
        return waveform if waveform is not None else self.decode_text(token_ids, **kwargs)

    def _transcript_ids(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor | None:
        """The ids of a speech-to-text sequence's transcript (after the last `<|text_start|>` that follows the audio,
        up to `<|text_end|>`), or None when the sequence does not end in a transcript."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        text_starts = (ids == self.text_start_token_id).nonzero().flatten()
        audio_ends = (ids == self.audio_end_token_id).nonzero().flatten()
        audio_starts = (ids == self.audio_start_token_id).nonzero().flatten()
        if not len(text_starts) or not len(audio_ends):
            return None
        start = int(text_starts[-1])
        if start < int(audio_ends[-1]) or (len(audio_starts) and start < int(audio_starts[-1])):
            return None
        transcript = ids[start + 1 :]
        ends = (transcript == self.text_end_token_id).nonzero().flatten()
        return transcript[: int(ends[0])] if len(ends) else transcript

    def batch_decode(self, sequences: Sequence[Sequence[int]] | torch.Tensor, **kwargs) -> list[str | np.ndarray]:
        """[`~OmniProcessor.decode`] for each sequence of a batch (e.g. `generate`'s output)."""
        return [self.decode(sequence, **kwargs) for sequence in sequences]

    def save_audio(self, waveforms: np.ndarray | Sequence[np.ndarray], paths: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        """Write waveform(s) at the codec's sampling rate as 16-bit WAV file(s)."""
        import soundfile

        if isinstance(paths, (str, os.PathLike)):
            waveforms, paths = [waveforms], [paths]
        if len(waveforms) != len(paths):
            raise ValueError(f"Got {len(waveforms)} waveforms for {len(paths)} paths.")
        for waveform, path in zip(waveforms, paths):
            soundfile.write(os.fspath(path), np.asarray(waveform, dtype=np.float32), self.sampling_rate, subtype="PCM_16")

    # ------------------------------------------------------------------ serialisation
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        files = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        files.append(self.feature_extractor.save_codec_weights(save_directory))
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory))), **kwargs)
        return files

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"]


# Local Auto-class registration, and the `auto_map` that `save_pretrained` writes for trust_remote_code loading.
AutoFeatureExtractor.register(OmniConfig, SNACFeatureExtractor, exist_ok=True)
AutoProcessor.register(OmniConfig, OmniProcessor, exist_ok=True)
SNACFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
OmniProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["OmniProcessor", "SPECIAL_TOKENS", "PAD_TOKEN"]
