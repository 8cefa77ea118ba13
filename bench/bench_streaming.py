"""
Cost of streaming speech (issue 11), at the qwen-omni seed's shape (see `bench_generation.py`) with the real 24 kHz
SNAC shape (random weights: the Hub is not reachable here; speed does not depend on them).

Prints, as medians of interleaved repetitions inside one run (process CPU time, one thread by default):
- CPU of `generate(streamer=OmniAudioStreamer(...))` over the CPU of `generate` followed by one full decode of the
  same tokens (target <= 1.3);
- how many frames had been generated when the first chunk came out (target <= 5);
- the largest difference between the streamed and the fully decoded waveform, relative to its peak (target <= 1e-5).

    python bench/bench_streaming.py [--frames 24] [--repeats 3] [--chunk-frames 1] [--right-context-frames N]
"""

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace


os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_core import SNAC_24KHZ  # noqa: E402
from bench_generation import build_seed_model, seed_prompt  # noqa: E402

from qwen_omni import SNACAudioTokenizer, SNACConfig  # noqa: E402
from qwen_omni.modeling_snac import OmniAudioStreamer  # noqa: E402
from qwen_omni.omni.build import SPEECH_GENERATION_DEFAULTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24, help="frames per generation (24 = 2.05 s of audio)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-frames", type=int, default=None, help="OmniAudioStreamer(chunk_frames=...)")
    parser.add_argument("--right-context-frames", type=int, default=None)
    parser.add_argument("--num_threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    model = build_seed_model()
    config = model.config
    torch.manual_seed(0)
    audio_tokenizer = SNACAudioTokenizer(SNACConfig(**SNAC_24KHZ)).eval()
    # what the streamer reads of a processor, the token layout and the codec (the seed model has no tokenizer)
    codec = SimpleNamespace(token_layout=config.token_layout, audio_tokenizer=audio_tokenizer)
    prompt = seed_prompt(config)
    new_tokens = args.frames * config.token_layout.tokens_per_frame
    streamer_kwargs = {
        name: value
        for name, value in (("chunk_frames", args.chunk_frames), ("right_context_frames", args.right_context_frames))
        if value is not None
    }
    clock = time.process_time

    def generate_then_decode(seed: int):
        torch.manual_seed(seed)
        start = clock()
        sequence = model.generate(prompt, max_new_tokens=new_tokens, eos_token_id=None, **SPEECH_GENERATION_DEFAULTS)
        with torch.inference_mode():
            codes = config.token_layout.ids_to_codes(sequence[0, prompt.shape[1] :])
            audio = audio_tokenizer.decode(codes).audio_values.numpy()
        return clock() - start, audio, None

    def generate_streaming(seed: int):
        torch.manual_seed(seed)
        chunks, frames_at_first_chunk = [], []
        streamer = OmniAudioStreamer(codec, on_chunk=chunks.append, **streamer_kwargs)

        def on_chunk(chunk):
            if not frames_at_first_chunk:
                frames_at_first_chunk.append(streamer.num_frames)
            chunks.append(chunk)

        streamer.on_chunk = on_chunk
        start = clock()
        model.generate(
            prompt, max_new_tokens=new_tokens, eos_token_id=None, streamer=streamer, **SPEECH_GENERATION_DEFAULTS
        )
        elapsed = clock() - start
        return elapsed, np.concatenate(chunks), frames_at_first_chunk[0]

    times = {"full": [], "stream": []}
    first_chunk_frames, errors = [], []
    with torch.no_grad():
        for repeat in range(args.repeats + 1):  # the first round warms up
            order = [("full", generate_then_decode), ("stream", generate_streaming)]
            results = {}
            for name, run in order if repeat % 2 else order[::-1]:
                results[name] = run(repeat)
                if repeat:
                    times[name].append(results[name][0])
            full_audio, streamed = results["full"][1], results["stream"][1]
            if streamed.shape != full_audio.shape:
                raise AssertionError(f"streamed {streamed.shape} samples, full decode {full_audio.shape}")
            errors.append(float(np.abs(streamed - full_audio).max() / np.abs(full_audio).max()))
            first_chunk_frames.append(results["stream"][2])

    full, stream = statistics.median(times["full"]), statistics.median(times["stream"])
    seconds = args.frames * audio_tokenizer.config.samples_per_frame / audio_tokenizer.config.sampling_rate
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), process CPU time, median of {args.repeats}"
    )
    print(f"{args.frames} frames ({seconds:.2f} s of audio), streamer options {streamer_kwargs or 'default'}")
    print(f"generate + one decode : {full:6.2f} s CPU")
    print(f"generate, streamed    : {stream:6.2f} s CPU")
    print(f"first chunk after {max(first_chunk_frames)} frames (target <= 5)")
    print(f"max |streamed - full| / peak = {max(errors):.1e} (target <= 1e-5)")
    print(f"RATIO streaming / (generate + one decode) = {stream / full:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
