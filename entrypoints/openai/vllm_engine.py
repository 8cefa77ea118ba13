# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
`qwen-omni serve --engine vllm`: the same speech API on vLLM's `AsyncLLM` in this process (run the server from
`.venv-vllm`, see scripts/setup_vllm.sh). vLLM batches requests continuously; the audio-block constraint is its
logits processor (`vllm_omni.OmniAudioBlockLogitsProcessor`), so every streamed frame is valid by construction. Each
request's new ids go to its own `OmniAudioStreamer` (SNAC decoded incrementally, on one decoding thread), whose
chunks go to the job's queue, as with the embedded engine. A cancelled job's generator is closed, which aborts its
vLLM request.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers.utils import logging

from .engine import FINISHED, EngineNotReadyError, GenerationJob


logger = logging.get_logger(__name__)


class VLLMEngine:
    """
    The engine interface of [`TransformersEngine`] (`start`, `ready`, `processor`, `new_job`, `submit`, `cancel`,
    `stats`, `shutdown`) on vLLM.

    Args:
        model_dir: the Omni checkpoint folder. max_batch_size: vLLM's `max_num_seqs`.
        generate_kwargs: `do_sample` (False: greedy) and `max_duration` (seconds of speech per piece).
        chunk_frames: frames per streamed chunk (`OmniAudioStreamer`'s).
    """

    def __init__(
        self, model_dir: str, max_batch_size: int = 16, generate_kwargs: dict | None = None, chunk_frames: int = 1
    ):
        self.model_dir = model_dir
        self.chunk_frames = chunk_frames
        self.max_batch_size = max_batch_size
        self.speech_generate_kwargs = dict(generate_kwargs or {})
        self.processor = self.llm = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self._tasks: dict[GenerationJob, asyncio.Task] = {}
        self._decoding = ThreadPoolExecutor(1, thread_name_prefix="snac-decode")
        self.batches_run = self.largest_batch = 0

    def start(self) -> None:
        threading.Thread(target=self._load, name="vllm-load", daemon=True).start()

    def _load(self) -> None:
        try:
            from transformers import AutoProcessor, GenerationConfig
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            from qwen_omni import register_auto_classes

            from .vllm_omni import omni_llm_kwargs

            register_auto_classes()
            self.processor = AutoProcessor.from_pretrained(self.model_dir)
            self.generation_config = GenerationConfig.from_pretrained(self.model_dir)
            positions = self.processor.model_max_length
            self.llm = AsyncLLM.from_engine_args(
                AsyncEngineArgs(
                    **omni_llm_kwargs(self.model_dir),
                    dtype="float32",
                    max_num_seqs=self.max_batch_size,
                    max_model_len=positions,
                    seed=0,
                )
            )
        except BaseException as error:  # noqa: BLE001 - reported by /health and the log
            self.load_error = error
            logger.error(f"Loading {self.model_dir} in vLLM failed: {error!r}")
            return
        logger.info(f"Loaded {self.model_dir} in vLLM.")
        self.ready.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        for job, task in list(self._tasks.items()):
            job.cancelled = True
            task.get_loop().call_soon_threadsafe(task.cancel)
        if self.llm is not None:
            self.llm.shutdown()
        self._decoding.shutdown(wait=False)

    def new_job(
        self, task: str, prompt_ids: list[int], request_id: str | None = None, **generate_kwargs
    ) -> GenerationJob:
        return GenerationJob.new(task, prompt_ids, self.speech_generate_kwargs, request_id, **generate_kwargs)

    def submit(self, jobs: list[GenerationJob]) -> None:
        if not self.ready.is_set():
            raise EngineNotReadyError("the model is still loading; retry when GET /health answers 200")
        for job in jobs:
            self._tasks[job] = asyncio.ensure_future(self._run(job))
        self.largest_batch = max(self.largest_batch, len(self._tasks))

    def cancel(self, jobs: list[GenerationJob]) -> None:
        for job in jobs:
            job.cancelled = True
            task = self._tasks.pop(job, None)
            if task is not None:
                task.cancel()

    def stats(self) -> dict:
        return {
            "waiting_jobs": 0,
            "running_jobs": len(self._tasks),
            "batches_run": self.batches_run,
            "largest_batch": self.largest_batch,
        }

    def _sampling_params(self, job: GenerationJob):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        config, kwargs = self.generation_config, job.generate_kwargs
        max_tokens = config.max_new_tokens
        if job.task == "speech" and kwargs.get("max_duration") is not None:  # as OmniMaxDurationCriteria counts
            omni = self.processor
            samples_per_frame = omni.audio_tokenizer.config.samples_per_frame
            frames = max(1, math.floor(kwargs["max_duration"] * omni.sampling_rate / samples_per_frame))
            max_tokens = min(max_tokens, frames * omni.token_layout.tokens_per_frame)
        sampling = kwargs.get("do_sample", config.do_sample)
        stop = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        return SamplingParams(
            temperature=kwargs.get("temperature", config.temperature) if sampling else 0.0,
            top_p=(config.top_p or 1.0) if sampling else 1.0,
            repetition_penalty=config.repetition_penalty or 1.0,
            max_tokens=max_tokens,
            stop_token_ids=stop,
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA,
        )

    async def _run(self, job: GenerationJob) -> None:
        from vllm.inputs import TokensPrompt

        from qwen_omni.modeling_snac import OmniAudioStreamer

        loop = asyncio.get_running_loop()
        layout = self.processor.token_layout
        streamer = (
            OmniAudioStreamer(self.processor, on_chunk=job.deliver, chunk_frames=self.chunk_frames)
            if job.task == "speech"
            else None
        )
        if streamer is not None:
            streamer.put(torch.tensor(job.prompt_ids))  # the prompt: not streamed
        self.batches_run += 1
        try:
            stream = self.llm.generate(
                TokensPrompt(prompt_token_ids=job.prompt_ids),
                self._sampling_params(job),
                request_id=f"{job.request_id}-{uuid.uuid4().hex[:8]}",
            )
            async for output in stream:
                new_ids = list(output.outputs[0].token_ids)
                job.generated_ids += new_ids
                if streamer is not None and new_ids:
                    await loop.run_in_executor(self._decoding, streamer.put, torch.tensor(new_ids))
                speech_ended = any(not layout.audio_token_offset <= token < layout.vocab_end for token in new_ids)
                if streamer is not None and speech_ended:
                    break  # the speech ended (audio-end): the rest is not audio
            if streamer is not None:
                await loop.run_in_executor(self._decoding, streamer.end)
            else:
                text = self.processor.decode(job.prompt_ids + job.generated_ids, skip_special_tokens=True).strip()
                job.deliver(text)
            job.deliver(FINISHED)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the request gets the error; the server goes on
            logger.error(f"request {job.request_id} failed in vLLM: {error!r}")
            job.deliver(error)
        finally:
            self._tasks.pop(job, None)
