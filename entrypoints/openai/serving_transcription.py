# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""`POST /v1/audio/transcriptions`: a multipart upload, checked and SNAC-encoded, transcribed by the engine."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile

from .protocol import TRANSCRIPTION_FORMATS
from .serving_speech import RequestError


# OpenAI fields this model cannot honour: refused by name rather than ignored
_UNSUPPORTED_FIELDS = {
    "language": "the Omni model has no language setting (it transcribes what it hears)",
    "prompt": "the Omni model takes no text prompt for transcription",
    "timestamp_granularities[]": "the Omni model gives no timestamps",
    "timestamp_granularities": "the Omni model gives no timestamps",
    "include[]": "the Omni model gives no log probabilities",
    "stream": "transcripts are returned whole",
    "chunking_strategy": "clips are transcribed whole (up to the feature extractor's max duration)",
}
_KNOWN_FIELDS = {"file", "model", "response_format", "temperature"}


@dataclass
class TranscriptionTask:
    model: str
    prompt_ids: list[int]
    duration: float
    response_format: str
    temperature: float


class TranscriptionService:
    """
    Checks a transcription form and builds the prompt.

    Args:
        engine: gives the processor. max_upload_bytes: the largest `file` accepted (413 beyond).
    """

    def __init__(self, engine, max_upload_bytes: int):
        self.engine = engine
        self.max_upload_bytes = max_upload_bytes

    def check_form(self, form) -> tuple[str, UploadFile, str, float]:
        for name in form:
            if name in _UNSUPPORTED_FIELDS:
                raise RequestError(
                    f"`{name}` is not supported: {_UNSUPPORTED_FIELDS[name]}. Leave it out.", param=name
                )
            if name not in _KNOWN_FIELDS:
                raise RequestError(f"unknown field {name!r}; this endpoint takes {sorted(_KNOWN_FIELDS)}.", param=name)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError(
                "`file` is missing: send the audio as a multipart file field named 'file'.", param="file"
            )
        model = form.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError("`model` is missing: send the model name (GET /v1/models lists it).", param="model")
        response_format = form.get("response_format") or "json"
        if response_format not in TRANSCRIPTION_FORMATS:
            raise RequestError(
                f"response_format={response_format!r} is not supported; use one of {list(TRANSCRIPTION_FORMATS)}.",
                param="response_format",
            )
        try:
            temperature = float(form.get("temperature") or 0.0)
        except ValueError:
            raise RequestError(
                f"temperature={form.get('temperature')!r} is not a number.", param="temperature"
            ) from None
        if not 0.0 <= temperature <= 2.0:
            raise RequestError(f"temperature={temperature} must lie in [0, 2] (0: greedy).", param="temperature")
        return model, upload, response_format, temperature

    async def read_upload(self, upload: UploadFile) -> bytes:
        data = await upload.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise RequestError(
                f"the uploaded file is larger than this server's limit of {self.max_upload_bytes} bytes "
                "(--max_upload_bytes); send a shorter or compressed clip.",
                status=413,
                param="file",
                code="request_too_large",
            )
        if not data:
            raise RequestError("the uploaded file is empty.", param="file")
        return data

    def prompt(self, data: bytes, filename: str | None) -> tuple[list[int], float]:
        """The speech-to-text prompt of an uploaded file and its duration (a `RequestError` for non-audio)."""
        from qwen_omni.common.audio import read_audio

        processor = self.engine.processor
        try:
            audio, rate = read_audio({"bytes": data, "path": filename})
        except Exception as error:  # noqa: BLE001 - soundfile raises several types for data that is not audio
            raise RequestError(
                f"the uploaded file {filename!r} is not audio this server can decode ({error}); send wav, flac, "
                "ogg/opus or mp3.",
                param="file",
                code="invalid_audio",
            ) from None
        try:
            ids = processor.apply_transcription_request(audio, sampling_rate=rate, return_tensors=None)["input_ids"][0]
        except ValueError as error:  # too long for the feature extractor or the model's positions
            raise RequestError(f"the uploaded file {filename!r}: {error}", param="file") from None
        return ids, audio.shape[-1] / rate
