# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
The embedded engine: an Omni checkpoint in the server process, with requests batched continuously.

One worker thread owns the model. Requests become jobs (one per piece of text to speak, one per clip to transcribe)
in a waiting list. Speech jobs join the rows being decoded at the next step (`ContinuousSpeechBatch`: each joining
prompt is prefilled, then decodes with the others; a row that ends or is cancelled leaves at once); an idle engine
waits `batch_wait_s` for jobs that arrive together. Transcriptions, and speech whose settings continuous batching
does not serve, run as one `generate` call between two steps (jobs of equal task and settings together, left-padded).
SNAC decoding runs in processes of their own (`SpeechDecodeProcess`): a stream's new ids go to its process once they
complete a frame, and the chunks come back to the jobs' asyncio queues. A cancelled job (its client went away) leaves
at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import os
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

from .continuous_batching import ContinuousSpeechBatch, SpeechDecoding


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
    The `streamer=` of a batched speech `generate` (settings continuous batching does not serve): each step's ids go
    to the decoding process, one message for all rows. A row's speech ends at its first non-audio id (audio-end, or
    padding after a stop), or when generation ends.
    """

    def __init__(self, processor, jobs: list[GenerationJob], decoder):
        self.jobs = jobs
        self.layout = processor.token_layout
        self.decoder = decoder
        self.streams = [decoder.open(job) for job in jobs]
        self.finished = [False] * len(jobs)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call holds the prompts
            self._prompt_seen = True
            return
        step = []
        for row, token in enumerate(value.flatten().tolist()):
            if self.finished[row]:
                continue
            job = self.jobs[row]
            if job.cancelled:
                self.finished[row] = True
                self.decoder.close(self.streams[row])
                continue
            job.generated_ids.append(token)
            speech_ended = not (self.layout.audio_token_offset <= token < self.layout.vocab_end)
            self.finished[row] = speech_ended
            step.append((self.streams[row], [token], speech_ended))
        self.decoder.send(step)

    def end(self) -> None:
        step = [(stream, [], True) for stream, finished in zip(self.streams, self.finished) if not finished]
        self.finished = [True] * len(self.jobs)
        self.decoder.send(step)

    def abort(self) -> None:
        """Generation failed (the jobs get the error): forget the rows' streams."""
        for stream in self.streams:
            self.decoder.close(stream)


