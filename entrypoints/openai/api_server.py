# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
`qwen-omni serve`: an OpenAI-compatible speech API (FastAPI + uvicorn, after vLLM's
`vllm/entrypoints/openai/api_server.py`).

    qwen-omni serve --model DIR [--host 127.0.0.1] [--port 8000] [--engine transformers|vllm] [--voices tara leo]

Endpoints: `POST /v1/audio/speech`, `POST /v1/audio/transcriptions`, `GET /v1/models`, `GET /health` (503 until the
model is loaded, then 200 with the engine's counters). Errors are OpenAI's `{"error": {...}}` bodies. Every request
gets an id (the client's `X-Request-Id`, or a new one), returned in `X-Request-Id` and written in the log lines of its
work. With `--api_key` (or `QWEN_OMNI_API_KEY`) every endpoint but `/health` needs `Authorization: Bearer KEY`.
Requests beyond `--max_concurrency` wait, up to `--max_queue` of them; beyond that they are answered 429. The server
writes no file: uploads are read into memory (at most `--max_upload_bytes`).
"""

import argparse
import asyncio
import contextlib
import hmac
import json
import logging as std_logging
import os
import time
import uuid

from transformers.utils import logging


logger = logging.get_logger(__name__)

API_KEY_ENV = "QWEN_OMNI_API_KEY"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` options (both `--max_concurrency` and `--max-concurrency` spellings)."""

    def option(name: str, **kwargs) -> None:
        parser.add_argument(f"--{name}", *([f"--{name.replace('_', '-')}"] if "_" in name else []), **kwargs)

    option("model", required=True, help="Omni checkpoint folder")
    option("host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    option("port", type=int, default=8000)
    option(
        "engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help="transformers: the model in this process, batched; vllm: vLLM's engine (in .venv-vllm)",
    )
    option("served_model_name", help="the `model` name clients send (defaults to the folder's name)")
    option("voices", nargs="*", default=[], help="speaker names the checkpoint knows ('default' is always there)")
    option("device", default="cpu")
    option("num_threads", type=int, help="torch CPU threads (default: torch's; 1 on a shared machine)")
    option(
        "decode_processes",
        type=int,
        help="SNAC decoding processes (default: one per CPU core, at most 4; 1 on a GPU)",
    )
    option(
        "chunk_frames",
        type=int,
        default=1,
        help="SNAC frames decoded per streamed chunk: 1 gives the first audio soonest; 2 makes a single stream "
        "~1.2x faster on CPU, its first audio one frame (85 ms of speech) later",
    )
    option("greedy", action="store_true", help="greedy speech instead of the checkpoint's sampling defaults")
    option("max_duration", type=float, default=30.0, help="seconds of speech per piece of text before cutting")
    option("max_concurrency", type=int, default=16, help="requests generated together (rows of a batch)")
    option("max_queue", type=int, default=64, help="requests that may wait beyond --max_concurrency (then 429)")
    option("batch_wait_ms", type=float, default=5.0, help="how long a new batch waits for requests to join it")
    option("max_input_chars", type=int, default=4096, help="longest speech `input` accepted")
    option(
        "max_piece_chars",
        type=int,
        default=200,
        help="longest piece of text generated at once (the text is split at sentence ends)",
    )
    option("max_upload_bytes", type=int, default=25 * 1024 * 1024, help="largest transcription upload (413 beyond)")
    option("api_key", help=f"bearer token every endpoint but /health requires (or set {API_KEY_ENV})")
    option("shutdown_timeout", type=float, default=10.0, help="seconds in-flight requests get on SIGTERM")


def build_engine(args: argparse.Namespace):
    generate_kwargs = {"max_duration": args.max_duration}
    if args.greedy:
        generate_kwargs["do_sample"] = False
    if args.engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(
            args.model,
            max_batch_size=args.max_concurrency,
            generate_kwargs=generate_kwargs,
            chunk_frames=args.chunk_frames,
        )
    from .engine import TransformersEngine

    return TransformersEngine(
        args.model,
        device=args.device,
        max_batch_size=args.max_concurrency,
        batch_wait_s=args.batch_wait_ms / 1000,
        generate_kwargs=generate_kwargs,
        num_threads=args.num_threads,
        decode_processes=args.decode_processes,
        chunk_frames=args.chunk_frames,
    )


class Admission:
    """Requests being served or waiting: at most `limit`; `acquire` answers False beyond."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0

    def acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


class RequestIdAndAuthMiddleware:
    """
    Gives every HTTP request an id (the client's `X-Request-Id` or a new one: `request.state.request_id`, the
    `X-Request-Id` response header, the log), logs its status and time to the first byte, and with an API key
    answers 401 (`unauthorized()`) to requests without `Authorization: Bearer KEY`, except `GET /health`. A plain
    ASGI middleware: it leaves `receive` alone, so a streamed response still sees its client disconnect.
    """

    def __init__(self, app, api_key: str | None, unauthorized):
        self.app, self.api_key, self.unauthorized = app, api_key, unauthorized

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        where = f"{scope['method']} {scope['path']}"

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
                logger.info(
                    f"request {request_id}: {where} {message['status']} "
                    f"({time.perf_counter() - started:.3f} s to the response headers)"
                )
            await send(message)

        if self.api_key and scope["path"] != "/health":
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return await self.unauthorized()(scope, receive, send_with_id)
        await self.app(scope, receive, send_with_id)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def error_response(
    status: int, message: str, param: str | None = None, code: str | int | None = None, headers: dict | None = None
):
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""
    from fastapi.responses import JSONResponse

    from .protocol import ErrorInfo, ErrorResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=code or status))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class _Serving:
    """What the routes share: the options, the engine, the admission bound and the speech / transcription services,
    with the checks every request goes through."""

    def __init__(self, args: argparse.Namespace, engine):
        from .serving_speech import SpeechService
        from .serving_transcription import TranscriptionService

        self.args, self.engine = args, engine
        self.served_name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
        self.admission = Admission(args.max_concurrency + args.max_queue)
        self.speech = SpeechService(
            engine, voices=args.voices, max_input_chars=args.max_input_chars, max_piece_chars=args.max_piece_chars
        )
        self.transcription = TranscriptionService(engine, max_upload_bytes=args.max_upload_bytes)

    def check_model(self, model: str) -> None:
        from .serving_speech import RequestError

        if model != self.served_name:
            raise RequestError(
                f"model {model!r} does not exist here; this server serves {self.served_name!r}.",
                status=404,
                param="model",
                code="model_not_found",
            )

    def check_ready(self) -> None:
        from .serving_speech import RequestError

        if self.engine.load_error is not None:
            raise RequestError(f"the model failed to load: {self.engine.load_error!r}", status=503)
        if not self.engine.ready.is_set():
            raise RequestError("the model is still loading; retry when GET /health answers 200.", status=503)

    def admit(self) -> None:
        from .serving_speech import RequestError

        if not self.admission.acquire():
            raise RequestError(
                f"the server is at its bound of {self.admission.limit} requests (--max_concurrency "
                f"{self.args.max_concurrency} + --max_queue {self.args.max_queue}); retry later.",
                status=429,
                code="rate_limit_exceeded",
            )

    def submit(self, task: str, prompts: list[list[int]], request_id: str, **settings) -> list:
        """Admitted jobs on the engine (a 503 `RequestError` while it loads or stops; the admission is released)."""
        from .engine import EngineNotReadyError
        from .serving_speech import RequestError

        try:
            jobs = [self.engine.new_job(task, ids, request_id=request_id, **settings) for ids in prompts]
            self.engine.submit(jobs)
        except EngineNotReadyError as exc:
            self.admission.release()
            raise RequestError(str(exc), status=503) from None
        return jobs

    async def cancel_on_disconnect(self, request, jobs) -> None:
        """Cancel the jobs once the client has gone (polls the connection; for responses sent whole: a streamed
        response notices the disconnect itself and closes its body, whose `finally` cancels the jobs)."""
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)
        logger.info(f"request {request.state.request_id}: the client disconnected; its generation is stopped")
        self.engine.cancel(jobs)


def _add_error_handlers(app) -> None:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from .serving_speech import RequestError

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        logger.info(f"request {request.state.request_id}: {exc.status} {exc.message}")
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # Starlette's own (404, 405, a form it cannot parse)
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'][1:]) or 'body'}: {item['msg']}" for item in exc.errors()
        )
        return error_response(400, f"invalid request: {problems}")


def _add_info_routes(app, serving: _Serving) -> None:
    from fastapi.responses import JSONResponse

    from .protocol import ModelCard, ModelList

    engine = serving.engine

    @app.get("/health")
    async def health():
        if engine.load_error is not None:
            return JSONResponse({"status": "failed", "error": repr(engine.load_error)}, status_code=503)
        if not engine.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {
            "status": "ready",
            "active_requests": serving.admission.active,
            "rss_bytes": _rss_bytes(),
            **engine.stats(),
        }

    @app.get("/v1/models")
    async def models():
        return ModelList(data=[ModelCard(id=serving.served_name, root=os.path.abspath(serving.args.model))])


def _add_speech_route(app, serving: _Serving) -> None:
    from fastapi import Request
    from fastapi.responses import StreamingResponse

    from .protocol import SpeechRequest
    from .serving_speech import MEDIA_TYPES

    @app.post("/v1/audio/speech")
    async def create_speech(body: SpeechRequest, request: Request):
        serving.check_model(body.model)
        serving.speech.check(body)
        serving.check_ready()
        prompts = await asyncio.get_running_loop().run_in_executor(None, serving.speech.prompts, body)
        serving.admit()
        request_id = request.state.request_id
        jobs = serving.submit("speech", prompts, request_id)
        logger.info(f"request {request_id}: speech, {len(body.input)} characters in {len(jobs)} piece(s)")

        async def body_stream():  # closed by Starlette when the client disconnects: `finally` stops the generation
            try:
                async for data in serving.speech.stream(body, jobs):
                    yield data
            except Exception as exc:  # noqa: BLE001 - the status is sent; the stream ends and the log says why
                logger.error(f"request {request_id}: speech failed mid-stream: {exc!r}")
                if body.stream_format == "sse":
                    yield f"data: {json.dumps({'type': 'error', 'error': {'message': str(exc)}})}\n\n".encode()
            finally:
                serving.engine.cancel(jobs)
                serving.admission.release()
                if not all(job.finished for job in jobs):
                    logger.info(f"request {request_id}: the stream ended early; its generation is stopped")

        media_type = "text/event-stream" if body.stream_format == "sse" else MEDIA_TYPES[body.response_format]
        return StreamingResponse(body_stream(), media_type=media_type)


def _add_transcription_route(app, serving: _Serving) -> None:
    from fastapi import Request
    from fastapi.responses import PlainTextResponse
    from starlette.exceptions import HTTPException

    from .engine import FINISHED
    from .protocol import TranscriptionResponse, TranscriptionSegment, TranscriptionVerboseResponse
    from .serving_speech import RequestError

    args, transcription = serving.args, serving.transcription

    @app.post("/v1/audio/transcriptions")
    async def create_transcription(request: Request):
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise RequestError(f"send multipart/form-data (got {content_type or 'no content type'!r}).")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > args.max_upload_bytes + 1024 * 1024:
            raise RequestError(
                f"the request body is {int(length)} bytes, beyond this server's upload limit of "
                f"{args.max_upload_bytes} bytes (--max_upload_bytes); send a shorter or compressed clip.",
                status=413,
                param="file",
                code="request_too_large",
            )
        try:
            form = await request.form(max_files=1, max_fields=16)
        except HTTPException as exc:  # Starlette's multipart parser refused the body
            raise RequestError(f"malformed multipart body: {exc.detail}") from None
        try:
            model, upload, response_format, temperature = transcription.check_form(form)
            serving.check_model(model)
            data = await transcription.read_upload(upload)
            serving.check_ready()
            prompt_ids, duration = await asyncio.get_running_loop().run_in_executor(
                None, transcription.prompt, data, upload.filename
            )
        finally:
            await form.close()
        serving.admit()
        request_id = request.state.request_id
        settings = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature}
        (job,) = serving.submit("transcription", [prompt_ids], request_id, **settings)
        watcher = asyncio.create_task(serving.cancel_on_disconnect(request, [job]))
        try:
            item = await job.events.get()
            if isinstance(item, BaseException):
                raise item
            text = item
            assert await job.events.get() is FINISHED
        finally:
            watcher.cancel()
            serving.engine.cancel([job])
            serving.admission.release()
        logger.info(f"request {request_id}: transcribed {duration:.2f} s of audio")
        if response_format == "text":
            return PlainTextResponse(text)
        if response_format == "verbose_json":
            segment = TranscriptionSegment(
                id=0, start=0.0, end=duration, text=text, tokens=job.generated_ids, temperature=temperature
            )
            return TranscriptionVerboseResponse(duration=duration, text=text, segments=[segment])
        return TranscriptionResponse(text=text)


def build_app(args: argparse.Namespace, engine):
    """The FastAPI application: error handlers, the request-id / API-key middleware, and the routes."""
    from fastapi import FastAPI

    serving = _Serving(args, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)

    app = FastAPI(title="qwen-omni", lifespan=lifespan)
    _add_error_handlers(app)
    app.add_middleware(
        RequestIdAndAuthMiddleware,
        api_key=args.api_key or os.environ.get(API_KEY_ENV),
        unauthorized=lambda: error_response(
            401, "missing or wrong API key: send `Authorization: Bearer KEY`.", code="invalid_api_key"
        ),
    )
    _add_info_routes(app, serving)
    _add_speech_route(app, serving)
    _add_transcription_route(app, serving)
    app.state.engine = engine
    app.state.admission = serving.admission
    return app


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT / SIGTERM (in-flight requests get `--shutdown_timeout` seconds)."""
    import uvicorn

    # this package's log lines (request ids, batches) at INFO; transformers' own stay at their level
    handler = std_logging.StreamHandler()
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = std_logging.getLogger("qwen_omni")
    package_logger.setLevel(std_logging.INFO)
    package_logger.addHandler(handler)
    if not os.path.isdir(args.model):
        raise ValueError(f"--model {args.model}: no such folder (pass an Omni checkpoint folder).")
    for name in ("max_concurrency", "max_input_chars", "max_piece_chars", "max_upload_bytes", "chunk_frames"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.max_queue < 0:
        raise ValueError(f"--max_queue must be >= 0, got {args.max_queue}.")
    if args.decode_processes is not None:
        if args.decode_processes < 1:
            raise ValueError(f"--decode_processes must be >= 1, got {args.decode_processes}.")
        if args.engine != "transformers":
            raise ValueError(
                "--decode_processes sets the embedded engine's SNAC decoding processes; the vllm engine decodes on "
                "its own thread: drop it, or use --engine transformers."
            )
    app = build_app(args, build_engine(args))
    logger.info(f"serving {args.model} on http://{args.host}:{args.port} ({args.engine} engine)")
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.shutdown_timeout, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qwen-omni serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_serve_arguments(parser)
    try:
        return serve(parser.parse_args(argv))
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    raise SystemExit(main())
