"""
Issue 2 benchmarks, as ratios measured inside one run (median of several repetitions):

1. training-step tokens/s of OmniForCausalLM over transformers' Qwen3ForCausalLM of the same shape (target >= 0.95);
2. the processor's encode (SNACFeatureExtractor front end + SNACAudioTokenizer, `processing_omni.encode_audio`) time
   per audio second over calling `snac` directly at the same batch (target <= 1.1),
   on the real 24 kHz SNAC shape (random weights: the Hub is not reachable here; speed does not depend on them).

    python bench/bench_core.py [--repeats 7]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from qwen_omni import OmniConfig, OmniForCausalLM, SNACAudioTokenizer, SNACConfig, SNACFeatureExtractor
from qwen_omni.processing_omni import encode_audio


SNAC_24KHZ = dict(
    sampling_rate=24000,
    encoder_dim=48,
    encoder_rates=[2, 4, 8, 8],
    decoder_dim=1024,
    decoder_rates=[8, 8, 4, 2],
    attn_window_size=None,
    codebook_size=4096,
    codebook_dim=8,
    vq_strides=[4, 2, 1],
    noise=True,
    depthwise=True,
)


# Process CPU time with one thread: wall time on a shared 2-core machine swings several-fold with other jobs.
clock = time.process_time


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def training_step_ratio(repeats: int) -> None:
    # the qwen-omni seed's shape: d_model 128, 4 heads, 3 layers, GPT-2 text vocabulary + 7 x 4096 audio ids
    text_vocab = 50257 + 8
    shape = dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=text_vocab + 7 * 4096,
    )
    torch.manual_seed(0)
    qwen3 = Qwen3ForCausalLM(Qwen3Config(**shape))
    omni = OmniForCausalLM(
        OmniConfig(**shape, audio_token_offset=text_vocab, audio_loss_weight=1.0, text_loss_weight=0.1)
    )
    omni.load_state_dict(qwen3.state_dict())
    batch, length = 8, 256
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.cat(
        [
            torch.randint(0, text_vocab, (batch, 64), generator=generator),
            torch.randint(text_vocab, shape["vocab_size"], (batch, length - 64), generator=generator),
        ],
        dim=1,
    )

    def step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            loss = model(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    # interleave the two models (alternating which goes first) so drift in machine load hits both alike
    qwen3_times, omni_times = [], []
    run_qwen3, run_omni = step(qwen3), step(omni)
    for index in range(repeats):
        order = [(run_qwen3, qwen3_times), (run_omni, omni_times)]
        for run, times in order if index % 2 else order[::-1]:
            times.append(median_time(run, 1))
    tokens = batch * length
    qwen3_tps, omni_tps = tokens / statistics.median(qwen3_times), tokens / statistics.median(omni_times)
    print(f"training step, {omni.num_parameters() / 1e6:.1f}M params, batch {batch} x {length} tokens:")
    print(
        f"  Qwen3ForCausalLM {qwen3_tps:8.0f} tok/s | OmniForCausalLM (modality-weighted loss) {omni_tps:8.0f} tok/s"
    )
    print(f"  ratio Omni / Qwen3 = {omni_tps / qwen3_tps:.3f}  (target >= 0.95)")


def encode_ratio(repeats: int) -> None:
    import snac

    torch.manual_seed(0)
    codec = snac.SNAC(**SNAC_24KHZ).eval()
    audio_tokenizer = SNACAudioTokenizer(SNACConfig(**SNAC_24KHZ))
    audio_tokenizer.load_state_dict(codec.state_dict())
    front_end = SNACFeatureExtractor(sampling_rate=24000)
    seconds, batch = 5.0, 4
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(seconds * 24000))).astype(np.float32) for _ in range(batch)]
    direct_input = torch.from_numpy(np.stack(clips))[:, None, :]

    def direct():
        with torch.inference_mode():
            codec.encode(direct_input)

    def via_extractor():
        encode_audio(front_end, audio_tokenizer, clips, sampling_rate=24000, batch_size=4)

    direct_times, extractor_times = [], []
    for _ in range(repeats):
        direct_times.append(median_time(direct, 1))
        extractor_times.append(median_time(via_extractor, 1))
    audio_seconds = seconds * batch
    direct_cost = statistics.median(direct_times) / audio_seconds
    extractor_cost = statistics.median(extractor_times) / audio_seconds
    print(
        f"SNAC 24 kHz encode ({sum(p.numel() for p in codec.parameters()) / 1e6:.1f}M params), batch {batch} x {seconds:.0f} s:"
    )
    print(f"  snac direct {direct_cost * 1000:.1f} ms per audio second | encode_audio {extractor_cost * 1000:.1f} ms")
    print(f"  ratio extractor / direct = {extractor_cost / direct_cost:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall time")
    parser.add_argument("--num_threads", type=int, default=1)
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.num_threads)
    print(f"torch {torch.__version__}, {args.num_threads} thread(s), {args.clock} clock, median of {args.repeats}")
    training_step_ratio(args.repeats)
    encode_ratio(args.repeats)
