# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Processor of the Omni model: a text tokenizer, the SNAC waveform front end and the SNAC audio tokenizer (codec), and
the task formats."""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.modeling_utils import PreTrainedAudioTokenizerBase
from transformers.processing_utils import ProcessorMixin
from transformers.utils import CONFIG_NAME, PROCESSOR_NAME, cached_file, logging

from .configuration_omni import IGNORE_INDEX, OmniConfig
from .configuration_snac import SNACConfig, SNACTokenLayout
from .feature_extraction_omni import _HUB_KWARGS, AudioInput, SNACFeatureExtractor
from .modeling_snac import SNACAudioTokenizer


logger = logging.get_logger(__name__)

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
# Every control token of the Omni formats and of Qwen tokenizers has this form (`<|audio_start|>`, `<|im_start|>`,
# `<|endoftext|>`, the `<|reserved_N|>` rows): text holding one is refused whatever the tokenizer, so that a corpus
# row accepted without a tokenizer (`train/prepare_data.py`) is accepted by training too.
CONTROL_TOKEN_PATTERN = re.compile(r"<\|[^\s<>|]+\|>")

# `OmniProcessor.save_pretrained` writes its audio tokenizer (config.json + model.safetensors) to this subfolder.
AUDIO_TOKENIZER_SUBFOLDER = "audio_tokenizer"
# Checkpoints of the first release kept the codec in the feature extractor: its settings under `codec_config` in
# processor_config.json, its weights in this file beside it.
FIRST_RELEASE_CODEC_WEIGHTS_NAME = "snac_codec.safetensors"


def load_audio_tokenizer(
    pretrained_model_name_or_path: str | os.PathLike, feature_extractor_dict: dict | None = None, **hub_kwargs
) -> SNACAudioTokenizer:
    """
    The SNAC codec of an Omni checkpoint or of a codec repository (local folder or Hub id), as a
    [`SNACAudioTokenizer`]:

    - an Omni checkpoint: its `audio_tokenizer/` subfolder, written by [`OmniProcessor.save_pretrained`];
    - an Omni checkpoint of the first release: the `codec_config` of its feature extractor (in processor_config.json,
      or given as `feature_extractor_dict`) and the weights in `snac_codec.safetensors`;
    - a codec in SNAC's own layout (`config.json` + `pytorch_model.bin`, e.g. `hubertsiuzdak/snac_24khz`) or a
      saved [`SNACAudioTokenizer`].

    `hub_kwargs` are `cached_file`'s (`revision`, `subfolder`, `cache_dir`, `token`, ...).
    """
    path = str(pretrained_model_name_or_path)
    if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith(".") or path.count("/") > 1):
        raise OSError(
            f"Cannot load a SNAC codec from {path!r}: no such folder. Pass an Omni checkpoint, a SNAC codec folder "
            "(config.json + pytorch_model.bin) or a Hub id such as 'hubertsiuzdak/snac_24khz'."
        )
    hub_kwargs = {key: value for key, value in hub_kwargs.items() if key in _HUB_KWARGS}
    subfolder = hub_kwargs.pop("subfolder", None) or ""

    def find(filename: str, folder: str = subfolder) -> str | None:
        return cached_file(path, filename, subfolder=folder, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    nested = posixpath.join(subfolder, AUDIO_TOKENIZER_SUBFOLDER) if subfolder else AUDIO_TOKENIZER_SUBFOLDER
    if find(CONFIG_NAME, nested) is not None:
        return SNACAudioTokenizer.from_pretrained(path, subfolder=nested, **hub_kwargs)
    if feature_extractor_dict is None and (processor_file := find(PROCESSOR_NAME)) is not None:
        with open(processor_file, encoding="utf-8") as handle:
            feature_extractor_dict = json.load(handle).get("feature_extractor")
    codec_config = (feature_extractor_dict or {}).get("codec_config")
    if codec_config is not None:
        weights_file = find(FIRST_RELEASE_CODEC_WEIGHTS_NAME)
        if weights_file is None:
            raise OSError(
                f"{path} has a first-release processor config (the codec settings in its feature extractor) but no "
                f"codec weights ({FIRST_RELEASE_CODEC_WEIGHTS_NAME}): copy that file from where the checkpoint was "
                "saved, or rebuild the checkpoint's processor around its SNAC codec."
            )
        from safetensors.torch import load_file

        logger.warning_once(
            f"{path} was saved by the first release of the Omni processor (codec inside the feature extractor); it "
            f"loads as before. `processor.save_pretrained` writes the current layout (the codec in "
            f"{AUDIO_TOKENIZER_SUBFOLDER}/)."
        )
        audio_tokenizer = SNACAudioTokenizer(SNACConfig(**codec_config))
        audio_tokenizer.load_state_dict(load_file(weights_file))
        return audio_tokenizer.eval()
    config_file = find(CONFIG_NAME)
    if config_file is not None:
        with open(config_file, encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type", SNACConfig.model_type)
        if model_type == SNACConfig.model_type:
            return SNACAudioTokenizer.from_pretrained(path, subfolder=subfolder, **hub_kwargs)
    raise OSError(
        f"Found no codec weights in {path!r}: no {AUDIO_TOKENIZER_SUBFOLDER}/ folder (Omni checkpoint), no codec_config "
        f"+ {FIRST_RELEASE_CODEC_WEIGHTS_NAME} (first-release checkpoint) and no SNAC checkpoint (config.json + "
        "pytorch_model.bin). Pass an Omni checkpoint or a SNAC codec such as 'hubertsiuzdak/snac_24khz'."
    )


def encode_audio(
    feature_extractor: SNACFeatureExtractor,
    audio_tokenizer: SNACAudioTokenizer,
    audio: AudioInput | Sequence[AudioInput],
    sampling_rate: int | None = None,
    batch_size: int = 8,
) -> list[list[torch.Tensor]]:
    """
    SNAC codes of each clip: prepared by `feature_extractor` (checked, mono, resampled), then encoded by
    `audio_tokenizer` under `torch.inference_mode`, `batch_size` clips per call, longest first (so that batches
    carry little padding).

    Returns:
        One entry per clip: a list of `num_codebooks` 1-D `LongTensor`s (on the CPU) covering
        `ceil(samples / samples_per_frame)` frames.
    """
    clips = feature_extractor.prepare_clips(audio, sampling_rate)
    codes_per_frame = audio_tokenizer.token_layout.codes_per_frame
    order = sorted(range(len(clips)), key=lambda i: clips[i].numel(), reverse=True)
    codes_by_clip: list[list[torch.Tensor] | None] = [None] * len(clips)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            inputs = feature_extractor([clips[i] for i in indices], sampling_rate=feature_extractor.sampling_rate)
            output = audio_tokenizer.encode(inputs["input_values"], padding_mask=inputs["padding_mask"])
            for row, i in enumerate(indices):
                frames = int(output.num_frames[row])
                codes_by_clip[i] = [
                    code[row, : frames * per_frame].cpu()
                    for code, per_frame in zip(output.audio_codes, codes_per_frame)
                ]
    return codes_by_clip


def utterance_problem(text, speaker=None, special_tokens: Sequence[str] = (), what: str = "text") -> str | None:
    """
    Why a transcript (or a text to speak) and its speaker cannot go into an Omni sequence, or `None` when they can.

    The one set of checks shared by [`OmniProcessor`] and `train/prepare_data.py`: the text must be a non-empty
    string of valid Unicode, and neither it nor the speaker may hold a control-token string (one of
    `special_tokens`, or anything of the `<|...|>` form), which the tokenizer would read as a control token. `what`
    names the text in the message (e.g. `"transcript"`).
    """
    for name, value in ((what, text), ("speaker", speaker)):
        if value is None and name == "speaker":
            continue
        if not isinstance(value, str):
            return f"{name} must be a string, got {type(value).__name__}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name} {value!r} holds bytes that are not valid UTF-8; re-encode the text as UTF-8"
        found = {
            *CONTROL_TOKEN_PATTERN.findall(value),
            *(token for token in special_tokens if token and token in value),
        }
        found = sorted(found)
        if found:
            return (
                f"{name} {value!r} contains the special-token string(s) {found}, which would be read as control "
                "tokens; remove them"
            )
    if not text.strip():
        return f"{what} {text!r} is empty; give some words"
    return None


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

    Audio goes through the waveform front end (`feature_extractor`) and the SNAC codec (`audio_tokenizer`, as Dia's
    processor holds its DAC codec); the codec's codes take the ids right after the tokenizer's
    (`audio_token_offset = len(tokenizer)`), placed by [`SNACTokenLayout`].

    Args:
        feature_extractor ([`SNACFeatureExtractor`]): the waveform front end (mono, resampling, padding).
        tokenizer ([`PreTrainedTokenizerBase`]): the text tokenizer, holding the special tokens above.
        audio_tokenizer ([`SNACAudioTokenizer`]): the SNAC codec. `save_pretrained` writes it to the
            `audio_tokenizer/` subfolder and `from_pretrained` loads it from there (checkpoints of the first release,
            which kept the codec in the feature extractor, load too); move it with `processor.audio_tokenizer.to(device)`.
        chat_template (`str`, *optional*): unused by the Omni formats; kept for `ProcessorMixin` compatibility.
        model_max_length (`int`, *optional*): the most tokens the model takes (its `max_position_embeddings`);
            longer prompts and sequences raise a `ValueError` naming their length instead of reaching the model.
            `from_pretrained` reads it from the checkpoint's `config.json` when the processor config lacks it.
        encode_batch_size (`int`, *optional*, defaults to 8): clips encoded per codec call.
        codec_name_or_path (`str`, *optional*): where the codec came from (e.g. `hubertsiuzdak/snac_24khz`), kept for
            model cards and reports.

    The tokenizer and the feature extractor are set to pad on the left, as the prompts are: callers that pad with
    their own side (transformers' pipelines batch that way) then keep each prompt's ids next to the tokens generated
    after them.
    """

    def __init__(
        self,
        feature_extractor: SNACFeatureExtractor,
        tokenizer,
        audio_tokenizer: SNACAudioTokenizer,
        chat_template: str | None = None,
        model_max_length: int | None = None,
        encode_batch_size: int = 8,
        codec_name_or_path: str | None = None,
    ):
        missing = [token for token in SPECIAL_TOKENS.values() if token not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(
                f"The tokenizer lacks the Omni special tokens {missing}: add them with `tokenizer.add_special_tokens("
                "{'additional_special_tokens': [...]})` and resize the model's embeddings to the new length."
            )
        if feature_extractor.sampling_rate != audio_tokenizer.config.sampling_rate:
            raise ValueError(
                f"The feature extractor resamples to {feature_extractor.sampling_rate} Hz but the audio tokenizer's "
                f"codec encodes {audio_tokenizer.config.sampling_rate} Hz audio: build the feature extractor with "
                f"`SNACFeatureExtractor(sampling_rate={audio_tokenizer.config.sampling_rate})`."
            )
        if isinstance(encode_batch_size, bool) or not isinstance(encode_batch_size, int) or encode_batch_size < 1:
            raise ValueError(f"encode_batch_size={encode_batch_size!r} must be a positive number of clips.")
        if model_max_length is not None and (
            isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length <= 0
        ):
            raise ValueError(f"model_max_length={model_max_length!r} must be a positive number of tokens or None.")
        super().__init__(feature_extractor, tokenizer, audio_tokenizer=audio_tokenizer, chat_template=chat_template)
        self.encode_batch_size = encode_batch_size
        self.codec_name_or_path = codec_name_or_path
        # audio ids start right after the tokenizer's ids
        self._token_layout = audio_tokenizer.config.token_layout(len(tokenizer))
        for name, token in SPECIAL_TOKENS.items():
            setattr(self, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"The tokenizer has no pad token: add {PAD_TOKEN!r} as its pad token "
                "(`tokenizer.pad_token = ...`) before building the processor."
            )
        # Callers that pad with the components' own side pad as the prompts are: transformers' pipelines use the
        # tokenizer's (loaded on its own from the saved config: `init_kwargs` is what `save_pretrained` writes), or
        # in processor-only mode the feature extractor's, and refuse two sides that disagree.
        tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
        feature_extractor.padding_side = "left"
        self.model_max_length = model_max_length

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """`ProcessorMixin.from_pretrained`, with `model_max_length` read from the folder's `config.json`
        (`max_position_embeddings`) when neither the processor config nor the caller gives it."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        processor = loaded[0] if isinstance(loaded, tuple) else loaded
        if processor.model_max_length is None:
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config_file = cached_file(
                pretrained_model_name_or_path, CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
            )
            if config_file is not None:
                with open(config_file, encoding="utf-8") as handle:
                    processor.model_max_length = json.load(handle).get("max_position_embeddings")
        return loaded

    @classmethod
    def get_processor_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> tuple[dict, dict]:
        """
        `ProcessorMixin.get_processor_dict`, plus the audio tokenizer: ProcessorMixin would load it as a repository
        of its own (`audio_tokenizer_name_or_path`), while an Omni checkpoint holds it (see [`load_audio_tokenizer`]).
        It is loaded in float32 whatever `dtype` the caller gives for the model: SNAC's attention runs in float32.
        """
        processor_dict, unused_kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        if "audio_tokenizer" not in processor_dict:
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            feature_extractor_dict = processor_dict.get("feature_extractor") or {}
            processor_dict["audio_tokenizer"] = load_audio_tokenizer(
                pretrained_model_name_or_path, feature_extractor_dict, **hub_kwargs
            )
            # first-release checkpoints kept these in the feature extractor
            for key in ("codec_name_or_path", "encode_batch_size"):
                if key in feature_extractor_dict:
                    processor_dict.setdefault(key, feature_extractor_dict[key])
        return processor_dict, unused_kwargs

    def check_argument_for_proper_class(self, argument_name: str, argument):
        # ProcessorMixin knows only the audio tokenizers of transformers' own models (DacModel, ...). The check is by
        # config type, not class: the remote-code copy of SNACAudioTokenizer is another class object than the package's.
        if argument_name == "audio_tokenizer":
            if (
                not isinstance(argument, PreTrainedAudioTokenizerBase)
                or argument.config.model_type != SNACConfig.model_type
            ):
                raise TypeError(f"audio_tokenizer must be a SNACAudioTokenizer, got {type(argument).__name__}.")
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)

    # ------------------------------------------------------------------ layout helpers
    @property
    def token_layout(self) -> SNACTokenLayout:
        """Where the codec's codes live in the vocabulary: from the audio tokenizer, after the tokenizer's ids."""
        return self._token_layout

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    @property
    def _special_tokens_by_first_character(self) -> dict[str, list[str]]:
        """Every special token of the tokenizer, the added Omni tokens included, by first character. Kept while the
        tokenizer's size stays the same: reading its added tokens took 25-200 ms per prompt with 79k ids."""
        size = len(self.tokenizer)
        cached = self.__dict__.get("_special_tokens_cache")
        if cached is None or cached[0] != size:
            added = [token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special]
            by_first: dict[str, list[str]] = {}
            for token in sorted({*self.tokenizer.all_special_tokens, *added} - {""}):
                by_first.setdefault(token[0], []).append(token)
            cached = self.__dict__["_special_tokens_cache"] = (size, by_first)
        return cached[1]

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def utterance_problem(self, text: str, speaker: str | None = None, what: str = "text") -> str | None:
        """Why `text` and `speaker` cannot go into a sequence (see [`utterance_problem`]), with this tokenizer's
        special tokens; `None` when they can."""
        by_first = self._special_tokens_by_first_character
        characters = {*(text if isinstance(text, str) else ""), *(speaker if isinstance(speaker, str) else "")}
        candidates = [token for character in characters for token in by_first.get(character, ())]
        return utterance_problem(text, speaker, candidates, what=what)

    def _text_ids(self, text: str, what: str = "text", speaker: str | None = None) -> list[int]:
        """Token ids of user text (`"{speaker}: {text}"` with a speaker), which may never smuggle in control tokens."""
        problem = self.utterance_problem(text, speaker, what=what)
        if problem is not None:
            raise ValueError(f"{problem}.")
        return self.tokenizer(f"{speaker}: {text}" if speaker else text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ audio <-> ids
    def encode_audio(
        self, audio: AudioInput | Sequence[AudioInput], sampling_rate: int | None = None
    ) -> list[list[torch.Tensor]]:
        """SNAC codes of one clip or a batch (see [`encode_audio`] and [`SNACFeatureExtractor.prepare_clips`])."""
        return encode_audio(self.feature_extractor, self.audio_tokenizer, audio, sampling_rate, self.encode_batch_size)

    def audio_to_ids(
        self, audio: AudioInput | Sequence[AudioInput], sampling_rate: int | None = None
    ) -> list[torch.Tensor]:
        """The audio token ids of one clip or a batch: one 1-D `LongTensor` per clip, whole frames. `sampling_rate`
        (of `audio`) is required; it defaults to `None` only so that its absence is refused with an explanation."""
        return [self.token_layout.codes_to_ids(codes) for codes in self.encode_audio(audio, sampling_rate)]

    def encode_voice_prompt(
        self, audio: AudioInput | Sequence[AudioInput], sampling_rate: int | None = None
    ) -> list[int]:
        """The audio token ids of one reference clip for text-to-speech prompts, to pass as `voice_prompt_ids` (one
        voice prompt, many calls: encoded once)."""
        clips = self.audio_to_ids(audio, sampling_rate)
        if len(clips) != 1:
            raise ValueError(f"voice_prompt_audio must be one clip, got a batch of {len(clips)}.")
        return clips[0].tolist()

    def valid_frames(self, token_ids: torch.Tensor | Sequence[int], strict: bool = False) -> torch.Tensor:
        """
        The whole, valid frames of a sequence of audio ids, as a 1-D tensor.

        A trailing partial frame, and every frame holding an id outside its position's block (a text id, or an
        audio id of another position), are dropped with a warning that counts them; with `strict=True` they raise
        a `ValueError` instead.
        """
        layout = self.token_layout
        token_ids = torch.as_tensor(token_ids, dtype=torch.long)
        if token_ids.dim() != 1:
            raise ValueError(
                f"Expected one 1-D sequence of ids, got shape {tuple(token_ids.shape)}; decode rows one by one."
            )
        if strict:
            layout.ids_to_codes(token_ids)
            return token_ids
        partial = token_ids.numel() % layout.tokens_per_frame
        frames = token_ids[: token_ids.numel() - partial].view(-1, layout.tokens_per_frame)
        starts = torch.tensor([layout.block_start(p) for p in range(layout.tokens_per_frame)])
        valid = ((frames >= starts) & (frames < starts + layout.codebook_size)).all(dim=1)
        dropped_frames = int((~valid).sum())
        if partial or dropped_frames:
            logger.warning(
                f"Decoding {int(valid.sum())} frames: dropped {dropped_frames} frames holding ids outside their "
                f"audio block and {partial} trailing tokens of an incomplete frame."
            )
        return frames[valid].flatten()

    def ids_to_audio(self, token_ids: torch.Tensor | Sequence[int], strict: bool = False) -> np.ndarray:
        """
        Decode one sequence of audio token ids into a 1-D float32 waveform at `sampling_rate`.

        Invalid frames and a trailing partial frame are dropped and counted in a warning (see
        [`~OmniProcessor.valid_frames`]); `strict=True` raises a `ValueError` instead. With no whole frame left the
        result is an empty waveform, with a warning.
        """
        token_ids = self.valid_frames(token_ids, strict=strict)
        if token_ids.numel() == 0:
            logger.warning("No whole audio frame to decode: returning an empty waveform (0 samples).")
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            audio = self.audio_tokenizer.decode(self.token_layout.ids_to_codes(token_ids)).audio_values
        return audio.cpu().numpy()

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
            ids += [self.text_start_token_id, *self._text_ids(voice_prompt_text, "voice_prompt_text", speaker)]
            ids += [
                self.text_end_token_id,
                self.audio_start_token_id,
                *[int(i) for i in voice_prompt_ids],
                self.audio_end_token_id,
            ]
        ids += [self.text_start_token_id, *self._text_ids(text, speaker=speaker)]
        ids += [self.text_end_token_id, self.audio_start_token_id]
        return ids

    def asr_prompt_ids(self, audio_ids: Sequence[int]) -> list[int]:
        """Ids of a speech-to-text prompt that ends with `<|text_start|>`."""
        return [
            self.asr_token_id,
            self.audio_start_token_id,
            *[int(i) for i in audio_ids],
            self.audio_end_token_id,
            self.text_start_token_id,
        ]

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
        """Pad id lists into `input_ids` + `attention_mask` (+ `labels` with `-100` on padding) with the tokenizer's
        own `pad`; `return_tensors=None` gives the lists unpadded."""
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or None.")
        data = self.tokenizer.pad(
            {"input_ids": [list(s) for s in sequences]},
            padding=return_tensors is not None,
            padding_side=padding_side,
            return_attention_mask=True,
            return_tensors=return_tensors,
        ).data
        if with_labels:
            input_ids, attention_mask = data["input_ids"], data["attention_mask"]
            data["labels"] = (
                [list(s) for s in input_ids]
                if return_tensors is None
                else input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
            )
        return BatchFeature(data, tensor_type=return_tensors)

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
        voice_prompt_ids: Sequence[int] | None = None,
    ) -> BatchFeature:
        """
        Build model inputs.

        - `text` only: text-to-speech prompts (left-padded), ready for `model.generate`; `task="text"` gives
          text-only training sequences instead.
        - `audio` only (with `sampling_rate`): speech-to-text prompts (left-padded).
        - `text` and `audio`: training sequences with `labels`, `task="tts"` (default) or `"asr"`.

        Args:
            text (`str` or `list[str]`): the text to speak, or the transcripts of `audio`.
            audio: one waveform or a batch (see [`SNACFeatureExtractor.prepare_clips`]).
            sampling_rate (`int`): the sampling rate of `audio`; required with audio.
            task (`str`, *optional*): `"tts"`, `"asr"` or `"text"`.
            speaker (`str` or `list[str]`, *optional*): speaker names for text-to-speech, as in `"tara: text"`.
            voice_prompt_audio (*optional*): one reference clip for text-to-speech prompts; it is placed, with its
                transcript `voice_prompt_text`, before each text, so the model continues in that voice.
            voice_prompt_text (`str`, *optional*): the transcript of `voice_prompt_audio` (required with it).
            voice_prompt_sampling_rate (`int`, *optional*): the sampling rate of `voice_prompt_audio` (required with it).
            voice_prompt_ids (`list[int]`, *optional*): the voice prompt already encoded ([`encode_voice_prompt`]),
                instead of `voice_prompt_audio`, to use one voice prompt in many calls without encoding it each time.
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
                return self.pad(
                    [self.text_sequence_ids(t) for t in texts], with_labels=True, return_tensors=return_tensors
                )
            if task == "asr":
                raise ValueError("task='asr' needs `audio` (with its `sampling_rate`).")
            return self._tts_prompts(
                texts,
                speakers,
                voice_prompt_audio,
                voice_prompt_text,
                voice_prompt_sampling_rate,
                voice_prompt_ids,
                return_tensors,
            )

        audio_ids = self.audio_to_ids(audio, sampling_rate)
        if texts is None:
            prompts = [self.asr_prompt_ids(ids) for ids in audio_ids]
            self._check_lengths(prompts, "speech-to-text prompt", for_generation=True)
            return self.pad(prompts, padding_side="left", return_tensors=return_tensors)
        return self._training_sequences(texts, audio_ids, speakers, task, return_tensors)

    def _tts_prompts(
        self,
        texts: list[str],
        speakers: Sequence[str | None],
        voice_prompt_audio,
        voice_prompt_text: str | None,
        voice_prompt_sampling_rate: int | None,
        voice_prompt_ids: Sequence[int] | None,
        return_tensors: str | None,
    ) -> BatchFeature:
        """Left-padded text-to-speech prompts, each after the voice prompt when one is given."""
        if voice_prompt_audio is not None:
            if voice_prompt_ids is not None:
                raise ValueError("Give voice_prompt_audio or voice_prompt_ids (the same clip encoded), not both.")
            voice_prompt_ids = self.encode_voice_prompt(voice_prompt_audio, voice_prompt_sampling_rate)
        elif voice_prompt_text is not None and voice_prompt_ids is None:
            raise ValueError("voice_prompt_text was given without voice_prompt_audio; pass both or neither.")
        prompts = [
            self.tts_prompt_ids(t, speaker=s, voice_prompt_ids=voice_prompt_ids, voice_prompt_text=voice_prompt_text)
            for t, s in zip(texts, speakers)
        ]
        self._check_lengths(prompts, "text-to-speech prompt", for_generation=True)
        return self.pad(prompts, padding_side="left", return_tensors=return_tensors)

    def _training_sequences(
        self,
        texts: list[str],
        audio_ids: list[torch.Tensor],
        speakers: Sequence[str | None],
        task: str | None,
        return_tensors: str | None,
    ) -> BatchFeature:
        """Right-padded training sequences with `labels`: text-to-speech (default) or speech-to-text, one per clip."""
        if len(texts) != len(audio_ids):
            raise ValueError(f"Got {len(texts)} texts for {len(audio_ids)} audio clips; pass one text per clip.")
        if task in (None, "tts"):
            sequences = [self.tts_sequence_ids(t, ids, speaker=s) for t, ids, s in zip(texts, audio_ids, speakers)]
        elif task == "asr":
            sequences = [self.asr_sequence_ids(ids, t) for t, ids in zip(texts, audio_ids)]
        else:
            raise ValueError("task='text' takes `text` only.")
        self._check_lengths(sequences, "training sequence")
        return self.pad(sequences, with_labels=True, return_tensors=return_tensors)

    def _check_lengths(self, sequences: Sequence[Sequence[int]], kind: str, for_generation: bool = False) -> None:
        """Refuse sequences the model cannot take: longer than `model_max_length`, or for a prompt, leaving no
        position to generate into."""
        if self.model_max_length is None:
            return
        limit = self.model_max_length - 1 if for_generation else self.model_max_length
        for row, sequence in enumerate(sequences):
            if len(sequence) > limit:
                fix = (
                    "split the text into sentences and speak them one by one (as `qwen-omni speak` and "
                    "`qwen_omni.omni.speech.generate_speech` do)"
                    if kind.startswith("text-to-speech")
                    else "split the audio into shorter clips"
                )
                raise ValueError(
                    f"The {kind} of row {row} is {len(sequence)} tokens long, but the model takes "
                    f"{self.model_max_length} positions (model_max_length, its max_position_embeddings)"
                    f"{' and needs room to generate' if for_generation else ''}: {fix}."
                )

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
        """
        The waveform of a sequence's speech: the audio after its last `<|audio_start|>` (the generated speech), or
        for generated ids alone (no `<|audio_start|>`) their last run of audio ids. `None` when the sequence is not
        speech: no `<|audio_start|>`, no audio id, and words or no `<|audio_end|>`. An empty waveform, with a
        warning, when the speech has no whole frame.
        """
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        starts = (ids == self.audio_start_token_id).nonzero().flatten()
        if len(starts):
            ids = ids[int(starts[-1]) + 1 :]
        elif not bool(self.token_layout.is_audio(ids).any()):
            # generated ids without audio: speech that ended before its first frame, or text that ended on audio-end
            ends_speech = bool((ids == self.audio_end_token_id).any())
            if not ends_speech or self.decode_text(ids, skip_special_tokens=True).strip():
                return None
        spans = self.audio_spans(ids)
        speech = (spans[0] if len(starts) else spans[-1]) if spans else ids[:0]
        if speech.numel() == 0:
            logger.warning("No whole audio frame was generated: returning an empty waveform (0 samples).")
            return np.zeros(0, dtype=np.float32)
        return self.ids_to_audio(speech)

    def decode_text(self, token_ids: Sequence[int] | torch.Tensor, **kwargs) -> str:
        """The text of a sequence, audio ids left out."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        ids = ids[ids < self.token_layout.audio_token_offset]
        return self.tokenizer.decode(ids.tolist(), **kwargs)

    def decode(
        self, token_ids: Sequence[int] | torch.Tensor, **kwargs
    ) -> str | np.ndarray | torch.Tensor | list[str | torch.Tensor]:
        """
        A sequence's transcript if it ends in one, else its speech (1-D float32 waveform at `sampling_rate`, see
        [`~OmniProcessor.decode_audio`]) if it is speech, else its text. Speech without a whole frame decodes to an
        empty waveform, with a warning.

        A 2-D tensor is `generate` output, as transformers' text-to-audio pipeline passes it: one row gives the
        waveform as a 1-D `torch.FloatTensor`, as Dia's and CSM's processors do; several rows (e.g.
        `num_return_sequences=2`) give a list of them, which the pipeline returns as a list of waveforms.
        """
        if isinstance(token_ids, torch.Tensor) and token_ids.dim() == 2:
            decoded = [self.decode(row, **kwargs) for row in token_ids]
            decoded = [torch.from_numpy(item) if isinstance(item, np.ndarray) else item for item in decoded]
            return decoded[0] if len(decoded) == 1 else decoded
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

    def save_audio(
        self, waveforms: np.ndarray | Sequence[np.ndarray], paths: str | os.PathLike | Sequence[str | os.PathLike]
    ) -> None:
        """Write waveform(s) at the codec's sampling rate as 16-bit WAV file(s)."""
        import soundfile

        if isinstance(paths, (str, os.PathLike)):
            waveforms, paths = [waveforms], [paths]
        if len(waveforms) != len(paths):
            raise ValueError(f"Got {len(waveforms)} waveforms for {len(paths)} paths.")
        for waveform, path in zip(waveforms, paths):
            soundfile.write(
                os.fspath(path), np.asarray(waveform, dtype=np.float32), self.sampling_rate, subtype="PCM_16"
            )

    # ------------------------------------------------------------------ serialisation
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        # ProcessorMixin (5.23) writes no audio tokenizer, only a reference (class name and `name_or_path`, a
        # repository of its own) to load it from; an Omni checkpoint holds its codec, written here and pushed with it
        files = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        audio_tokenizer_directory = os.path.join(save_directory, AUDIO_TOKENIZER_SUBFOLDER)
        self.audio_tokenizer.save_pretrained(audio_tokenizer_directory)
        files.append(audio_tokenizer_directory)
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory))), **kwargs)
        return files

    def to_dict(self) -> dict:
        """`ProcessorMixin.to_dict` without the audio tokenizer, which `save_pretrained` saves as a model of its own
        (ProcessorMixin would record it as a repository to load, and deep-copy its weights to do so)."""
        audio_tokenizer = self.__dict__.pop("audio_tokenizer")
        try:
            return super().to_dict()
        finally:
            self.audio_tokenizer = audio_tokenizer

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"]


# Local Auto-class registration, and the `auto_map` that `save_pretrained` writes for trust_remote_code loading.
AutoFeatureExtractor.register(OmniConfig, SNACFeatureExtractor, exist_ok=True)
AutoProcessor.register(OmniConfig, OmniProcessor, exist_ok=True)
SNACFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
OmniProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["OmniProcessor", "SPECIAL_TOKENS", "PAD_TOKEN"]
