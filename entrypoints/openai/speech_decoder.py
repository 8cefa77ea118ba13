# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
SNAC decoding of the embedded engine's speech, in processes of their own (`--decode_processes`, one per core by
default).

Why a process: the model's decoding loop and the streamed SNAC decode are both made of many small torch operations,
each holding the GIL between kernels, so on two threads of one process they ran one after the other (measured at the
seed's shape: generation 0.75 s and the streamed decode of the same 24 frames 0.90 s, both on threads of one process
1.98 s). In processes of their own the decode runs beside the model on the other cores.

The engine sends the model's new ids once a step completes a stream's frame (or ends a stream), one message to each
process holding its rows' ids since the last message. A process keeps one `SNACStreamingDecoder` per stream (each
frame decoded once, the codec's layers keeping their state between frames) and decodes a chunk of every stream that
has one in one call (`SNACStreamingDecoder.push_rows`: the codec's weights are read once for all rows); when it falls
behind, it takes every waiting step at once, so rows whose frames were made at different steps are decoded together
too. With several processes, each new stream goes to the one with the fewest open streams: the codec, most of the
CPU time of speech, then runs on every core when many requests stream at once. A stream decoded alone gets the same
samples as in `OmniAudioStreamer`; decoded with others, float rounding may differ (the matrix kernels round a
product of more rows differently: at most one step of 16-bit PCM). The chunks go back, then the end of each stream;
a reader thread hands them to the jobs.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import threading
from typing import Any

from transformers.utils import logging


logger = logging.get_logger(__name__)

# messages from the process: (stream, kind, payload)
_AUDIO, _END, _ERROR = "audio", "end", "error"
_READY = "ready"


class _Stream:
    """One row's speech in the decoding process: its ids gathered into whole frames, decoded by its own
    `SNACStreamingDecoder` (or, for a codec that cannot be decoded layer by layer, an `OmniAudioStreamer`, which
    decodes overlapping windows)."""

    def __init__(self, processor, streaming: bool, on_chunk, chunk_frames: int):
        from qwen_omni.modeling_snac import OmniAudioStreamer, SNACStreamingDecoder

        self.layout = processor.token_layout
        self.decoder = SNACStreamingDecoder(processor) if streaming else None
        self.windowed = (
            None if streaming else OmniAudioStreamer(processor, on_chunk=on_chunk, chunk_frames=chunk_frames)
        )
        if self.windowed is not None:
            self.windowed.put(self._tensor([]))  # the prompt: not streamed
        self.frame: list[int] = []  # ids of the frame being built
        self.whole: list[int] = []  # ids of whole frames not decoded yet
        self.ended = False

    def add(self, ids: list[int], ended: bool) -> None:
        if self.windowed is not None:  # decodes (and sends) its windows as they are whole
            if ids:
                self.windowed.put(self._tensor(ids))
            self.ended |= ended
            return
        layout = self.layout
        for token in ids:
            if not layout.audio_token_offset <= token < layout.vocab_end:  # audio-end (or another stop id)
                self.ended = True
                break
            self.frame.append(token)
            if len(self.frame) == layout.tokens_per_frame:
                self.whole += self.frame
                self.frame = []
        self.ended |= ended

    def ready(self, least: int) -> bool:
        return len(self.whole) >= least or self.ended

    def take(self, least: int) -> tuple:
        """(the stream's decoder, ids, final) for one decoding call: the next `least` ids of whole frames, or once the
        stream has ended, what is left with `final` (as `OmniAudioStreamer` pushes them, so that a stream decoded
        alone gives the same samples however far the decoding lags)."""
        if len(self.whole) >= least:
            ids, self.whole = self.whole[:least], self.whole[least:]
            return self.decoder, self._tensor(ids), False
        if self.frame:
            logger.warning(f"Dropped {len(self.frame)} audio tokens of an incomplete frame at the end of the stream.")
            self.frame = []
        ids, self.whole = self.whole, []
        return self.decoder, self._tensor(ids), True

    @staticmethod
    def _tensor(ids: list[int]):
        import torch

        return torch.tensor(ids, dtype=torch.long)


def _decode_loop(model_dir: str, device: str, chunk_frames: int, num_threads: int | None, requests, results) -> None:
    """The decoding process. It takes every message waiting (the model's steps since its last call), then decodes
    the streams that have a chunk of `chunk_frames` whole frames, or ended, together (`_decode_ready`)."""
    import torch
    from transformers import AutoProcessor

    from qwen_omni import register_auto_classes
    from qwen_omni.modeling_snac import SNACStreamingDecoder

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        register_auto_classes()
        processor = AutoProcessor.from_pretrained(model_dir)
        processor.audio_tokenizer.to(device)
        try:
            SNACStreamingDecoder(processor)
            streaming = True
        except NotImplementedError as error:
            logger.warning(f"This codec cannot be decoded layer by layer ({error}); each stream is decoded alone.")
            streaming = False
    except BaseException as error:  # noqa: BLE001 - the engine reports it as its load error
        results.put((None, _ERROR, f"the SNAC decoding process could not load {model_dir}: {error!r}"))
        return
    results.put((None, _READY, None))
    streams: dict[int, _Stream] = {}
    least = chunk_frames * processor.token_layout.tokens_per_frame
    stopping = False
    while not stopping:
        messages = [requests.get()]
        try:
            while True:
                messages.append(requests.get_nowait())
        except queue.Empty:
            pass
        for message in messages:
            if message is None:
                stopping = True
                break
            kind, payload = message
            if kind == "close":
                streams.pop(payload, None)
                continue
            for stream, ids, ended in payload:  # one model step: every row's new ids
                try:
                    if stream not in streams:
                        streams[stream] = _Stream(
                            processor,
                            streaming,
                            lambda chunk, stream=stream: results.put((stream, _AUDIO, chunk)),
                            chunk_frames,
                        )
                    with torch.inference_mode():
                        streams[stream].add(ids, ended)
                except Exception as error:  # noqa: BLE001 - this stream's request gets the error; the others go on
                    streams.pop(stream, None)
                    results.put((stream, _ERROR, f"SNAC decoding failed: {error!r}"))
        if streaming:
            _decode_ready(streams, least, results)
        else:
            for stream in [stream for stream, state in streams.items() if state.ended]:
                try:
                    with torch.inference_mode():
                        streams.pop(stream).windowed.end()
                    results.put((stream, _END, None))
                except Exception as error:  # noqa: BLE001 - this stream's request gets the error
                    results.put((stream, _ERROR, f"SNAC decoding failed: {error!r}"))


def _decode_ready(streams: dict, least: int, results) -> None:
    """Decode, one chunk per stream and call, every stream with a whole chunk (or that ended), all in one call, until
    none is left with one; a stream that ended goes once its last samples are sent."""
    from qwen_omni.modeling_snac import SNACStreamingDecoder

    while ready := [stream for stream, state in streams.items() if state.ready(least)]:
        calls = [streams[stream].take(least) for stream in ready]
        try:
            chunks = SNACStreamingDecoder.push_rows(*map(list, zip(*calls)))
        except Exception as error:  # noqa: BLE001 - the requests decoded in this call get the error; others go on
            for stream in ready:
                del streams[stream]
                results.put((stream, _ERROR, f"SNAC decoding failed: {error!r}"))
            continue
        for stream, chunk, (_, _, final) in zip(ready, chunks, calls):
            if chunk.size:
                results.put((stream, _AUDIO, chunk))
            if final:
                del streams[stream]
                results.put((stream, _END, None))


class SpeechDecodeProcess:
    """
    The engine's side of the decoding processes: `open` a stream for a job, `send` each model step (every
    stream's new ids and whether its speech ended; gathered into frames), `close` a cancelled stream. Chunks reach `job.deliver`, then
    `FINISHED` (from `qwen_omni.entrypoints.openai.engine`), or a `RuntimeError` naming the decoding error.

    With several processes, a new stream goes to the one with the fewest open streams: the codec's work (most of the
    CPU time of speech, see `docs/serving.md`) then runs on as many cores as there are processes, each decoding its
    streams together.

    Args:
        model_dir: the checkpoint folder (its processor gives the codec). device: the codec's torch device.
        chunk_frames: frames per streamed chunk. num_threads: torch CPU threads of each process.
        finished: the sentinel delivered after a stream's last chunk. processes: how many decoding processes.
        ids_per_frame: the ids of one frame. A step's ids are gathered until one of them completes a stream's frame
            (what a decoding process decodes) or ends a stream, then sent, one message per process (with a message
            per step, py-spy found the model's thread in `Queue.put` in a fifth of its samples).
    """

    def __init__(
        self,
        model_dir: str,
        device: str,
        chunk_frames: int,
        num_threads: int | None,
        finished: Any,
        processes: int = 1,
        ids_per_frame: int = 1,
    ):
        if processes < 1 or ids_per_frame < 1:
            raise ValueError(f"processes and ids_per_frame must be at least 1, got {processes} and {ids_per_frame}")
        self.ids_per_frame = ids_per_frame
        self._gathered: list[tuple[int, list[int], bool]] = []  # entries of the steps not sent yet
        self._ids_given: dict[int, int] = {}  # stream -> ids sent or gathered so far
        self._finished = finished
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the server's threads
        self._requests = [context.Queue() for _ in range(processes)]
        self._results = context.Queue()
        self._processes = [
            context.Process(
                target=_decode_loop,
                args=(model_dir, device, chunk_frames, num_threads, requests, self._results),
                name=f"omni-snac-decode-{index}",
                daemon=True,
            )
            for index, requests in enumerate(self._requests)
        ]
        self._jobs: dict[int, Any] = {}
        self._owner: dict[int, int] = {}  # stream -> index of its process
        self.streams_per_process = [0] * processes  # streams each process was given
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stopping = False
        self.failure: str | None = None  # why a process is gone, if one died
        self._reader = threading.Thread(target=self._read, name="omni-snac-results", daemon=True)

    def start(self) -> None:
        """Start the processes and wait until each has its codec loaded (raises `RuntimeError` if one could not)."""
        for process in self._processes:
            process.start()
        for _ in self._processes:
            _, kind, payload = self._results.get()
            if kind != _READY:
                self.stop()
                raise RuntimeError(payload)
        self._reader.start()

    def open(self, job) -> int:
        if self.failure is not None:
            raise RuntimeError(self.failure)
        with self._lock:
            stream = next(self._ids)
            self._jobs[stream] = job
            load = [0] * len(self._processes)
            for owner in self._owner.values():
                load[owner] += 1
            self._owner[stream] = load.index(min(load))
            self.streams_per_process[self._owner[stream]] += 1
        return stream

    def send(self, step: list[tuple[int, list[int], bool]]) -> None:
        """One model step: `(stream, new ids, speech ended)` per row, sent with the steps gathered before it once one
        of its rows completes a frame or ends (one message to each process concerned, each stream's ids joined)."""
        self._gathered += step
        complete = False
        for stream, ids, ended in step:
            given = self._ids_given.get(stream, 0) + len(ids)
            self._ids_given[stream] = given
            complete |= ended or (bool(ids) and given % self.ids_per_frame == 0)
            if ended:
                del self._ids_given[stream]
        if complete:
            self._send_gathered()

    def _send_gathered(self) -> None:
        per_process: dict[int, dict[int, tuple[int, list[int], bool]]] = {}
        with self._lock:
            for stream, ids, ended in self._gathered:
                owner = self._owner.get(stream)
                if owner is None:
                    continue
                entries = per_process.setdefault(owner, {})
                _, joined, was_ended = entries.get(stream, (stream, [], False))
                entries[stream] = (stream, joined + ids, was_ended or ended)
        self._gathered = []
        for owner, entries in per_process.items():
            self._requests[owner].put(("step", list(entries.values())))

    def close(self, stream: int) -> None:
        """Forget a stream whose job was cancelled (its remaining audio is not decoded)."""
        self._send_gathered()  # its process gets the close after the steps it was sent
        self._ids_given.pop(stream, None)
        with self._lock:
            self._jobs.pop(stream, None)
            owner = self._owner.pop(stream, None)
        if owner is not None:
            self._requests[owner].put(("close", stream))

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._jobs)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for process, requests in zip(self._processes, self._requests):
            if process.is_alive():
                requests.put(None)
        for process in self._processes:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(timeout)
        if self._reader.is_alive():
            self._results.put(None)  # ends the reader
            self._reader.join(timeout)

    def _read(self) -> None:
        while True:
            try:
                message = self._results.get(timeout=1.0)
            except queue.Empty:
                dead = next((process for process in self._processes if not process.is_alive()), None)
                if dead is None or self._stopping:
                    continue
                self._fail(f"the SNAC decoding process {dead.name} died (exit code {dead.exitcode})")
                return
            if message is None:
                return
            stream, kind, payload = message
            with self._lock:
                if kind == _AUDIO:
                    job = self._jobs.get(stream)
                else:  # the stream's last message: its process has forgotten it
                    job = self._jobs.pop(stream, None)
                    self._owner.pop(stream, None)
            if job is None:  # closed meanwhile
                continue
            if kind == _AUDIO:
                job.deliver(payload)
            elif kind == _END:
                job.deliver(self._finished)
            else:
                logger.error(f"request {job.request_id}: {payload}")
                job.deliver(RuntimeError(payload))

    def _fail(self, reason: str) -> None:
        """Every open stream's request gets the error, and so does every later one (`open` raises)."""
        logger.error(reason)
        self.failure = reason
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
            self._owner.clear()
        for job in jobs:
            job.deliver(RuntimeError(reason))
