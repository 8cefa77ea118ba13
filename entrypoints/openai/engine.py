# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
The embedded engine: an Omni checkpoint in the server process, with requests batched together.

One worker thread owns the model. Requests become jobs (one per piece of text to speak, one per clip to transcribe)
in a waiting list; when the worker starts a `generate` call it takes every waiting job that shares the first one's
task and settings (up to `max_batch_size`, after waiting `batch_wait_s` for others to arrive), left-pads their
prompts into one batch, and runs transformers' `generate` with the Omni constraint and the fast audio head. Speech
streams row by row: each row has its own `OmniAudioStreamer`, whose chunks go to the job's asyncio queue as they are
decoded. A cancelled job (its client went away) is stopped at the next step by a stopping criterion and its row
decodes nothing more; a batch whose rows are all cancelled ends there.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.generation import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging


logger = logging.get_logger(__name__)

# the sentinel a job's queue gets after its last chunk
FINISHED = object()


class EngineNotReadyError(Exception):
    """The model is still loading (answered 503)."""


@dataclass(eq=False)
class GenerationJob:
    """
    One prompt to generate for. `task` is "speech" (chunks of float32 waveform are put on `events`, then `FINISHED`)
    or "transcription" (the transcript, then `FINISHED`); an exception put on `events` ends it with that error.
    Jobs with equal `batch_key` (task and generation settings) may share a batch.
    """

    task: str
    prompt_ids: list[int]
    generate_kwargs: dict
    request_id: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    finished: bool = False  # the worker delivered its last item
    generated_ids: list[int] = field(default_factory=list)

    @classmethod
    def new(
        cls, task: str, prompt_ids: list[int], speech_defaults: dict, request_id: str | None = None, **generate_kwargs
    ) -> GenerationJob:
        """A job of the running event loop; a speech job takes the engine's speech defaults under its own settings."""
        kwargs = {**speech_defaults, **generate_kwargs} if task == "speech" else generate_kwargs
        return cls(
            task=task,
            prompt_ids=list(prompt_ids),
            generate_kwargs=kwargs,
            request_id=request_id or uuid.uuid4().hex,
            loop=asyncio.get_running_loop(),
        )

    @property
    def batch_key(self) -> tuple:
        return (self.task, tuple(sorted(self.generate_kwargs.items())))

    def deliver(self, item: Any) -> None:
        """Hand an item to the request's event loop (called from the worker thread)."""
        if item is FINISHED or isinstance(item, BaseException):
            self.finished = True
        if self.cancelled:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone
            self.cancelled = True


class _CancelledRows(StoppingCriteria):
    """Stops the rows whose job was cancelled (evaluated at every step, with the other criteria)."""

    def __init__(self, jobs: list[GenerationJob]):
        self.jobs = jobs

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.tensor([job.cancelled for job in self.jobs], device=input_ids.device)


