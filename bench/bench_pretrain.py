"""
Pretraining benchmarks on the shipped corpus (data/demo_corpus), each a ratio measured inside one run:

1. training tokens/s with packing over padding (one sample per row, right-padded) on the same samples, with the
   padding fraction of each;
2. loss after the same number of steps with Muon (+ AdamW for embeddings / norms) and with AdamW alone.

    python bench/bench_pretrain.py [--repeats 3] [--steps 30] [--codec DIR]

Without --codec the corpus is encoded with the random 24 kHz-layout codec of the offline demo (1024 codes);
the model is the seed's tiny one (d_model 128, 4 heads, 3 layers). Medians over the repetitions are printed.
"""

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pretrain_script", REPO_ROOT / "train" / "pretrain.py")
pretrain = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pretrain  # dataclasses look their module up
spec.loader.exec_module(pretrain)

from qwen_omni.training.packing import OmniPackingCollator, build_packed_dataset, build_task_samples, parse_task_ratios  # noqa: E402
from qwen_omni.training.trainer import MuonWithAdamW, muon_parameter_groups  # noqa: E402


def setup(work_dir: Path, codec: str | None):
    script_args, _ = pretrain.parse_args(["--output_dir", str(work_dir)] + (["--codec", codec] if codec else []))
    model, processor = pretrain.load_or_build_model(script_args, work_dir)
    rows = pretrain.prepared_rows(script_args, processor, work_dir)
    samples, _ = build_task_samples(rows, processor, parse_task_ratios(script_args.task_ratios), 1024, seed=0)
    return model, processor, samples


def train_steps(model_state, model_config, batches, optimizer_name: str, lr: float, seed: int = 0):
    from qwen_omni import OmniForCausalLM

    torch.manual_seed(seed)
    model = OmniForCausalLM(model_config)
    model.load_state_dict(model_state)
    model.train()
    if optimizer_name == "muon":
        muon, adamw, no_decay = muon_parameter_groups(model)
        optimizer = MuonWithAdamW(muon, adamw, lr=lr, adamw_no_decay_params=no_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    tokens, losses = 0, []
    start = time.perf_counter()
    for batch, real_tokens in batches:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
        tokens += real_tokens
    return tokens, time.perf_counter() - start, losses


def make_batches(samples, pad_token_id, packed: bool, tokens_per_batch: int, steps: int, seed: int = 0):
    dataset = build_packed_dataset(samples, 1024 if packed else None, seed=seed).to_list()
    collator = OmniPackingCollator(pad_token_id, packed=packed)
    batches, index = [], 0
    while len(batches) < steps:
        rows, budget = [], 0
        while budget < tokens_per_batch:
            row = dataset[index % len(dataset)]
            index += 1
            rows.append(row)
            budget += len(row["input_ids"])
        before = collator.num_tokens
        batch = collator(rows)
        batches.append((batch, collator.num_tokens - before))
    return batches, collator.padding_fraction, collator.num_tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="steps per throughput measurement")
    parser.add_argument("--loss_steps", type=int, default=40, help="steps of the Muon / AdamW comparison")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--codec", default=None)
    parser.add_argument("--work_dir", default=None, help="reuse a folder (model + prepared data are cached there)")
    args = parser.parse_args()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_pretrain_"))
    model, processor, samples = setup(work_dir, args.codec)
    state, config = model.state_dict(), model.config
    pad = processor.tokenizer.pad_token_id
    print(f"corpus: {len(samples)} samples, {sum(len(s['input_ids']) for s in samples)} tokens; model "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; torch threads {torch.get_num_threads()}")

    # 1. packing vs padding: same samples, about the same number of real tokens per step
    packed_batches, packed_padding, _ = make_batches(samples, pad, True, 2048, args.steps)
    padded_batches, padded_padding, _ = make_batches(samples, pad, False, 2048, args.steps)
    ratios = []
    for repeat in range(args.repeats):
        packed_tokens, packed_time, _ = train_steps(state, config, packed_batches, "adamw", args.lr)
        padded_tokens, padded_time, _ = train_steps(state, config, padded_batches, "adamw", args.lr)
        packed_rate, padded_rate = packed_tokens / packed_time, padded_tokens / padded_time
        ratios.append(packed_rate / padded_rate)
        print(f"  repeat {repeat}: packed {packed_rate:.0f} real tokens/s, padded {padded_rate:.0f} real tokens/s")
    print(f"packing / padding training throughput (real tokens/s): median {statistics.median(ratios):.2f}x over "
          f"{args.repeats} repeats; padding fraction packed {packed_padding:.1%}, padded {padded_padding:.1%}")

    # 2. Muon vs AdamW: same batches, same learning rate and steps
    batches, _, _ = make_batches(samples, pad, True, 2048, args.loss_steps)
    finals = {"muon": [], "adamw": []}
    for repeat in range(args.repeats):
        for name in finals:
            _, _, losses = train_steps(state, config, batches, name, args.lr, seed=repeat)
            finals[name].append(statistics.mean(losses[-5:]))
        print(f"  repeat {repeat}: loss after {args.loss_steps} steps (mean of last 5) muon {finals['muon'][-1]:.3f}, "
              f"adamw {finals['adamw'][-1]:.3f}")
    muon, adamw = statistics.median(finals["muon"]), statistics.median(finals["adamw"])
    print(f"loss after {args.loss_steps} steps: Muon {muon:.3f}, AdamW {adamw:.3f}, Muon / AdamW = {muon / adamw:.3f} "
          f"(median over {args.repeats} repeats, lr {args.lr})")


if __name__ == "__main__":
    sys.exit(main())
