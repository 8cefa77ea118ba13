# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
SNAC decoding of the embedded engine's speech, in a process of its own.

Why a process: the model's decoding loop and the streamed SNAC decode are both made of many small torch operations,
each holding the GIL between kernels, so on two threads of one process they ran one after the other (measured at the
seed's shape: generation 0.75 s and the streamed decode of the same 24 frames 0.90 s, both on threads of one process
1.98 s). In a process of its own the decode runs beside the model on the second core.

The engine sends, once per model step, one message holding every streaming row's new ids; the process keeps one
[`OmniAudioStreamer`] per stream (each frame decoded once, the codec's layers keeping their state between frames) and
sends each chunk back, then the end of the stream. A reader thread hands them to the jobs.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from typing import Any

from transformers.utils import logging


logger = logging.get_logger(__name__)

# messages from the process: (stream, kind, payload)
_AUDIO, _END, _ERROR = "audio", "end", "error"
_READY = "ready"


def _decode_loop(model_dir: str, device: str, chunk_frames: int, num_threads: int | None, requests, results) -> None:
    """The decoding process: streams open on their first ids, end on `ended`, and are dropped on `close`."""
    import torch
    from transformers import AutoProcessor

    from qwen_omni import register_auto_classes
    from qwen_omni.modeling_snac import OmniAudioStreamer

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        register_auto_classes()
        processor = AutoProcessor.from_pretrained(model_dir)
        processor.audio_tokenizer.to(device)
    except BaseException as error:  # noqa: BLE001 - the engine reports it as its load error
        results.put((None, _ERROR, f"the SNAC decoding process could not load {model_dir}: {error!r}"))
        return
    results.put((None, _READY, None))
    streams: dict[int, OmniAudioStreamer] = {}
    empty = torch.zeros(0, dtype=torch.long)
    while (message := requests.get()) is not None:
        kind, payload = message
        if kind == "close":
            streams.pop(payload, None)
            continue
        for stream, ids, ended in payload:  # one model step: every row's new ids
            try:
                streamer = streams.get(stream)
                if streamer is None:
                    streamer = OmniAudioStreamer(
                        processor,
                        chunk_frames=chunk_frames,
                        on_chunk=lambda chunk, stream=stream: results.put((stream, _AUDIO, chunk)),
                    )
                    streamer.put(empty)  # the prompt: not streamed
                    streams[stream] = streamer
                with torch.inference_mode():
                    if ids:
                        streamer.put(torch.tensor(ids, dtype=torch.long))
                    if ended:
                        streamer.end()
                if ended:
                    del streams[stream]
                    results.put((stream, _END, None))
            except Exception as error:  # noqa: BLE001 - this stream's request gets the error; the others go on
                streams.pop(stream, None)
                results.put((stream, _ERROR, f"SNAC decoding failed: {error!r}"))


class SpeechDecodeProcess:
    """
    The engine's side of the decoding process: `open` a stream for a job, `send` one message per model step with each
    stream's new ids (and whether its speech ended), `close` a cancelled stream. Chunks reach `job.deliver`, then
    `FINISHED` (from `qwen_omni.entrypoints.openai.engine`), or a `RuntimeError` naming the decoding error.

    Args:
        model_dir: the checkpoint folder (its processor gives the codec). device: the codec's torch device.
        chunk_frames: frames per streamed chunk. num_threads: torch CPU threads of the process.
        finished: the sentinel delivered after a stream's last chunk.
    """

    def __init__(self, model_dir: str, device: str, chunk_frames: int, num_threads: int | None, finished: Any):
        self._finished = finished
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the server's threads
        self._requests = context.Queue()
        self._results = context.Queue()
        self._process = context.Process(
            target=_decode_loop,
            args=(model_dir, device, chunk_frames, num_threads, self._requests, self._results),
            name="omni-snac-decode",
            daemon=True,
        )
        self._jobs: dict[int, Any] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="omni-snac-results", daemon=True)

    def start(self) -> None:
        """Start the process and wait until its codec is loaded (raises `RuntimeError` if it could not be)."""
        self._process.start()
        _, kind, payload = self._results.get()
        if kind != _READY:
            self._process.join(10)
            raise RuntimeError(payload)
        self._reader.start()

    def open(self, job) -> int:
        with self._lock:
            stream = next(self._ids)
            self._jobs[stream] = job
        return stream

    def send(self, step: list[tuple[int, list[int], bool]]) -> None:
        """One model step: `(stream, new ids, speech ended)` per row."""
        if step:
            self._requests.put(("step", step))

    def close(self, stream: int) -> None:
        """Forget a stream whose job was cancelled (its remaining audio is not decoded)."""
        with self._lock:
            if self._jobs.pop(stream, None) is None:
                return
        self._requests.put(("close", stream))

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._jobs)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._process.is_alive():
            return
        self._requests.put(None)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        self._results.put(None)  # ends the reader
        self._reader.join(timeout)

    def _read(self) -> None:
        while (message := self._results.get()) is not None:
            stream, kind, payload = message
            with self._lock:
                job = self._jobs.get(stream) if kind == _AUDIO else self._jobs.pop(stream, None)
            if job is None:  # closed meanwhile
                continue
            if kind == _AUDIO:
                job.deliver(payload)
            elif kind == _END:
                job.deliver(self._finished)
            else:
                logger.error(f"request {job.request_id}: {payload}")
                job.deliver(RuntimeError(payload))
