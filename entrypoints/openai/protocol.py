# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The request and response bodies of the OpenAI audio API, as pydantic models (after vLLM's
`vllm/entrypoints/openai/protocol.py`), and the formats this server reads and writes."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


# what soundfile (libsndfile >= 1.1) writes, as OpenAI's `response_format` names them; aac has no encoder at hand
SPEECH_FORMATS = ("mp3", "opus", "flac", "wav", "pcm")
# formats whose bytes go out as the audio is decoded; the others are encoded once the speech is complete
STREAMED_SPEECH_FORMATS = ("wav", "pcm")
SPEECH_STREAM_FORMATS = ("audio", "sse")
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")


class OpenAIBaseModel(BaseModel):
    # unknown fields are refused by name, never ignored
    model_config = ConfigDict(extra="forbid")


class SpeechRequest(OpenAIBaseModel):
    """`POST /v1/audio/speech` (OpenAI's fields, plus the voice-prompt extension `ref_audio` + `ref_text`)."""

    model: str
    input: str
    voice: str
    instructions: str | None = None
    response_format: str = "mp3"
    speed: float = 1.0
    stream_format: str = "audio"
    ref_audio: str | None = Field(
        default=None, description="base64 audio file of the voice to continue (extension; needs ref_text)"
    )
    ref_text: str | None = Field(default=None, description="transcript of ref_audio (extension)")


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "qwen-omni"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TranscriptionResponse(BaseModel):
    text: str


class TranscriptionSegment(BaseModel):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float


class TranscriptionVerboseResponse(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    # the Omni format carries no language tag: "unknown" says so rather than guessing one
    language: str = "unknown"
    duration: float
    text: str
    segments: list[TranscriptionSegment]
