"""`qwen-omni serve`: the server runs as a real process on 127.0.0.1 and is driven by the official `openai` client
and by plain HTTP (httpx) for SSE and the fault cases."""

import base64
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch


httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

API_KEY = "test-key"
MAX_DURATION = 0.6  # seconds of speech per piece: 7 frames, short generations
MAX_INPUT_CHARS = 300
MAX_UPLOAD_BYTES = 200_000
TEXTS = ["hello there, how are you today?", "the quick brown fox.", "speech and text.", "a small model."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m qwen_omni.cli serve ...` in its own working folder, HF_HOME and TMPDIR under `root`."""

    def __init__(
        self,
        model_dir,
        root: Path,
        *options: str,
        env: dict | None = None,
        python: str = sys.executable,
        ready_timeout: float = 300,
        tmp_dir: Path | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cwd = root / "cwd"
        for folder in ("cwd", "tmp", "hf"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.log_path = root / "server.log"
        command = [
            python,
            "-m",
            "qwen_omni.entrypoints.cli",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(self.port),
            "--num_threads",
            "1",
            *options,
        ]
        tmp_dir = tmp_dir or root / "tmp"
        environment = {**os.environ, "HF_HOME": str(root / "hf"), "TMPDIR": str(tmp_dir), **(env or {})}
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=self.cwd, env=environment, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            self.health_answers = self._wait_ready(ready_timeout)
        except BaseException:  # no server left behind when it never became ready
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> list[int]:
        answers = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.log_text()[-3000:]}")
            try:
                answer = httpx.get(f"{self.url}/health", timeout=5)
                answers.append(answer.status_code)
                if answer.status_code == 200:
                    return answers
                if answer.json().get("status") == "failed":  # the model will never load: say why at once
                    raise AssertionError(f"the model failed to load: {answer.json()}\n{self.log_text()[-3000:]}")
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the server was not ready in {timeout} s:\n{self.log_text()[-3000:]}")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


def snapshot(folder: Path) -> dict:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def server(omni_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    before = snapshot(Path(omni_dir))
    server = Server(
        omni_dir,
        root,
        "--greedy",
        "--max_duration",
        str(MAX_DURATION),
        "--voices",
        "tara",
        "leo",
        "--max_concurrency",
        "4",
        "--max_queue",
        "2",
        "--batch_wait_ms",
        "300",
        "--max_input_chars",
        str(MAX_INPUT_CHARS),
        "--max_piece_chars",
        "40",
        "--max_upload_bytes",
        str(MAX_UPLOAD_BYTES),
        "--api_key",
        API_KEY,
        "--decode_processes",
        "2",
    )
    server.model_name = Path(omni_dir).name
    yield server
    # uvicorn shuts down gracefully, then re-raises SIGTERM to itself (the conventional exit status of a process
    # stopped by a signal)
    assert server.stop() in (0, -signal.SIGTERM), server.log_text()[-3000:]
    assert "Finished server process" in server.log_text()
    # the server wrote nothing in its working folder or the checkpoint
    assert list(server.cwd.iterdir()) == []
    assert snapshot(Path(omni_dir)) == before


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(omni_dir):
    """The checkpoint in this process: what one-at-a-time greedy `generate` says."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    import qwen_omni  # noqa: F401

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(omni_dir)
    model = AutoModelForCausalLM.from_pretrained(omni_dir).eval()
    return model, processor


def reference_speech(reference, text: str, speaker: str | None = None) -> np.ndarray:
    model, processor = reference
    inputs = processor(text=text, speaker=speaker)
    with torch.inference_mode():
        sequence = model.generate(**inputs, do_sample=False, max_duration=MAX_DURATION)[0]
    return processor.decode_audio(sequence[inputs["input_ids"].shape[1] :])


def pcm_to_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


@pytest.fixture(scope="module")
def speak(client, server):
    """Text to speech through the openai client's streaming response: the body's bytes (pcm by default)."""

    def speak(text: str, **kwargs) -> bytes:
        kwargs = {"model": server.model_name, "voice": "default", "response_format": "pcm", **kwargs}
        with client.audio.speech.with_streaming_response.create(input=text, **kwargs) as response:
            return response.read()

    return speak


def post_speech(server, headers=None, **body) -> httpx.Response:
    body = {"model": server.model_name, "input": "hello.", "voice": "default", **body}
    headers = {"Authorization": f"Bearer {API_KEY}", **(headers or {})}
    return httpx.post(f"{server.url}/v1/audio/speech", json=body, headers=headers, timeout=300)


def error_message(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def wav_bytes(seconds: float = 0.5, rate: int = 24000) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- happy paths
def test_models_and_health(server, client):
    assert [model.id for model in client.models.list().data] == [server.model_name]
    health = server.health()
    assert health["status"] == "ready" and health["waiting_jobs"] == 0
    # readiness: nothing answered 200 before the model was loaded (the first answers may be 503 "loading")
    assert server.health_answers[-1] == 200 and set(server.health_answers[:-1]) <= {503}


def test_speech_stream_equals_full_decode_of_greedy_generate(server, client, reference, speak):
    expected = reference_speech(reference, TEXTS[0])
    streamed = pcm_to_float(speak(TEXTS[0]))
    assert expected.size > 0 and streamed.shape == expected.shape
    # streaming decodes each frame once; the full decode of the same ids agrees to float rounding (1 LSB of int16)
    assert np.abs(streamed - np.clip(expected, -1, 1)).max() <= 1.5 / 32767


def test_speech_formats_carry_the_same_audio(server, client, speak):
    import soundfile

    pcm = speak(TEXTS[1])
    wav = speak(TEXTS[1], response_format="wav")
    assert wav[:4] == b"RIFF" and wav[44:] == pcm  # a streaming header, then the same samples
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 24000 and audio.tobytes() == pcm
    for response_format in ("flac", "mp3", "opus"):
        encoded, rate = soundfile.read(io.BytesIO(speak(TEXTS[1], response_format=response_format)))
        assert rate == 24000
        if response_format == "flac":  # lossless
            assert np.abs(encoded - pcm_to_float(pcm)).max() < 2e-4
        else:  # lossy codecs with their encoder delay: the length is the speech's, within a codec frame
            assert abs(encoded.shape[0] - len(pcm) // 2) < 2000


def test_sse_stream_equals_audio_stream(server, client, speak):
    pcm = speak(TEXTS[2])
    events = []
    with httpx.stream(
        "POST",
        f"{server.url}/v1/audio/speech",
        timeout=300,
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={
            "model": server.model_name,
            "input": TEXTS[2],
            "voice": "default",
            "response_format": "pcm",
            "stream_format": "sse",
        },
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    kinds = [event["type"] for event in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"} and len(kinds) > 2
    assert b"".join(base64.b64decode(event["audio"]) for event in events[:-1]) == pcm
    assert events[-1]["usage"]["output_tokens"] > 0


def test_speaker_voice_is_in_the_prompt(server, client, reference, speak):
    expected = reference_speech(reference, TEXTS[3], speaker="tara")
    streamed = pcm_to_float(speak(TEXTS[3], voice="tara"))
    assert streamed.shape == expected.shape and np.abs(streamed - np.clip(expected, -1, 1)).max() <= 1.5 / 32767


def test_concurrent_requests_are_batched_and_equal_one_at_a_time(server, client, speak):
    sequential = [speak(text) for text in TEXTS]
    before = server.health()
    results: dict[int, bytes] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, speak(TEXTS[i]))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    health = server.health()
    assert health["batches_run"] - before["batches_run"] < len(TEXTS), "the concurrent requests did not share a batch"
    assert health["largest_batch"] >= 2
    # their streams were decoded by both SNAC decoding processes (each new stream goes to the less busy one)
    given = [a - b for a, b in zip(health["streams_per_decoding_process"], before["streams_per_decoding_process"])]
    assert len(given) == 2 and min(given) >= 1, given
    # the same speech: rows decoded together read the codec's weights once for all, and the matrix kernels round a
    # product of more rows differently (float rounding: at most 1 step of int16)
    for together, alone in zip([results[i] for i in range(4)], sequential):
        assert (
            len(together) == len(alone) and np.abs(pcm_to_float(together) - pcm_to_float(alone)).max() <= 1.5 / 32767
        )


def test_transcription_equals_in_process_greedy(server, client, reference):
    model, processor = reference
    clip = wav_bytes()
    inputs = processor.apply_transcription_request(pcm_to_float(clip[44:]), sampling_rate=24000)
    with torch.inference_mode():
        expected = processor.decode(model.generate(**inputs, do_sample=False)[0], skip_special_tokens=True).strip()
    result = client.audio.transcriptions.create(model=server.model_name, file=("clip.wav", clip, "audio/wav"))
    assert result.text == expected
    text = client.audio.transcriptions.create(
        model=server.model_name, file=("clip.wav", clip, "audio/wav"), response_format="text"
    )
    assert text.strip() == expected
    verbose = client.audio.transcriptions.create(
        model=server.model_name, file=("clip.wav", clip, "audio/wav"), response_format="verbose_json"
    )
    assert verbose.text == expected and abs(verbose.duration - 0.5) < 1e-6
    assert verbose.segments[0].end == verbose.duration


# ---------------------------------------------------------------------------------------------- bad input
def test_empty_input_is_400(server):
    response = post_speech(server, input="   ")
    assert response.status_code == 400 and "`input` is empty" in error_message(response)


def test_over_long_input_is_400_with_the_limit(server, client, speak):
    with pytest.raises(openai.BadRequestError) as caught:
        speak("a" * (MAX_INPUT_CHARS + 1))
    assert caught.value.status_code == 400 and f"at most {MAX_INPUT_CHARS}" in str(caught.value)


def test_unknown_voice_is_400_listing_the_voices(server, client, speak):
    with pytest.raises(openai.BadRequestError) as caught:
        speak("hello.", voice="alloy")
    assert "'alloy'" in str(caught.value) and "['default', 'tara', 'leo']" in str(caught.value)


def test_unknown_model_is_404(server, client, speak):
    with pytest.raises(openai.NotFoundError) as caught:
        speak("hello.", model="tts-1")
    assert "'tts-1'" in str(caught.value) and server.model_name in str(caught.value)


def test_unsupported_format_is_400_naming_the_supported(server):
    response = post_speech(server, response_format="aac")
    assert response.status_code == 400
    assert "['mp3', 'opus', 'flac', 'wav', 'pcm']" in error_message(response)
    response = post_speech(server, stream_format="chunked")
    assert response.status_code == 400 and "['audio', 'sse']" in error_message(response)


def test_speed_other_than_one_is_refused(server):
    response = post_speech(server, speed=1.5)
    assert response.status_code == 400 and "speed=1.5" in error_message(response)


def test_unknown_field_is_refused_by_name(server):
    response = post_speech(server, pitch=2)
    assert response.status_code == 400 and "pitch" in error_message(response)


def test_upload_over_the_limit_is_413(server, client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.transcriptions.create(
            model=server.model_name, file=("big.wav", wav_bytes(seconds=6.0), "audio/wav")
        )
    assert caught.value.status_code == 413 and str(MAX_UPLOAD_BYTES) in str(caught.value)


def test_malformed_multipart_is_400(server):
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        content=b"--xyz\r\nContent-Disposition: form-data\r\n\r\nno end",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 400 and "multipart" in error_message(response)
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        json={"model": server.model_name},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 400 and "multipart/form-data" in error_message(response)


def test_non_audio_upload_is_400(server, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(
            model=server.model_name, file=("notes.txt", b"not audio at all", "text/plain")
        )
    assert "'notes.txt' is not audio" in str(caught.value)


def test_transcription_fields_the_model_cannot_honour_are_refused(server, client):
    clip = ("clip.wav", wav_bytes(), "audio/wav")
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model=server.model_name, file=clip, language="en")
    assert "`language` is not supported" in str(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model=server.model_name, file=clip, response_format="srt")
    assert "['json', 'text', 'verbose_json']" in str(caught.value)


def test_api_key_is_required_everywhere_but_health(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    wrong = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in error_message(wrong)
    assert post_speech(server, headers={"Authorization": "Bearer nope"}).status_code == 401
    response = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes())})
    assert response.status_code == 401


def test_request_ids_are_returned_and_logged(server):
    response = post_speech(server, headers={"X-Request-Id": "req-12345"}, response_format="pcm")
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-12345"
    log = server.log_text()
    assert "request req-12345: speech" in log and "requests req-12345" in log


# ---------------------------------------------------------------------------------------------- load and faults
def test_requests_beyond_the_bound_are_429_then_served(server, client):
    long_text = " ".join(f"sentence number {i} here." for i in range(12))  # 12 pieces of --max_piece_chars 40
    assert len(long_text) <= MAX_INPUT_CHARS
    body = {"model": server.model_name, "input": long_text, "voice": "default", "response_format": "pcm"}
    clients = [httpx.Client(timeout=300, headers={"Authorization": f"Bearer {API_KEY}"}) for _ in range(6)]
    responses = {}

    def open_stream(index: int) -> None:  # the body is read later
        request = clients[index].build_request("POST", f"{server.url}/v1/audio/speech", json=body)
        responses[index] = clients[index].send(request, stream=True)

    # 4 generated together + 2 waiting = the bound (--max_concurrency 4 --max_queue 2)
    openers = [threading.Thread(target=open_stream, args=(index,)) for index in range(6)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join()
    assert server.health()["active_requests"] == 6
    refused = post_speech(server)
    assert refused.status_code == 429 and "bound of 6 requests" in error_message(refused)
    for index, http in enumerate(clients):
        assert responses[index].status_code == 200 and len(responses[index].read()) > 0
        http.close()
    assert post_speech(server, response_format="pcm").status_code == 200  # served again once the load is gone


def test_aborted_streams_stop_their_generation_and_free_their_slots(server):
    long_text = " ".join(f"sentence number {i} here." for i in range(12))

    def abort_one():
        with httpx.stream(
            "POST",
            f"{server.url}/v1/audio/speech",
            timeout=300,
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"model": server.model_name, "input": long_text, "voice": "default", "response_format": "pcm"},
        ) as response:
            assert response.status_code == 200
            next(response.iter_raw())  # the first audio, then the client goes away

    def settled(timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            health = server.health()
            if health["active_requests"] == health["waiting_jobs"] == health["running_jobs"] == 0:
                return health
            assert time.monotonic() < deadline, f"work left after the clients went away: {health}"
            time.sleep(0.05)

    abort_one()
    baseline = settled()
    started = time.monotonic()
    for _ in range(10):
        threads = [threading.Thread(target=abort_one) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    after = settled()
    # 50 requests of 12 pieces each would be 600 generations: stopped, they cost a few batches each
    assert after["batches_run"] - baseline["batches_run"] < 200
    assert after["rss_bytes"] - baseline["rss_bytes"] < 64 * 2**20, (baseline, after)
    assert time.monotonic() - started < 600


def test_api_key_from_the_environment_and_graceful_shutdown(omni_dir, tmp_path):
    server = Server(omni_dir, tmp_path, "--max_duration", "3", env={"QWEN_OMNI_API_KEY": "env-key"})
    try:
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer env-key"}).status_code == 200
        # a request in flight when SIGTERM arrives is finished before the process exits
        with httpx.stream(
            "POST",
            f"{server.url}/v1/audio/speech",
            timeout=300,
            headers={"Authorization": "Bearer env-key"},
            json={"model": Path(omni_dir).name, "input": "hello there.", "voice": "default", "response_format": "wav"},
        ) as response:
            chunks = response.iter_raw()
            first = next(chunks)
            server.process.send_signal(signal.SIGTERM)
            body = first + b"".join(chunks)
        import soundfile

        audio, rate = soundfile.read(io.BytesIO(body))
        assert response.status_code == 200 and rate == 24000 and audio.size > 0
        assert server.process.wait(60) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    assert "Finished server process" in server.log_text()


def test_bad_options_are_one_line_with_exit_status_2(tmp_path):
    for options, message in (
        (["--model", str(tmp_path / "missing")], "no such folder"),
        (["--model", str(tmp_path), "--max_concurrency", "0"], "--max_concurrency must be >= 1, got 0"),
        (["--model", str(tmp_path), "--decode_processes", "0"], "--decode_processes must be >= 1, got 0"),
        (["--model", str(tmp_path), "--chunk_frames", "0"], "--chunk_frames must be >= 1, got 0"),
        (["--model", str(tmp_path), "--engine", "vllm", "--decode_processes", "2"], "the vllm engine decodes on"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "qwen_omni.entrypoints.cli", "serve", *options],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_model_steps_reach_the_decoding_processes_once_a_frame_is_whole():
    """The engine's side of the decoding processes (not started: their queues are read here): a step's ids are
    gathered until one of them completes a stream's frame, then go in one message per process, each stream's ids
    joined; a stream that ends, or is closed, sends what is gathered at once, before the close."""
    from qwen_omni.entrypoints.openai.speech_decoder import SpeechDecodeProcess

    decoder = SpeechDecodeProcess("unused", "cpu", 1, 1, object(), processes=2, ids_per_frame=3)
    first, second, third = (decoder.open(job) for job in ("a", "b", "c"))
    assert decoder._owner == {first: 0, second: 1, third: 0}  # each new stream to the process with fewer streams

    def messages(process: int) -> list:
        found = []
        while True:
            try:
                found.append(decoder._requests[process].get(timeout=0.3))
            except queue.Empty:  # nothing more was sent
                return found

    decoder.send([(first, [10], False), (second, [20], False), (third, [30], False)])
    decoder.send([(first, [11], False), (second, [21], False), (third, [31], False)])
    assert messages(0) == messages(1) == []  # no frame is whole yet
    decoder.send([(first, [12], False), (second, [22], False), (third, [32], False)])
    assert messages(0) == [("step", [(first, [10, 11, 12], False), (third, [30, 31, 32], False)])]
    assert messages(1) == [("step", [(second, [20, 21, 22], False)])]
    decoder.send([(first, [13], False), (second, [23], True)])  # the second stream ends: sent at once
    assert messages(0) == [("step", [(first, [13], False)])] and messages(1) == [("step", [(second, [23], True)])]
    decoder.send([(first, [14], False), (third, [33], False)])
    decoder.close(third)  # the gathered steps go before the close
    assert messages(0) == [("step", [(first, [14], False), (third, [33], False)]), ("close", third)]


def test_a_late_request_joins_the_running_rows_and_is_not_kept_waiting(omni_dir, tmp_path):
    """Continuous batching: a request that arrives while another is being generated joins its rows at the next step
    (its first audio comes before the earlier request's last byte), shares decoding steps with it, and speaks exactly
    as it does alone."""
    server = Server(omni_dir, tmp_path, "--greedy", "--max_duration", "3", "--max_concurrency", "4")
    body = {"model": Path(omni_dir).name, "voice": "default", "response_format": "pcm"}

    def speak(text: str) -> bytes:
        return httpx.post(f"{server.url}/v1/audio/speech", json={**body, "input": text}, timeout=300).content

    try:
        alone = speak(TEXTS[2])
        before = server.health()
        timeline: dict[str, float] = {}
        late_audio = {}

        def late_request() -> None:
            with httpx.stream("POST", f"{server.url}/v1/audio/speech", json={**body, "input": TEXTS[2]}) as late:
                chunks = late.iter_raw()
                first = next(chunks)
                timeline["late first audio"] = time.monotonic()
                late_audio["pcm"] = first + b"".join(chunks)

        with httpx.stream(
            "POST", f"{server.url}/v1/audio/speech", json={**body, "input": TEXTS[0]}, timeout=300
        ) as response:
            deadline = time.monotonic() + 60
            while server.health()["running_jobs"] == 0:  # the first request's row is being decoded
                assert time.monotonic() < deadline, "the first request never started"
            late = threading.Thread(target=late_request)
            late.start()
            early_audio = b"".join(response.iter_raw())
            timeline["early last byte"] = time.monotonic()
        late.join()
        after = server.health()
    finally:
        server.stop()
    # the same speech as alone (to float rounding: its frames were decoded together with the other row's)
    assert len(early_audio) > 0 and len(late_audio["pcm"]) == len(alone)
    assert np.abs(pcm_to_float(late_audio["pcm"]) - pcm_to_float(alone)).max() <= 1.5 / 32767
    assert timeline["late first audio"] < timeline["early last byte"], timeline
    # the late request joined a row already decoding (no new batch was waited for) and shared steps with it
    assert after["joined_running_batch"] - before["joined_running_batch"] == 1
    assert after["most_requests_in_a_step"] == 2 and after["largest_batch"] == 2
    assert "1 job(s) join 1 decoding row(s)" in server.log_text()


@pytest.mark.parametrize("chunk_frames", [1, 2])
@pytest.mark.parametrize("layer_by_layer", [True, False])
def test_decoding_process_gives_the_streamers_audio(omni_dir, monkeypatch, layer_by_layer, chunk_frames):
    """The decoding process's loop (run here with plain queues) decodes a stream as `OmniAudioStreamer` does, in the
    same chunks (`--chunk_frames`): layer by layer, or, for a codec without a streaming rule for a layer, in
    overlapping windows."""
    import queue

    from transformers import AutoProcessor

    import qwen_omni  # noqa: F401
    from qwen_omni import modeling_snac
    from qwen_omni.entrypoints.openai.speech_decoder import _decode_loop

    if not layer_by_layer:

        def no_streaming_rule(self, processor):
            raise NotImplementedError("no streaming rule for TestLayer")

        monkeypatch.setattr(modeling_snac.SNACStreamingDecoder, "__init__", no_streaming_rule)
    processor = AutoProcessor.from_pretrained(omni_dir)
    layout = processor.token_layout
    generator = torch.Generator().manual_seed(0)
    ids = [
        layout.block_start(position) + int(torch.randint(layout.codebook_size, (), generator=generator))
        for _ in range(9)
        for position in range(layout.tokens_per_frame)
    ]
    expected = []
    streamer = modeling_snac.OmniAudioStreamer(processor, on_chunk=expected.append, chunk_frames=chunk_frames)
    streamer.put(torch.tensor([processor.audio_start_token_id]))
    for token in ids:  # as `generate` streams: one id per step
        streamer.put(torch.tensor([token]))
    streamer.end()

    requests, results = queue.Queue(), queue.Queue()
    for token in ids:
        requests.put(("step", [(7, [token], False)]))
    requests.put(("step", [(7, [processor.audio_end_token_id], True)]))
    requests.put(None)
    _decode_loop(str(omni_dir), "cpu", chunk_frames, 1, requests, results)
    messages = []
    while not results.empty():
        messages.append(results.get())
    assert messages[0] == (None, "ready", None) and messages[-1] == (7, "end", None)
    assert {kind for _, kind, _ in messages[1:-1]} == {"audio"}
    chunks = [chunk for _, _, chunk in messages[1:-1]]
    assert [chunk.size for chunk in chunks] == [chunk.size for chunk in expected if chunk.size]
    assert np.array_equal(np.concatenate(chunks), np.concatenate(expected))


def test_joining_rows_take_their_first_token_from_the_audio_block(omni_dir):
    """A join prefills its prompts together and, as they end in an audio span, picks each row's first token through
    the fast audio head: no full head over the vocabulary (a join of 13 rows at the seed's shape took 75 ms with it,
    9 ms now), the same first token as greedy `generate`, sent to the row's decoding stream."""
    from qwen_omni import OmniForCausalLM, OmniProcessor
    from qwen_omni.entrypoints.openai.continuous_batching import ContinuousSpeechBatch, SpeechDecoding

    model, processor = OmniForCausalLM.from_pretrained(omni_dir).eval(), OmniProcessor.from_pretrained(omni_dir)

    class Decoder:  # the decoding processes' side the batch uses
        def __init__(self):
            self.streams, self.steps = 0, []

        def open(self, job) -> int:
            self.streams += 1
            return self.streams - 1

        def send(self, step) -> None:
            self.steps.append(step)

        def close(self, stream) -> None:
            raise AssertionError("no stream is closed here")

    decoder = Decoder()
    batch = ContinuousSpeechBatch(model, processor, SpeechDecoding(model, {"do_sample": False}), decoder)
    prompts = [processor(text=text, return_tensors=None)["input_ids"][0] for text in TEXTS[:3]]
    jobs = [
        type("Job", (), {"prompt_ids": prompt, "cancelled": False, "generated_ids": [], "request_id": str(index)})()
        for index, prompt in enumerate(prompts)
    ]
    head_calls = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: head_calls.append(args[0].shape))
    try:
        with torch.inference_mode():
            batch.add(jobs)
    finally:
        hook.remove()
    assert head_calls == [] and len(batch) == 3
    expected = [
        int(model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=1)[0, -1]) for prompt in prompts
    ]
    assert [job.generated_ids for job in jobs] == [[token] for token in expected]
    assert decoder.steps == [[(stream, [token], False) for stream, token in enumerate(expected)]]
