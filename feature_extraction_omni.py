# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""SNAC feature extractor: the audio tokenizer of the Omni model (waveform <-> SNAC codes <-> token ids)."""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import cached_file, logging

from .configuration_omni import SNACTokenLayout


logger = logging.get_logger(__name__)

CODEC_WEIGHTS_NAME = "snac_codec.safetensors"
# SNAC's own checkpoint layout, as `hubertsiuzdak/snac_24khz` ships it
SNAC_CONFIG_NAME = "config.json"
SNAC_WEIGHTS_NAME = "pytorch_model.bin"
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# one clip with at most this many channels may be given as (samples, channels) or (channels, samples)
_MAX_CHANNELS = 8
_NOISE_CHUNK = 4096
# Longest clip encoded by default: the longest `train/prepare_data.py` keeps by default (about 2.5k audio tokens with
# the 24 kHz codec), so that a stray hour-long file is refused instead of filling memory inside the codec.
DEFAULT_MAX_DURATION_SECONDS = 30.0

AudioInput = np.ndarray | torch.Tensor | Sequence[float]


def _check_max_duration(max_duration_seconds: float | None) -> float:
    """The clip-length limit in seconds: `None` is the default, anything else must be a positive number."""
    if max_duration_seconds is None:
        return DEFAULT_MAX_DURATION_SECONDS
    if isinstance(max_duration_seconds, bool) or not isinstance(max_duration_seconds, (int, float, np.number)) or not (
        max_duration_seconds > 0
    ):
        raise ValueError(
            f"max_duration_seconds={max_duration_seconds!r} must be a positive number of seconds (e.g. 30.0), or "
            "float('inf') to accept clips of any length."
        )
    return float(max_duration_seconds)


def check_sampling_rate(sampling_rate, codec_rate: int | None = None) -> int:
    """A sampling rate in Hz as an `int`, refusing what would be read as another rate (`None`, `True`, `8000.7`)."""
    is_number = isinstance(sampling_rate, (int, float, np.integer, np.floating)) and not isinstance(
        sampling_rate, (bool, np.bool_)
    )
    if not is_number or not math.isfinite(sampling_rate) or sampling_rate <= 0 or sampling_rate != int(sampling_rate):
        codec = f"the codec encodes {codec_rate} Hz audio and resamples other rates, so " if codec_rate else ""
        raise ValueError(
            f"`sampling_rate` must be a positive number, got {sampling_rate!r}: {codec}pass the whole number of Hz "
            "your audio was recorded at (e.g. `sampling_rate=16000`, as `soundfile.read` returns it)."
        )
    return int(sampling_rate)


