# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
`POST /v1/audio/speech`: text to speech through the engine, streamed.

The text is split at sentence ends (`split_sentences`, as `qwen-omni speak` does); every piece is one engine job, all
submitted at once (so they can share batches), and their audio is joined in order with the library's crossfade.
`wav` and `pcm` go out as they are decoded (`wav` with a streaming header whose sizes say "unknown", as OpenAI's
does); `flac`, `mp3` and `opus` are encoded by soundfile once the speech is complete. `stream_format="sse"` sends the
same bytes as base64 `speech.audio.delta` events, then `speech.audio.done`.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import AsyncIterator

import numpy as np
from transformers.utils import logging

from .engine import FINISHED, GenerationJob, pcm16
from .protocol import SPEECH_FORMATS, SPEECH_STREAM_FORMATS, STREAMED_SPEECH_FORMATS, SpeechRequest


logger = logging.get_logger(__name__)

DEFAULT_VOICE = "default"  # no speaker name in the prompt: the checkpoint's unconditioned voice
_SOUNDFILE_FORMATS = {"flac": ("FLAC", None), "mp3": ("MP3", None), "opus": ("OGG", "OPUS")}
MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
}


class RequestError(Exception):
    """A request the server refuses: `status` (400, 404, 413, ...), a message naming the problem and the fix, and
    the request field it is about."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


def streaming_wav_header(sampling_rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (RIFF and data sizes 0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sampling_rate, sampling_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


def encode_complete(audio: np.ndarray, sampling_rate: int, response_format: str) -> bytes:
    """A whole waveform as a flac, mp3 or opus file (soundfile / libsndfile)."""
    import soundfile

    container, subtype = _SOUNDFILE_FORMATS[response_format]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(audio, dtype=np.float32), sampling_rate, format=container, subtype=subtype)
    return buffer.getvalue()


class SpeechService:
    """Checks speech requests and turns them into engine jobs and a byte stream.

    Args:
        engine: the [`TransformersEngine`] (or another engine with `new_job` / `submit` / `cancel` / `processor`).
        voices: the speaker names the checkpoint was trained with (`"default"`, no name, is always accepted).
        max_input_chars: the longest `input` accepted. max_piece_chars: the longest piece of text generated at once.
        crossfade_ms: the crossfade between pieces.
    """

    def __init__(
        self,
        engine,
        voices: list[str],
        max_input_chars: int = 4096,
        max_piece_chars: int = 200,
        crossfade_ms: float = 30.0,
    ):
        self.engine = engine
        self.voices = [DEFAULT_VOICE, *[voice for voice in voices if voice != DEFAULT_VOICE]]
        self.max_input_chars = max_input_chars
        self.max_piece_chars = max_piece_chars
        self.crossfade_ms = crossfade_ms

    def check(self, request: SpeechRequest) -> None:
        """Refuse what cannot be honoured (400), before any work."""
        if not request.input.strip():
            raise RequestError("`input` is empty: give the text to speak.", param="input")
        if len(request.input) > self.max_input_chars:
            raise RequestError(
                f"`input` holds {len(request.input)} characters; this server takes at most {self.max_input_chars} "
                "(--max_input_chars). Split the text over several requests.",
                param="input",
            )
        if request.response_format not in SPEECH_FORMATS:
            raise RequestError(
                f"response_format={request.response_format!r} is not supported; use one of {list(SPEECH_FORMATS)}.",
                param="response_format",
            )
        if request.stream_format not in SPEECH_STREAM_FORMATS:
            raise RequestError(
                f"stream_format={request.stream_format!r} is not supported; use one of {list(SPEECH_STREAM_FORMATS)}.",
                param="stream_format",
            )
        if request.speed != 1.0:
            raise RequestError(
                f"speed={request.speed} is not supported: the model speaks at its own pace and changing the tempo "
                "afterwards would change the voice. Send speed=1.0 (or leave it out).",
                param="speed",
            )
        if request.instructions:
            raise RequestError(
                "`instructions` are not supported: the Omni model takes no style instructions. Leave it out.",
                param="instructions",
            )
        if request.voice not in self.voices:
            raise RequestError(
                f"voice={request.voice!r} is not one of this model's voices {self.voices} (--voices); "
                "'default' speaks without a speaker name.",
                param="voice",
            )
        if (request.ref_audio is None) != (request.ref_text is None):
            raise RequestError(
                "ref_audio and ref_text (its transcript) go together; give both or neither.", param="ref_audio"
            )

    def prompts(self, request: SpeechRequest) -> list[list[int]]:
        """The prompt ids of each piece of the text (a `RequestError` for text the model cannot take)."""
        from qwen_omni.common.audio import read_audio
        from qwen_omni.omni.speech import split_sentences

        processor = self.engine.processor
        speaker = None if request.voice == DEFAULT_VOICE else request.voice
        voice = {}
        if request.ref_audio is not None:
            try:
                audio, rate = read_audio({"bytes": base64.b64decode(request.ref_audio, validate=True), "path": None})
                voice = {
                    "voice_prompt_ids": processor.encode_voice_prompt([audio], rate),
                    "voice_prompt_text": request.ref_text,
                }
            except Exception as error:  # noqa: BLE001 - base64, soundfile and the codec's checks raise several types
                raise RequestError(
                    f"ref_audio is not usable audio ({error}); send a base64-encoded audio file.", param="ref_audio"
                ) from None
        pieces = split_sentences(request.input, max_chars=self.max_piece_chars)
        try:  # the processor checks every prompt against the model's positions
            return processor(text=pieces, speaker=speaker, return_tensors=None, **voice)["input_ids"]
        except ValueError as error:
            raise RequestError(str(error), param="input") from None

    async def stream(self, request: SpeechRequest, jobs: list[GenerationJob]) -> AsyncIterator[bytes]:
        """The response body: audio bytes (or SSE events) in order, piece after piece."""
        from qwen_omni.omni.speech import CrossfadeJoiner

        rate = self.engine.processor.sampling_rate
        response_format = request.response_format
        joiner = CrossfadeJoiner(rate, self.crossfade_ms)
        whole: list[np.ndarray] = []
        samples = 0

        def encode(audio: np.ndarray) -> bytes:
            nonlocal samples
            samples += audio.size
            if response_format in STREAMED_SPEECH_FORMATS:
                return pcm16(audio)
            whole.append(audio)
            return b""

        def frame(data: bytes) -> bytes:
            if request.stream_format == "audio" or not data:
                return data
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
            return f"data: {json.dumps(event)}\n\n".encode()

        if response_format == "wav":
            yield frame(streaming_wav_header(rate))
        for job in jobs:
            joiner.new_segment()
            while True:
                item = await job.events.get()
                if item is FINISHED:
                    break
                if isinstance(item, BaseException):
                    raise item
                if data := encode(joiner.push(item)):
                    yield frame(data)
        if data := encode(joiner.finish()):
            yield frame(data)
        if response_format not in STREAMED_SPEECH_FORMATS:
            audio = np.concatenate(whole) if whole else np.zeros(0, dtype=np.float32)
            yield frame(encode_complete(audio, rate, response_format))
        logger.info(f"request {jobs[0].request_id}: {samples / rate:.2f} s of speech")
        if request.stream_format == "sse":
            input_tokens = sum(len(job.prompt_ids) for job in jobs)
            output_tokens = sum(len(job.generated_ids) for job in jobs)
            usage = {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            }
            yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()