class BatchSpeechStreamer(BaseStreamer):
    """
    The `streamer=` of a batched speech `generate`: row `r`'s tokens go to its own `OmniAudioStreamer` (which decodes
    each frame once), whose chunks go to job `r`. A row's speech ends at its first non-audio id (audio-end, or padding
    after a stop), or when generation ends. SNAC decoding runs on a thread of its own, so that it overlaps the next
    decoding steps of the model (torch releases the GIL); `end` waits for it.
    """

    def __init__(self, processor, jobs: list[GenerationJob], chunk_frames: int = 1, num_threads: int | None = None):
        from qwen_omni.modeling_snac import OmniAudioStreamer

        self.jobs = jobs
        self.layout = processor.token_layout
        self.rows = [OmniAudioStreamer(processor, chunk_frames=chunk_frames, on_chunk=job.deliver) for job in jobs]
        self.finished = [False] * len(jobs)
        self._prompt_seen = False
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._num_threads = num_threads
        self._decoder = threading.Thread(target=self._decode, name="omni-snac-decode", daemon=True)
        self._decoder.start()

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call holds the prompts
            self._prompt_seen = True
            for row, streamer in enumerate(self.rows):
                streamer.put(value[row])
            return
        tokens = value.flatten().tolist()
        for row, token in enumerate(tokens):
            if self.finished[row]:
                continue
            job = self.jobs[row]
            if job.cancelled:
                self.finished[row] = True
                continue
            job.generated_ids.append(token)
            speech_ended = not (self.layout.audio_token_offset <= token < self.layout.vocab_end)
            self.finished[row] = speech_ended
            self._work.put((row, value[row : row + 1], speech_ended))

    def end(self) -> None:
        for row, finished in enumerate(self.finished):
            if not finished:
                self.finished[row] = True
                self._work.put((row, None, True))
        self._work.put(None)
        self._decoder.join()

    def abort(self) -> None:
        """Stop the decoding thread without finishing the rows (generation failed: the jobs get the error)."""
        if self._decoder.is_alive():
            self._work.put(None)

    def _decode(self) -> None:
        if self._num_threads is not None:
            torch.set_num_threads(self._num_threads)
        failed: Exception | None = None
        while (item := self._work.get()) is not None:
            row, tokens, speech_ended = item
            job = self.jobs[row]
            if failed is not None or job.cancelled:
                continue
            try:
                with torch.inference_mode():
                    if tokens is not None:
                        self.rows[row].put(tokens)
                    if speech_ended:
                        self.rows[row].end()
                        job.deliver(FINISHED)
            except Exception as error:  # noqa: BLE001 - every request of the batch gets the error
                logger.error(f"SNAC decoding failed: {error!r}")
                failed = error
                for other in self.jobs:
                    other.deliver(error)
                    other.cancelled = True  # the model stops these rows at its next step