def pcm_to_float(audio: np.ndarray) -> np.ndarray:
    """
    A waveform array as float32: integer PCM (int8 / int16 / int32, and 8-bit unsigned as WAV files hold it) is
    scaled to [-1, 1] by its full range, as `soundfile.read(..., dtype="float32")` does; float input is kept.
    """
    audio = np.asarray(audio)
    if audio.dtype.kind == "f":
        return audio.astype(np.float32, copy=False)
    if audio.dtype in (np.int8, np.int16, np.int32):
        return (audio.astype(np.float64) / 2 ** (8 * audio.dtype.itemsize - 1)).astype(np.float32)
    if audio.dtype == np.uint8:
        return ((audio.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    raise ValueError(
        f"Cannot read audio of dtype {audio.dtype}: pass float samples in [-1, 1], or integer PCM as int16 / int32 / "
        "uint8 (e.g. `soundfile.read(path, dtype='float32')`)."
    )


class _PositionLockedNoise(torch.nn.Module):
    """
    Drop-in for `snac.layers.NoiseBlock` whose noise is a fixed function of the absolute time step.

    SNAC's decoder adds `randn * linear(x)` at each upsampling block. Fresh noise on every call makes two decodes of
    the same codes differ, and a streamed decode (each window decoded with its own noise) differ from the full one.
    Drawing the noise from seeded chunks indexed by absolute position keeps SNAC's noise statistics while making
    decoding deterministic and window-independent.
    """

    def __init__(self, noise_block: torch.nn.Module, block_index: int, steps_per_frame: int):
        super().__init__()
        self.linear = noise_block.linear
        self.block_index = block_index
        self.steps_per_frame = steps_per_frame
        self.frame_offset = 0

    def _noise(self, start: int, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        first, last = start // _NOISE_CHUNK, (start + length - 1) // _NOISE_CHUNK
        chunks = []
        for chunk in range(first, last + 1):
            generator = torch.Generator().manual_seed(1_000_003 * (self.block_index + 1) + chunk)
            chunks.append(torch.randn(_NOISE_CHUNK, generator=generator))
        noise = torch.cat(chunks)[start - first * _NOISE_CHUNK : start - first * _NOISE_CHUNK + length]
        return noise.to(device=device, dtype=dtype).view(1, 1, length)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        noise = self._noise(self.frame_offset * self.steps_per_frame, hidden_states.shape[-1], hidden_states.device, hidden_states.dtype)
        return hidden_states + noise * self.linear(hidden_states)


def _lock_decoder_noise(codec: torch.nn.Module) -> list[_PositionLockedNoise]:
    from snac.layers import NoiseBlock

    noise_modules = []
    upsampling = codec.vq_strides[0]
    rates = list(codec.decoder_rates)
    block_index = 0
    for module in codec.decoder.modules():
        block = getattr(module, "block", None)
        if not isinstance(block, torch.nn.Sequential):
            continue
        for index, child in enumerate(block):
            if isinstance(child, NoiseBlock):
                steps_per_frame = upsampling * math.prod(rates[: block_index + 1])
                locked = _PositionLockedNoise(child, block_index, steps_per_frame)
                block[index] = locked
                noise_modules.append(locked)
                block_index += 1
    return noise_modules


class SNACFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Audio tokenizer of the Omni model: turns waveforms into SNAC codes and vocabulary ids, and ids back into waveforms.

    It wraps a [`snac.SNAC`](https://github.com/hubertsiuzdak/snac) codec. Input audio of any sampling rate, mono or
    multichannel, is down-mixed to mono, resampled with torchaudio to the codec's rate, padded to a whole number of
    frames and encoded in batches under `torch.inference_mode`; codes are mapped to ids by [`SNACTokenLayout`].

    Load it from an Omni checkpoint (`processor_config.json` + `snac_codec.safetensors`), or directly from a codec in
    SNAC's own layout (`config.json` + `pytorch_model.bin`, a local folder or a Hub id such as
    `hubertsiuzdak/snac_24khz`). `save_pretrained` writes the codec weights as safetensors beside the config.

    Args:
        codec_config (`dict`):
            The keyword arguments of `snac.SNAC` (its `config.json`).
        audio_token_offset (`int`, *optional*, defaults to 0):
            Id of the first audio token in the model's vocabulary (the tokenizer's length).
        encode_batch_size (`int`, *optional*, defaults to 8):
            Clips encoded per codec call; clips are sorted by length first so that batches carry little padding.
        feature_size (`int`, *optional*, defaults to 1):
            Feature dimension of the (mono) waveform.
        padding_value (`float`, *optional*, defaults to 0.0):
            Value used to pad waveforms to a whole number of frames.
        codec_name_or_path (`str`, *optional*):
            Where the codec came from, kept for model cards.
        max_duration_seconds (`float`, *optional*, defaults to 30.0):
            Longest clip accepted, in seconds; longer clips raise a `ValueError` before anything is encoded (never
            silently truncated). `None` (as configs saved before this default existed hold) means the default;
            `float("inf")` accepts any length.
    """

    model_input_names = ["audio_token_ids", "audio_token_lengths"]

    def __init__(
        self,
        codec_config: dict | None = None,
        audio_token_offset: int = 0,
        encode_batch_size: int = 8,
        feature_size: int = 1,
        padding_value: float = 0.0,
        codec_name_or_path: str | None = None,
        max_duration_seconds: float | None = None,
        **kwargs,
    ):
        if not codec_config:
            raise ValueError(
                "SNACFeatureExtractor needs `codec_config`, the keyword arguments of `snac.SNAC`. Build it with "
                "`SNACFeatureExtractor.from_pretrained('hubertsiuzdak/snac_24khz')` or `SNACFeatureExtractor(codec_config=snac_kwargs)` (random weights until loaded)."
            )
        kwargs.pop("sampling_rate", None)
        super().__init__(
            feature_size=feature_size,
            sampling_rate=int(codec_config.get("sampling_rate", 44100)),
            padding_value=padding_value,
            **kwargs,
        )
        self.codec_config = dict(codec_config)
        self.audio_token_offset = int(audio_token_offset)
        self.encode_batch_size = int(encode_batch_size)
        self.codec_name_or_path = codec_name_or_path
        self.max_duration_seconds = _check_max_duration(max_duration_seconds)
        self._codec = None
        self._noise_modules: list[_PositionLockedNoise] = []
        self._device = torch.device("cpu")

    # ------------------------------------------------------------------ codec and layout
    @property
    def vq_strides(self) -> list[int]:
        return list(self.codec_config.get("vq_strides", [8, 4, 2, 1]))

    @property
    def hop_length(self) -> int:
        """Waveform samples per code of the finest codebook."""
        return int(math.prod(self.codec_config.get("encoder_rates", [3, 3, 7, 7])))

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per frame (one code of the coarsest codebook)."""
        return self.hop_length * self.vq_strides[0]

    @property
    def frames_per_window(self) -> int:
        """Frames the codec's local attention needs as a unit (1 for codecs without attention, e.g. 24 kHz)."""
        window = self.codec_config.get("attn_window_size") or 1
        return math.lcm(self.vq_strides[0], window) // self.vq_strides[0]

    @property
    def token_layout(self) -> SNACTokenLayout:
        return SNACTokenLayout(self.vq_strides, self.codec_config.get("codebook_size", 4096), self.audio_token_offset)

    @property
    def codec(self) -> torch.nn.Module:
        """The `snac.SNAC` model, built from `codec_config` (random weights until loaded) on first use."""
        if self._codec is None:
            import snac

            self.set_codec(snac.SNAC(**self.codec_config))
        return self._codec

    def set_codec(self, codec: torch.nn.Module) -> None:
        """Use `codec` (a `snac.SNAC` matching `codec_config`) for encoding and decoding."""
        codec = codec.eval().requires_grad_(False).to(self._device)
        self._noise_modules = _lock_decoder_noise(codec)
        self._codec = codec

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> SNACFeatureExtractor:
        """Run the codec on `device` (e.g. `"cuda"`)."""
        self._device = torch.device(device)
        if self._codec is not None:
            self._codec.to(self._device)
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> SNACFeatureExtractor:
        """
        Load from an Omni checkpoint or processor folder, or from a SNAC codec (`config.json` + `pytorch_model.bin`,
        local folder or Hub id). Extra keyword arguments that name settings (e.g. `audio_token_offset`) override
        the saved values; others, such as the `dtype` or `device_map` that `AutoProcessor.from_pretrained` and
        `pipeline` pass to every component, are ignored, as transformers' own feature extractors do (and returned
        with `return_unused_kwargs=True`).
        """
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith(".") or path.count("/") > 1):
            raise OSError(
                f"Cannot load a SNAC codec from {path!r}: no such folder. Pass a folder saved by OmniProcessor, a "
                "SNAC checkpoint folder (config.json + pytorch_model.bin) or a Hub id such as 'hubertsiuzdak/snac_24khz'."
            )
        hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KWARGS if key in kwargs}
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        try:
            feature_extractor_dict, _ = cls.get_feature_extractor_dict(path, **hub_kwargs)
        except OSError:
            feature_extractor_dict = None
        if feature_extractor_dict is None or "codec_config" not in feature_extractor_dict:
            settings, unused = cls._split_settings(kwargs, saved=())
            feature_extractor = cls._from_snac_checkpoint(path, hub_kwargs, **settings)
            return (feature_extractor, unused) if return_unused_kwargs else feature_extractor
        feature_extractor_dict.pop("feature_extractor_type", None)
        settings, unused = cls._split_settings(kwargs, saved=feature_extractor_dict)
        feature_extractor = cls(**{**feature_extractor_dict, **settings})
        weights_file = cached_file(path, CODEC_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if weights_file is None:
            raise OSError(
                f"{path} has a SNACFeatureExtractor config but no codec weights ({CODEC_WEIGHTS_NAME}). Save the "
                "processor with `OmniProcessor.save_pretrained` (it writes the weights), or rebuild it from a SNAC "
                "codec with `SNACFeatureExtractor.from_pretrained('hubertsiuzdak/snac_24khz')`."
            )
        from safetensors.torch import load_file

        import snac

        codec = snac.SNAC(**feature_extractor.codec_config)
        codec.load_state_dict(load_file(weights_file))
        feature_extractor.set_codec(codec)
        return (feature_extractor, unused) if return_unused_kwargs else feature_extractor

    @classmethod
    def _split_settings(cls, kwargs: dict, saved) -> tuple[dict, dict]:
        """
        Split loader keyword arguments into settings of this feature extractor (the saved keys and the `__init__`
        parameters of the class and its bases) and the rest, which are not ours (`dtype`, `device_map`,
        `trust_remote_code`, ...): like `FeatureExtractionMixin.from_dict`, which only overrides known keys.
        """
        known = set(saved)
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                known.update(inspect.signature(klass.__init__).parameters)
        known -= {"self", "kwargs", "args"}
        settings = {key: value for key, value in kwargs.items() if key in known}
        unused = {key: value for key, value in kwargs.items() if key not in known}
        if unused:
            logger.debug(f"SNACFeatureExtractor.from_pretrained ignores the keyword arguments {sorted(unused)}.")
        return settings, unused

    @classmethod
    def _from_snac_checkpoint(cls, path: str, hub_kwargs: dict, **kwargs) -> SNACFeatureExtractor:
        config_file = cached_file(path, SNAC_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        weights_file = cached_file(path, SNAC_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if config_file is None or weights_file is None:
            raise OSError(
                f"Cannot load a SNAC codec from {path!r}: it holds neither a SNACFeatureExtractor "
                f"(processor_config.json + {CODEC_WEIGHTS_NAME}) nor a SNAC checkpoint ({SNAC_CONFIG_NAME} + "
                f"{SNAC_WEIGHTS_NAME}). Pass a folder saved by OmniProcessor or a SNAC codec such as "
                "'hubertsiuzdak/snac_24khz'."
            )
        import snac

        with open(config_file, encoding="utf-8") as handle:
            codec_config = json.load(handle)
        codec = snac.SNAC(**codec_config)
        codec.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
        feature_extractor = cls(codec_config=codec_config, codec_name_or_path=path, **kwargs)
        feature_extractor.set_codec(codec)
        return feature_extractor

    def save_codec_weights(self, save_directory: str | os.PathLike) -> str:
        """Write the codec weights as safetensors into `save_directory` and return the file path."""
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        weights_file = os.path.join(save_directory, CODEC_WEIGHTS_NAME)
        state_dict = {name: tensor.detach().cpu().contiguous() for name, tensor in self.codec.state_dict().items()}
        save_file(state_dict, weights_file, metadata={"format": "pt"})
        return weights_file

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        files = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        files.append(self.save_codec_weights(save_directory))
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory))), **kwargs)
        return files

    def to_dict(self) -> dict:
        output = {key: copy.deepcopy(value) for key, value in self.__dict__.items() if not key.startswith("_")}
        output["feature_extractor_type"] = self.__class__.__name__
        return output

    def __deepcopy__(self, memo: dict) -> SNACFeatureExtractor:
        # The codec holds read-only weights: copies share it instead of duplicating 20M parameters.
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            shared = key in ("_codec", "_noise_modules", "_device")
            clone.__dict__[key] = value if shared else copy.deepcopy(value, memo)
        return clone

    # ------------------------------------------------------------------ waveform preparation
    def _to_mono_list(self, raw_audio: AudioInput | Sequence[AudioInput]) -> list[torch.Tensor]:
        """Normalise the accepted input shapes into a list of 1-D float32 waveforms."""

        def as_tensor(audio) -> torch.Tensor:
            if isinstance(audio, torch.Tensor):
                audio = audio.detach().cpu()
                if audio.is_floating_point():
                    return audio.to(torch.float32)
                audio = audio.numpy()
            elif isinstance(audio, (list, tuple)):
                return torch.as_tensor(np.asarray(audio, dtype=np.float32))
            # integer PCM is scaled to [-1, 1]: the codec expects float audio, and int16 read as floats is ~30000x loud
            return torch.from_numpy(np.array(pcm_to_float(audio)))

        def clip_to_mono(clip: torch.Tensor) -> torch.Tensor:
            if clip.dim() == 1 or clip.numel() == 0:
                # an empty clip (e.g. a 0-sample file read as (channels, 0)) is refused below as empty
                return clip.reshape(-1) if clip.numel() == 0 else clip
            if clip.dim() == 2:
                channels_axis = 0 if clip.shape[0] <= clip.shape[1] else 1
                if clip.shape[channels_axis] > _MAX_CHANNELS:
                    raise ValueError(
                        f"A clip of shape {tuple(clip.shape)} is neither mono nor (channels, samples) with at most "
                        f"{_MAX_CHANNELS} channels. Pass a batch as a list of clips, each 1-D (mono), "
                        "(channels, samples) or (samples, channels)."
                    )
                return clip.mean(dim=channels_axis)
            raise ValueError(f"A clip must be 1-D or 2-D (multichannel), got shape {tuple(clip.shape)}.")

        if isinstance(raw_audio, (np.ndarray, torch.Tensor)):
            tensor = as_tensor(raw_audio)
            if tensor.dim() == 1:
                clips = [tensor]
            elif tensor.dim() == 2:
                if tensor.shape[1] <= _MAX_CHANNELS < tensor.shape[0]:
                    raise ValueError(
                        f"Got a 2-D array of shape {tuple(tensor.shape)}: a 2-D array is read as a batch of mono "
                        f"clips (batch, samples), and clips of {tensor.shape[1]} samples are surely a mistake. For one "
                        "multichannel clip in (samples, channels) layout, as soundfile returns it, pass `[audio]`."
                    )
                clips = list(tensor)
            elif tensor.dim() == 3:
                clips = [clip_to_mono(clip) for clip in tensor]
            else:
                raise ValueError(
                    f"Audio must be 1-D (one mono clip), 2-D (a batch of mono clips) or 3-D (batch, channels, "
                    f"samples); got shape {tuple(tensor.shape)}."
                )
        elif isinstance(raw_audio, (list, tuple)) and raw_audio and isinstance(raw_audio[0], (int, float)):
            clips = [as_tensor(raw_audio)]
        elif isinstance(raw_audio, (list, tuple)):
            clips = [clip_to_mono(as_tensor(clip)) for clip in raw_audio]
        else:
            raise ValueError(
                f"Unsupported audio input of type {type(raw_audio).__name__}: pass a numpy array, a torch tensor, or "
                "a list of them."
            )
        if not clips:
            raise ValueError("Got an empty batch of audio clips.")
        for index, clip in enumerate(clips):
            if clip.numel() == 0:
                raise ValueError(f"Audio clip {index} is empty (0 samples).")
            if not torch.isfinite(clip).all():
                raise ValueError(f"Audio clip {index} contains NaN or infinite samples.")
        return clips

    def check_durations(
        self, num_samples: Sequence[int], sampling_rate: int, names: Sequence[str] | None = None
    ) -> None:
        """Raise a `ValueError` naming the first clip longer than `max_duration_seconds` (before any encoding); clips
        are named by `names` (e.g. file names), or by their position in the batch."""
        for index, samples in enumerate(num_samples):
            duration = samples / sampling_rate
            if duration > self.max_duration_seconds:
                name = names[index] if names is not None else f"Audio clip {index}"
                raise ValueError(
                    f"{name} lasts {duration:.1f} s, longer than max_duration_seconds="
                    f"{self.max_duration_seconds}; split it into shorter clips, or raise the limit "
                    "(`feature_extractor.max_duration_seconds`, float('inf') for none)."
                )

    def _resample(self, clips: list[torch.Tensor], sampling_rate: int) -> list[torch.Tensor]:
        if sampling_rate == self.sampling_rate:
            return clips
        import torchaudio.functional

        return [torchaudio.functional.resample(clip, sampling_rate, self.sampling_rate) for clip in clips]

    def num_frames(self, num_samples: int) -> int:
        """Frames needed to cover `num_samples` waveform samples at the codec rate."""
        return max(1, math.ceil(num_samples / self.samples_per_frame))

    # ------------------------------------------------------------------ encoding
    def encode(self, raw_audio: AudioInput | Sequence[AudioInput], sampling_rate: int | None = None) -> list[list[torch.Tensor]]:
        """
        Encode waveforms into SNAC codes.

        Args:
            raw_audio: one clip (1-D), a batch of mono clips (2-D `(batch, samples)`), a 3-D `(batch, channels,
                samples)` array, or a list of clips (each 1-D, `(channels, samples)` or `(samples, channels)`).
            sampling_rate (`int`): the sampling rate of `raw_audio`; required, so that audio is never silently
                encoded at the wrong speed.

        Returns:
            One entry per clip: a list of `num_codebooks` 1-D `LongTensor`s covering `ceil(samples / samples_per_frame)`
            frames (the padding needed by the codec beyond that is trimmed).
        """
        sampling_rate = check_sampling_rate(sampling_rate, self.sampling_rate)
        clips = self._to_mono_list(raw_audio)
        self.check_durations([clip.numel() for clip in clips], sampling_rate)
        clips = self._resample(clips, sampling_rate)
        codec = self.codec
        order = sorted(range(len(clips)), key=lambda i: clips[i].numel(), reverse=True)
        codes_by_clip: list[list[torch.Tensor] | None] = [None] * len(clips)
        with torch.inference_mode():
            for start in range(0, len(order), self.encode_batch_size):
                indices = order[start : start + self.encode_batch_size]
                frames = [self.num_frames(clips[i].numel()) for i in indices]
                batch = torch.full((len(indices), 1, max(frames) * self.samples_per_frame), self.padding_value)
                for row, i in enumerate(indices):
                    batch[row, 0, : clips[i].numel()] = clips[i]
                codes = codec.encode(batch.to(self._device))
                for row, i in enumerate(indices):
                    codes_by_clip[i] = [
                        code[row, : frames[row] * per_frame].cpu()
                        for code, per_frame in zip(codes, self.token_layout.codes_per_frame)
                    ]
        return codes_by_clip

    def __call__(
        self,
        raw_audio: AudioInput | Sequence[AudioInput],
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        return_codes: bool = False,
        **kwargs,
    ) -> BatchFeature:
        """
        Tokenize audio.

        Returns:
            [`BatchFeature`] with `audio_token_ids` (a list of 1-D id tensors, or with `return_tensors="pt"` a
            `(batch, max_len)` tensor right-padded with 0) and `audio_token_lengths`; with `return_codes=True` also
            `audio_codes`, the per-codebook codes of each clip.
        """
        codes_by_clip = self.encode(raw_audio, sampling_rate=sampling_rate)
        layout = self.token_layout
        token_ids = [layout.codes_to_ids(codes) for codes in codes_by_clip]
        lengths = torch.tensor([ids.numel() for ids in token_ids])
        data = {"audio_token_lengths": lengths}
        if return_tensors == "pt":
            padded = torch.zeros(len(token_ids), int(lengths.max()), dtype=torch.long)
            for row, ids in enumerate(token_ids):
                padded[row, : ids.numel()] = ids
            data["audio_token_ids"] = padded
        elif return_tensors is None:
            data["audio_token_ids"] = token_ids
        else:
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or None.")
        if return_codes:
            data["audio_codes"] = codes_by_clip
        return BatchFeature(data)

    # ------------------------------------------------------------------ decoding
    def decode_codes(self, codes: Sequence[torch.Tensor], frame_offset: int = 0) -> torch.Tensor:
        """
        Decode SNAC codes (one `(batch, n)` or 1-D tensor per codebook) into waveforms.

        Args:
            frame_offset (`int`): absolute index of the first frame, so that a window of a longer stream is decoded
                with the same decoder noise as inside the full decode.

        Returns:
            `torch.FloatTensor` `(batch, samples)` (1-D for unbatched codes), `samples = frames * samples_per_frame`.
        """
        unbatched = codes[0].dim() == 1
        codes = [(code.unsqueeze(0) if unbatched else code).long().to(self._device) for code in codes]
        num_frames = codes[0].shape[-1]
        # the decoder's local attention needs whole windows: pad with code 0, decode, then trim
        padded_frames = math.ceil(num_frames / self.frames_per_window) * self.frames_per_window
        if padded_frames != num_frames:
            codes = [
                torch.nn.functional.pad(code, (0, (padded_frames - num_frames) * per_frame))
                for code, per_frame in zip(codes, self.token_layout.codes_per_frame)
            ]
        codec = self.codec
        for module in self._noise_modules:
            module.frame_offset = frame_offset
        with torch.inference_mode():
            audio = codec.decode(codes)[:, 0, : num_frames * self.samples_per_frame].float().cpu()
        return audio[0] if unbatched else audio

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
            raise ValueError(f"Expected one 1-D sequence of ids, got shape {tuple(token_ids.shape)}; use `batch_decode`.")
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

    def decode(self, token_ids: torch.Tensor | Sequence[int], strict: bool = False) -> np.ndarray:
        """
        Decode one sequence of audio token ids into a 1-D float32 waveform at `sampling_rate`.

        Invalid frames and a trailing partial frame are dropped and counted in a warning (see
        [`~SNACFeatureExtractor.valid_frames`]); `strict=True` raises a `ValueError` instead. With no whole frame
        left the result is an empty waveform, with a warning.
        """
        token_ids = self.valid_frames(token_ids, strict=strict)
        if token_ids.numel() == 0:
            logger.warning("No whole audio frame to decode: returning an empty waveform (0 samples).")
            return np.zeros(0, dtype=np.float32)
        return self.decode_codes(self.token_layout.ids_to_codes(token_ids)).numpy()

    def batch_decode(self, token_ids: Sequence[torch.Tensor | Sequence[int]]) -> list[np.ndarray]:
        """Decode several sequences of audio ids (each whole frames, lengths may differ)."""
        return [self.decode(ids) for ids in token_ids]


__all__ = ["SNACFeatureExtractor"]
