"""
Speed of the streaming SNAC decoder (`SNACStreamingDecoder.push_rows`, what the server's decoding processes run) at
the real 24 kHz SNAC shape (random weights: the Hub is not reachable here; speed does not depend on them).

For each case (streams decoded together x frames per call), prints, as medians of interleaved repetitions inside one
run (process CPU time, one thread by default):
- seconds of audio per CPU second (real-time factor per core);
- that speed over the speed of one whole decode of the same frames (`SNACAudioTokenizer.decode`, the baseline);
- the largest difference between a streamed row and the whole decode, relative to its peak.

    python bench/bench_snac_streaming.py [--frames 48] [--repeats 3] [--num_threads 1]
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

from qwen_omni import SNACAudioTokenizer, SNACConfig  # noqa: E402
from qwen_omni.modeling_snac import SNACStreamingDecoder  # noqa: E402


CASES = [(1, 1), (1, 2), (1, 4), (4, 1), (16, 1), (16, 4)]  # (streams, frames per call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48, help="frames per stream (48 = 4.1 s of audio)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    torch.manual_seed(0)
    audio_tokenizer = SNACAudioTokenizer(SNACConfig(**SNAC_24KHZ)).eval()
    layout = audio_tokenizer.config.token_layout(1000)  # audio ids after 1000 text ids (only the layout matters)
    # what the decoder reads of a processor: the token layout and the codec
    codec = SimpleNamespace(token_layout=layout, audio_tokenizer=audio_tokenizer)
    generator = torch.Generator().manual_seed(0)
    codes = [
        torch.randint(0, layout.codebook_size, (1, args.frames * per_frame), generator=generator)
        for per_frame in layout.codes_per_frame
    ]
    ids = layout.codes_to_ids([code[0] for code in codes])
    per_frame = layout.tokens_per_frame
    seconds = args.frames * audio_tokenizer.config.samples_per_frame / audio_tokenizer.config.sampling_rate
    clock = time.process_time

    def whole_decode():
        start = clock()
        with torch.inference_mode():
            audio = audio_tokenizer.decode(codes).audio_values[0].numpy()
        return clock() - start, audio

    def streamed(streams: int, chunk: int):
        decoders = [SNACStreamingDecoder(codec) for _ in range(streams)]
        pieces = []
        start = clock()
        for first in range(0, args.frames, chunk):
            final = first + chunk >= args.frames
            piece = ids[first * per_frame : (first + chunk) * per_frame]
            pieces.append(SNACStreamingDecoder.push_rows(decoders, [piece] * streams, [final] * streams))
        elapsed = clock() - start
        return elapsed, [np.concatenate([out[row] for out in pieces]) for row in range(streams)]

    whole_decode()  # warm-up
    speeds = {case: [] for case in CASES}
    ratios = {case: [] for case in CASES}
    errors = {case: 0.0 for case in CASES}
    for repeat in range(args.repeats):
        for case in CASES if repeat % 2 == 0 else CASES[::-1]:
            baseline, reference = whole_decode()
            elapsed, rows = streamed(*case)
            speed = case[0] * seconds / elapsed
            speeds[case].append(speed)
            ratios[case].append(speed / (seconds / baseline))
            for row in rows:
                if row.shape != reference.shape:
                    raise AssertionError(f"streamed {row.shape} samples, whole decode {reference.shape}")
                errors[case] = max(errors[case], float(np.abs(row - reference).max() / np.abs(reference).max()))

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), process CPU time, median of {args.repeats}"
    )
    print(f"{args.frames} frames per stream ({seconds:.2f} s of audio), 24 kHz SNAC shape")
    print(f"{'streams':>7} {'frames/call':>11} {'x real time':>11} {'x whole decode':>14} {'max diff / peak':>15}")
    for case in CASES:
        print(
            f"{case[0]:>7} {case[1]:>11} {statistics.median(speeds[case]):>11.2f} "
            f"{statistics.median(ratios[case]):>14.2f} {errors[case]:>15.1e}"
        )


if __name__ == "__main__":
    main()