class TransformersEngine:
    """
    The Omni model in this process, shared by all requests through dynamic batching (see the module docstring).

    Args:
        model_dir: the Omni checkpoint folder. device: torch device.
        max_batch_size: rows per `generate` call (the bound on waiting work is the server's admission, not here).
        batch_wait_s: how long a new batch waits for more jobs to join.
        generate_kwargs: settings for every speech `generate` call (e.g. `do_sample=False`, `max_duration`).
        chunk_frames: frames per streamed chunk. num_threads: torch CPU threads of the worker (default: torch's).
    """

    def __init__(
        self,
        model_dir: str,
        device: str = "cpu",
        max_batch_size: int = 16,
        batch_wait_s: float = 0.005,
        generate_kwargs: dict | None = None,
        chunk_frames: int = 1,
        num_threads: int | None = None,
    ):
        self.model_dir = model_dir
        self.device = device
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.speech_generate_kwargs = dict(generate_kwargs or {})
        self.chunk_frames = chunk_frames
        self.num_threads = num_threads
        self.model = self.processor = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self._waiting: collections.deque[GenerationJob] = collections.deque()
        self._condition = threading.Condition()
        self._running: list[GenerationJob] = []
        self._stopping = False
        self.batches_run = 0
        self.largest_batch = 0
        self._worker = threading.Thread(target=self._work, name="omni-engine", daemon=True)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Load the model and start the worker (in the background: `ready` is set once the model is loaded)."""
        self._worker.start()

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoProcessor

        from qwen_omni import register_auto_classes

        register_auto_classes()
        started = time.perf_counter()
        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir).to(self.device).eval()
        self.processor.audio_tokenizer.to(self.device)
        logger.info(f"Loaded {self.model_dir} on {self.device} in {time.perf_counter() - started:.1f} s.")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel every job and stop the worker (the batch it runs ends at its next step)."""
        with self._condition:
            self._stopping = True
            for job in [*self._waiting, *self._running]:
                job.deliver(RuntimeError("the server is shutting down"))
                job.cancelled = True
            self._waiting.clear()
            self._condition.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)

    # ------------------------------------------------------------------ requests
    @property
    def model_max_length(self) -> int | None:
        return getattr(self.processor, "model_max_length", None)

    def new_job(
        self, task: str, prompt_ids: list[int], request_id: str | None = None, **generate_kwargs
    ) -> GenerationJob:
        return GenerationJob.new(task, prompt_ids, self.speech_generate_kwargs, request_id, **generate_kwargs)

    def submit(self, jobs: list[GenerationJob]) -> None:
        """Queue jobs: `EngineNotReadyError` while loading or shutting down."""
        if not self.ready.is_set():
            raise EngineNotReadyError("the model is still loading; retry when GET /health answers 200")
        with self._condition:
            if self._stopping:
                raise EngineNotReadyError("the server is shutting down")
            self._waiting.extend(jobs)
            self._condition.notify_all()

    def cancel(self, jobs: list[GenerationJob]) -> None:
        """Stop jobs (a client went away): waiting ones leave the list, running ones stop at the next step."""
        with self._condition:
            for job in jobs:
                job.cancelled = True
                try:
                    self._waiting.remove(job)
                except ValueError:
                    pass

    def stats(self) -> dict:
        with self._condition:
            return {
                "waiting_jobs": len(self._waiting),
                "running_jobs": sum(not job.cancelled for job in self._running),
                "batches_run": self.batches_run,
                "largest_batch": self.largest_batch,
            }

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        if self.num_threads is not None:  # the OpenMP thread count is per calling thread: set it in the worker
            torch.set_num_threads(self.num_threads)
        try:
            self._load()
        except BaseException as error:  # noqa: BLE001 - reported by /health and the log, the server stays up
            self.load_error = error
            logger.error(f"Loading {self.model_dir} failed: {error!r}")
            return
        self.ready.set()
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            self._run(jobs)

    def _next_batch(self) -> list[GenerationJob] | None:
        with self._condition:
            while not self._waiting and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            # give requests that arrive together a moment to join this batch
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._waiting) < self.max_batch_size and (remaining := deadline - time.monotonic()) > 0:
                self._condition.wait(remaining)
            if self._stopping or not self._waiting:
                return None if self._stopping else []
            key = self._waiting[0].batch_key
            jobs = [job for job in self._waiting if job.batch_key == key][: self.max_batch_size]
            for job in jobs:
                self._waiting.remove(job)
            self._running = jobs
            return jobs

    def _run(self, jobs: list[GenerationJob]) -> None:
        jobs = [job for job in jobs if not job.cancelled]
        if not jobs:
            return
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        ids = ", ".join(sorted({job.request_id for job in jobs}))
        logger.info(f"{jobs[0].task} batch of {len(jobs)} (requests {ids})")
        started = time.perf_counter()
        streamer = None
        try:
            inputs = self.processor.pad([job.prompt_ids for job in jobs], padding_side="left").to(self.model.device)
            criteria = StoppingCriteriaList([_CancelledRows(jobs)])
            with torch.inference_mode():
                if jobs[0].task == "speech":
                    streamer = BatchSpeechStreamer(
                        self.processor, jobs, chunk_frames=self.chunk_frames, num_threads=self.num_threads
                    )
                    self.model.generate(
                        **inputs, streamer=streamer, stopping_criteria=criteria, **jobs[0].generate_kwargs
                    )
                else:
                    outputs = self.model.generate(**inputs, stopping_criteria=criteria, **jobs[0].generate_kwargs)
                    generated = outputs[:, inputs["input_ids"].shape[1] :]
                    for job, sequence, row in zip(jobs, outputs, generated):
                        job.generated_ids = row.tolist()
                        job.deliver(self.processor.decode(sequence, skip_special_tokens=True).strip())
                        job.deliver(FINISHED)
        except Exception as error:  # noqa: BLE001 - the batch's requests get the error; the server goes on
            logger.error(f"batch of {len(jobs)} (requests {ids}) failed: {error!r}")
            if streamer is not None:
                streamer.abort()
            for job in jobs:
                job.deliver(error)
        finally:
            with self._condition:
                self._running = []
        logger.info(f"batch of {len(jobs)} done in {time.perf_counter() - started:.2f} s")


def pcm16(audio: np.ndarray) -> bytes:
    """Float waveform -> 16-bit little-endian PCM bytes (as `qwen-omni speak` writes WAV files)."""
    return (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
