"""
`qwen-omni serve` through its real HTTP API, at the qwen-omni seed's model shape (d_model 128, 3 layers, 4 heads,
~79k ids, ~10.8M parameters; random weights) with a random codec of the real 24 kHz SNAC shape (codebook 4096,
decoder width 1024), one server process on 127.0.0.1.

For concurrency 1, 4 and 16 (`--concurrency`), each repetition sends that many speech requests at once (`pcm`,
streamed) and then the same requests one after another, and prints medians over the repetitions of:
- aggregate seconds of audio per wall second, batched and sequential, and their ratio (batched / sequential);
- time to the first audio byte, p50 and p95 over the batched requests, and p95 as a multiple of the single-request
  (concurrency 1) first-audio time;
- aggregate throughput at each concurrency as a multiple of the single-stream throughput;
- single stream: seconds of audio per wall second (real-time factor);
- the cores the server's process (model, HTTP) and its SNAC decoding processes kept busy during the batched
  requests (CPU seconds per wall second, Linux), which shows what bounds the figures.
Every request makes `--max_duration` seconds of speech (random weights rarely stop earlier), so all do equal work.
The requests go through one `httpx.Client` holding a connection per concurrent request, as a real client keeps one
(a client made per request costs ~23 ms of CPU for its TLS context, which would count against the server).

    python bench/bench_serve.py [--concurrency 1 4 16] [--repeats 3] [--max_duration 3] [--num_threads 1]
        [--chunk_frames 1] [--device cpu]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
from bench_core import SNAC_24KHZ as REAL_SNAC_24KHZ  # noqa: E402  (the real 24 kHz SNAC shape)
from bench_generation import GPT2_VOCAB  # noqa: E402


TEXT = "hello there, how are you today?"


def build_seed_checkpoint(folder: str) -> str:
    """The seed's shape around a tokenizer of GPT-2's size (a small BPE plus filler ids: only the count matters)."""
    import json

    import snac
    import torch

    from qwen_omni.omni.build import build_omni_from_scratch, save_omni_checkpoint, train_bpe_tokenizer

    codec_dir = os.path.join(folder, "snac")
    os.makedirs(codec_dir)
    torch.manual_seed(0)
    torch.save(snac.SNAC(**REAL_SNAC_24KHZ).state_dict(), os.path.join(codec_dir, "pytorch_model.bin"))
    with open(os.path.join(codec_dir, "config.json"), "w") as file:
        json.dump(REAL_SNAC_24KHZ, file)
    tokenizer = train_bpe_tokenizer([TEXT, "the quick brown fox jumps over the lazy dog."] * 8, vocab_size=300)
    tokenizer.add_tokens([f"<filler_{i}>" for i in range(GPT2_VOCAB - len(tokenizer))])
    model, processor = build_omni_from_scratch(
        tokenizer,
        codec_dir,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=512,
        max_position_embeddings=4096,
    )
    print(f"checkpoint: {model.num_parameters() / 1e6:.1f}M parameters, {model.config.vocab_size} ids", flush=True)
    model_dir = os.path.join(folder, "omni-seed")
    save_omni_checkpoint(model, processor, model_dir)
    return model_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_request(client: httpx.Client, url: str, model: str, sampling_rate: int) -> tuple[float, float, float]:
    """(seconds to the first audio byte, seconds to the end, seconds of audio) of one streamed pcm request."""
    started = time.perf_counter()
    first = None
    size = 0
    body = {"model": model, "input": TEXT, "voice": "default", "response_format": "pcm"}
    with client.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if chunk and first is None:
                first = time.perf_counter() - started
            size += len(chunk)
    return first, time.perf_counter() - started, size / 2 / sampling_rate


def concurrent(client: httpx.Client, url: str, model: str, count: int, rate: int) -> tuple[float, list[float]]:
    """Audio seconds per wall second of `count` simultaneous requests, and their first-byte times."""
    results = [None] * count

    def run(index: int) -> None:
        results[index] = one_request(client, url, model, rate)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return sum(result[2] for result in results) / wall, [result[0] for result in results]


def sequential(client: httpx.Client, url: str, model: str, count: int, rate: int) -> float:
    started = time.perf_counter()
    audio = sum(one_request(client, url, model, rate)[2] for _ in range(count))
    return audio / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_processes(pid: int) -> dict[str, list[int]]:
    """The server's process ("model") and its SNAC decoding processes ("decoding"), by /proc's children lists (of
    every thread: the engine's worker thread starts the decoding processes)."""
    processes = {"model": [pid], "decoding": []}
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/children") as children:
                processes["decoding"] += [int(child) for child in children.read().split()]
    except OSError:
        pass
    return processes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    model_dir: str,
    folder: str,
    concurrency: list[int],
    repeats: int = 3,
    max_duration: float = 3.0,
    num_threads: int = 1,
    chunk_frames: int = 1,
    device: str = "cpu",
) -> dict[int, dict[str, float]]:
    """Start `qwen-omni serve` on `model_dir` (its log in `folder`), drive it as the module says, stop it, and return
    the medians per concurrency: `batched` and `sequential` audio s/s, `p50` / `p95` first audio (s), and the
    `model_cores` / `decoding_cores` busy during the batched requests."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "qwen_omni.entrypoints.cli",
        "serve",
        "--model",
        model_dir,
        "--port",
        str(port),
        "--num_threads",
        str(num_threads),
        "--max_duration",
        str(max_duration),
        "--max_concurrency",
        str(max(concurrency)),
        "--max_queue",
        str(max(concurrency)),
        "--chunk_frames",
        str(chunk_frames),
        "--device",
        device,
    ]
    # one client for every request, as a real client keeps one: a new httpx client costs ~23 ms of CPU (its TLS
    # context), which 16 threads creating theirs at once added to their first-audio times (p95 0.93 s -> 0.56 s)
    connections = max(concurrency)
    client = httpx.Client(limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))
    log_path = os.path.join(folder, "server.log")
    log = open(log_path, "wb")
    server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    figures = {}
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(open(log_path).read()[-3000:])
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        rate = 24000
        one_request(client, url, model, rate)  # warm-up
        processes = server_processes(server.pid)
        for count in concurrency:
            batched, seq, firsts, shares = [], [], [], []
            for _ in range(repeats):
                before = {kind: sum(map(cpu_seconds, pids)) for kind, pids in processes.items()}
                started = time.perf_counter()
                throughput, first_bytes = concurrent(client, url, model, count, rate)
                wall = time.perf_counter() - started
                shares.append(
                    {kind: (sum(map(cpu_seconds, pids)) - before[kind]) / wall for kind, pids in processes.items()}
                )
                batched.append(throughput)
                firsts += first_bytes
                seq.append(sequential(client, url, model, count, rate) if count > 1 else throughput)
            figures[count] = {
                "batched": statistics.median(batched),
                "sequential": statistics.median(seq),
                "p50": percentile(firsts, 0.5),
                "p95": percentile(firsts, 0.95),
                # cores busy while the batched requests ran: the server's process, its decoding processes
                "model_cores": statistics.median(share["model"] for share in shares),
                "decoding_cores": statistics.median(share["decoding"] for share in shares),
            }
            print(f"concurrency {count}: {figures[count]}", flush=True)
    finally:
        client.close()
        server.terminate()
        server.wait(60)
        log.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_duration", type=float, default=3.0, help="seconds of speech per request")
    parser.add_argument("--num_threads", type=int, default=1, help="the server's torch threads (shared machine: 1)")
    parser.add_argument("--model", help="an Omni checkpoint folder (default: build the seed's shape)")
    parser.add_argument("--chunk_frames", type=int, default=1, help="the server's --chunk_frames")
    parser.add_argument("--device", default="cpu", help="the server's --device (the model's and the codec's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model or build_seed_checkpoint(folder)
        figures = measure(
            model_dir,
            folder,
            args.concurrency,
            args.repeats,
            args.max_duration,
            args.num_threads,
            args.chunk_frames,
            args.device,
        )

    single = figures.get(1)
    print(
        f"\nserver, {args.max_duration:g} s of speech per request, {args.num_threads} torch thread(s), "
        f"--chunk_frames {args.chunk_frames}, --device {args.device}, medians of {args.repeats}:"
    )
    print(
        f"{'concurrency':>11} {'audio s/s':>9} {'sequential':>10} {'batched/seq':>11} {'x single':>8} "
        f"{'p50 first':>9} {'p95 first':>9} {'p95/single':>10} {'cores: server':>13} {'decoding':>8}"
    )
    for count, figure in figures.items():
        versus_single = figure["batched"] / single["batched"] if single else float("nan")
        p95_ratio = figure["p95"] / single["p50"] if single else float("nan")
        print(
            f"{count:>11} {figure['batched']:>9.2f} {figure['sequential']:>10.2f} "
            f"{figure['batched'] / figure['sequential']:>11.2f} {versus_single:>8.2f} {figure['p50']:>9.3f} "
            f"{figure['p95']:>9.3f} {p95_ratio:>10.2f} {figure['model_cores']:>13.2f} {figure['decoding_cores']:>8.2f}"
        )
    if single:
        print(f"single stream: {single['batched']:.2f}x real time (target >= 5)")


if __name__ == "__main__":
    main()