class TransformersEngine:
    """
    The Omni model in this process, shared by all requests (see the module docstring).

    Args:
        model_dir: the Omni checkpoint folder. device: torch device.
        max_batch_size: rows decoded together (the bound on waiting work is the server's admission, not here).
        batch_wait_s: how long an idle engine waits for more jobs to start with the first one.
        generate_kwargs: settings for every speech generation (e.g. `do_sample=False`, `max_duration`).
        chunk_frames: frames per streamed chunk. num_threads: torch CPU threads of the worker and of each decoding
            process (default: torch's). decode_processes: SNAC decoding processes (default: one per CPU core, at
            most 4; 1 on a GPU).
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
        decode_processes: int | None = None,
    ):
        self.model_dir = model_dir
        self.device = device
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.speech_generate_kwargs = dict(generate_kwargs or {})
        self.chunk_frames = chunk_frames
        self.num_threads = num_threads
        if decode_processes is None:  # the codec is most of speech's CPU time: one process per core
            decode_processes = 1 if device != "cpu" else max(1, min(4, len(os.sched_getaffinity(0))))
        self.decode_processes = decode_processes
        self.model = self.processor = self.decoder = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self._waiting: collections.deque[GenerationJob] = collections.deque()
        self._condition = threading.Condition()
        self._running: list[GenerationJob] = []  # the running batch's jobs (continuous or `generate`)
        self._stopping = False
        self._speech: ContinuousSpeechBatch | None = None
        self._decodings: dict[tuple, SpeechDecoding] = {}
        # counters (GET /health): prefills and `generate` calls, the most rows (and requests) in one decoding step
        # or call, the decoding steps of continuous batches, and the jobs that joined rows already being decoded
        self.batches_run = 0
        self.largest_batch = 0
        self.most_requests_in_a_step = 0
        self.decode_steps = 0
        self.joined_running = 0
        self._worker = threading.Thread(target=self._work, name="omni-engine", daemon=True)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Load the model and start the worker (in the background: `ready` is set once the model is loaded)."""
        self._worker.start()

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoProcessor

        from qwen_omni import register_auto_classes

        from .speech_decoder import SpeechDecodeProcess

        register_auto_classes()
        started = time.perf_counter()
        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        self.decoder = SpeechDecodeProcess(
            self.model_dir,
            self.device,
            self.chunk_frames,
            self.num_threads,
            FINISHED,
            processes=self.decode_processes,
            ids_per_frame=self.processor.token_layout.tokens_per_frame,
        )
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir).to(self.device).eval()
        self.processor.audio_tokenizer.to(self.device)  # the voice prompts' encoder
        self.decoder.start()
        logger.info(f"Loaded {self.model_dir} on {self.device} in {time.perf_counter() - started:.1f} s.")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel every job and stop the worker (the rows it decodes end at its next step) and the decoding process."""
        with self._condition:
            self._stopping = True
            for job in [*self._waiting, *self._running]:
                job.deliver(RuntimeError("the server is shutting down"))
                job.cancelled = True
            self._waiting.clear()
            self._condition.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)
        if self.decoder is not None:
            self.decoder.stop()

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
                "most_requests_in_a_step": self.most_requests_in_a_step,
                "decode_steps": self.decode_steps,
                "joined_running_batch": self.joined_running,
                "decoding_streams": self.decoder.open_streams if self.decoder is not None else 0,
                "streams_per_decoding_process": list(self.decoder.streams_per_process)
                if self.decoder is not None
                else [],
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
            if self.decoder is not None:
                self.decoder.stop()
            return
        self.ready.set()
        while (work := self._next_work()) is not None:
            joining, separate = work
            if separate:  # settings continuous batching does not serve: one `generate` between two steps
                self._run(separate)
            with torch.inference_mode():
                if joining:
                    self._join(joining)
                if self._speech is not None and len(self._speech):
                    self._step()

    def _decoding(self, job: GenerationJob) -> SpeechDecoding | None:
        """The continuous decoding of a speech job's settings (`None`: not a speech job, or settings it does not
        serve, logged once)."""
        if job.task != "speech":
            return None
        key = job.batch_key
        if key not in self._decodings:
            decoding = SpeechDecoding(self.model, job.generate_kwargs)
            if decoding.unsupported:
                logger.warning(
                    f"speech with {decoding.unsupported} is generated in batches by `generate` (requests that "
                    "arrive during a batch wait for the next one)"
                )
            self._decodings[key] = decoding
        decoding = self._decodings[key]
        return None if decoding.unsupported else decoding

    def _next_work(self) -> tuple[list[GenerationJob], list[GenerationJob]] | None:
        """The jobs that join the running speech rows now, and jobs for one `generate` call (either may be empty);
        `None` once the engine stops. An idle engine waits for jobs, then `batch_wait_s` for others to arrive."""
        with self._condition:
            idle = self._speech is None or not len(self._speech)
            if idle:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                deadline = time.monotonic() + self.batch_wait_s
                while len(self._waiting) < self.max_batch_size and (remaining := deadline - time.monotonic()) > 0:
                    self._condition.wait(remaining)
            if self._stopping:
                return None
            running_key = None if idle else self._speech.decoding
            joinable, separate = [], []
            for job in self._waiting:
                decoding = self._decoding(job)
                if decoding is not None and (running_key is None or decoding is running_key):
                    running_key = decoding
                    joinable.append(job)
                elif not separate or (job.batch_key == separate[0].batch_key and len(separate) < self.max_batch_size):
                    separate.append(job)
            # each free row goes to the request with the fewest rows (a new request before the later pieces of a
            # long one, which are needed only once its earlier pieces are spoken), then in order of arrival
            rows_of = collections.Counter(job.request_id for job in self._running)
            joining = []
            while joinable and len(joining) < self.max_batch_size - (0 if idle else len(self._speech)):
                job = min(joinable, key=lambda job: rows_of[job.request_id])
                joinable.remove(job)
                joining.append(job)
                rows_of[job.request_id] += 1
            for job in [*joining, *separate]:
                self._waiting.remove(job)
            return joining, separate

    def _join(self, jobs: list[GenerationJob]) -> None:
        decoding = self._decoding(jobs[0])
        if self._speech is None or self._speech.decoding is not decoding:
            self._speech = ContinuousSpeechBatch(self.model, self.processor, decoding, self.decoder)
        decoding_rows = len(self._speech)
        ids = ", ".join(sorted({job.request_id for job in jobs}))
        logger.info(f"speech: {len(jobs)} job(s) join {decoding_rows} decoding row(s) (requests {ids})")
        try:
            self._speech.add(jobs)
        except Exception as error:  # noqa: BLE001 - these requests get the error; the rows decoding go on
            logger.error(f"prefill of {len(jobs)} job(s) (requests {ids}) failed: {error!r}")
            for job in jobs:
                job.deliver(error)
        with self._condition:
            self.batches_run += 1
            if decoding_rows:
                self.joined_running += len(jobs)
            self._running = self._speech.jobs

    def _step(self) -> None:
        rows = len(self._speech)
        requests = {job.request_id for job in self._speech.jobs}
        try:
            self._speech.step()
        except Exception as error:  # noqa: BLE001 - the rows' requests get the error; the server goes on
            ids = ", ".join(sorted({job.request_id for job in self._speech.jobs}))
            logger.error(f"decoding step of {rows} row(s) (requests {ids}) failed: {error!r}")
            for job in self._speech.jobs:
                job.deliver(error)
                job.cancelled = True
            self._speech.batch = None
        with self._condition:
            self.decode_steps += 1
            self.largest_batch = max(self.largest_batch, rows)
            self.most_requests_in_a_step = max(self.most_requests_in_a_step, len(requests))
            self._running = self._speech.jobs

    def _run(self, jobs: list[GenerationJob]) -> None:
        """One `generate` call for jobs continuous batching does not serve (transcriptions, other settings)."""
        jobs = [job for job in jobs if not job.cancelled]
        if not jobs:
            return
        with self._condition:
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(jobs))
            self._running = [*jobs, *(self._speech.jobs if self._speech is not None else [])]
        ids = ", ".join(sorted({job.request_id for job in jobs}))
        logger.info(f"{jobs[0].task} batch of {len(jobs)} (requests {ids})")
        started = time.perf_counter()
        streamer = None
        try:
            inputs = self.processor.pad([job.prompt_ids for job in jobs], padding_side="left").to(self.model.device)
            criteria = StoppingCriteriaList([_CancelledRows(jobs)])
            with torch.inference_mode():
                if jobs[0].task == "speech":
                    streamer = BatchSpeechStreamer(self.processor, jobs, self.decoder)
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
                self._running = self._speech.jobs if self._speech is not None else []
        logger.info(f"batch of {len(jobs)} done in {time.perf_counter() - started:.2f} s")


def pcm16(audio: np.ndarray) -> bytes:
    """Float waveform -> 16-bit little-endian PCM bytes (as `qwen-omni speak` writes WAV files)."""
    return (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
