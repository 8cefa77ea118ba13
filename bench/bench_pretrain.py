"""
Pretraining benchmarks on the shipped corpus (data/demo_corpus), each a ratio measured inside one run:

1. training tokens/s with packing over padding (one sample per row, right-padded) on the same samples, with the
   padding fraction of each. "tokens/s" counts real (non-padding) tokens only. Packing is measured at
   `--packed_lengths` (default 512 and 1024 tokens per row), also with the rows' free space filled with repeated
   text-only samples (`build_packed_dataset(..., fill_task="text")`, whose copies count as real tokens). The
   variants run interleaved (the order rotates each repetition); medians are printed.
2. loss after the same number of steps with Muon (+ AdamW for embeddings / norms) and with AdamW alone.

    python bench/bench_pretrain.py [--repeats 5] [--steps 8] [--packed_lengths 512 1024] [--codec DIR]

Without --codec the corpus is encoded with the random 24 kHz-layout codec of the offline demo (1024 codes);
the model is the seed's tiny one (d_model 128, 4 heads, 3 layers). Medians over the repetitions are printed.

When packing wins. Packing removes padding (here ~20% of the padded batches' tokens) but on this CPU path it makes
attention cost more: without a varlen kernel, sdpa runs each packed row as one dense (L x L) product with a
block-diagonal mask, so a 1024-token row of ~5 samples does ~5x the attention work of the same samples run alone
(the masked-out blocks are computed, then discarded), and at d_model 128 with 3 layers attention (O(L^2 d)) is a
large share of a step next to the MLP and the 8k-entry LM head (O(L d^2), O(L d V)). Shorter rows (512) cut that
waste but leave more free space per row (2 speech samples of ~190 tokens per 512-token row). On a GPU with
flash-attention varlen kernels (`attn_implementation="flash_attention_2"`, which transformers uses for packed
`position_ids`) attention only covers each sample's own causal block, so a packed token costs what an unpadded one
does, and packing's tokens/s gain approaches 1 / (1 - padding fraction of the padded batches); it also wins when the
model is wide (d_model >= 1024: the MLP and head dominate) or the samples are long and uneven (more padding).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from qwen_omni.omni import pretraining
from qwen_omni.omni.packing import OmniPackingCollator, build_packed_dataset, build_task_samples, parse_task_ratios
from qwen_omni.omni.trainer import MuonWithAdamW, muon_parameter_groups


REPO_ROOT = Path(__file__).resolve().parents[1]


def setup(work_dir: Path, codec: str | None, max_length: int):
    script_args, _ = pretraining.parse_args(
        ["--dataset_name", str(REPO_ROOT / "data" / "demo_corpus"), "--output_dir", str(work_dir)]
        + (["--codec", codec] if codec else [])
    )
    model, processor = pretraining.load_or_build_model(script_args, work_dir)
    rows = pretraining.prepared_rows(script_args, processor, work_dir)
    samples, _ = build_task_samples(rows, processor, parse_task_ratios(script_args.task_ratios), max_length, seed=0)
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


def make_batches(samples, pad_token_id, max_length, tokens_per_batch: int, steps: int, fill_task=None, seed: int = 0):
    """Batches of rows holding about `tokens_per_batch` real tokens; `max_length=None`: one padded sample per row."""
    dataset = build_packed_dataset(samples, max_length, seed=seed, fill_task=fill_task).to_list()
    fill = sum(row["length"] for row in dataset) / (len(dataset) * max_length) if max_length else None
    collator = OmniPackingCollator(pad_token_id, packed=max_length is not None)
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
    return batches, collator.padding_fraction, fill


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--packed_lengths", type=int, nargs="+", default=[512, 1024], help="tokens per packed row")
    parser.add_argument("--steps", type=int, default=8, help="steps per throughput measurement")
    parser.add_argument("--loss_steps", type=int, default=40, help="steps of the Muon / AdamW comparison")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--codec", default=None)
    parser.add_argument("--work_dir", default=None, help="reuse a folder (model + prepared data are cached there)")
    args = parser.parse_args()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_pretrain_"))
    model, processor, samples = setup(work_dir, args.codec, min(args.packed_lengths))
    state, config = model.state_dict(), model.config
    pad = processor.tokenizer.pad_token_id
    print(
        f"corpus: {len(samples)} samples, {sum(len(s['input_ids']) for s in samples)} tokens; model "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; torch threads {torch.get_num_threads()}"
    )

    # 1. packing vs padding: same samples, about the same number of real tokens per step, variants interleaved
    variants = {"padded": make_batches(samples, pad, None, 2048, args.steps)}
    for length in args.packed_lengths:
        variants[f"packed {length}"] = make_batches(samples, pad, length, 2048, args.steps)
        variants[f"packed {length} + text fill"] = make_batches(
            samples, pad, length, 2048, args.steps, fill_task="text"
        )
    names = list(variants)
    rates = {name: [] for name in names}
    ratios = {name: [] for name in names}
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            tokens, seconds, _ = train_steps(state, config, variants[name][0], "adamw", args.lr)
            rates[name].append(tokens / seconds)
        for name in names:
            ratios[name].append(rates[name][-1] / rates["padded"][-1])
        measured = ", ".join(f"{name} {rates[name][-1]:.0f}" for name in names)
        print(f"  repeat {repeat}: {measured} real tokens/s")
    print(
        f"training throughput, real (non-padding) tokens/s, median over {args.repeats} interleaved repeats "
        f"({args.steps} steps of ~2048 real tokens, torch threads {torch.get_num_threads()}):"
    )
    for name in names:
        _, padding, fill = variants[name]
        fill_text = f", rows {fill:.1%} full" if fill is not None else ""
        print(
            f"  {name:<24} {statistics.median(rates[name]):7.0f} tokens/s  {statistics.median(ratios[name]):.2f}x "
            f"padded (repeats {min(ratios[name]):.2f}-{max(ratios[name]):.2f}x); padding fraction of the batches "
            f"{padding:.1%}{fill_text}"
        )

    # 2. Muon vs AdamW: same batches, same learning rate and steps
    batches, _, _ = make_batches(samples, pad, 1024, 2048, args.loss_steps)
    finals = {"muon": [], "adamw": []}
    for repeat in range(args.repeats):
        for name in finals:
            _, _, losses = train_steps(state, config, batches, name, args.lr, seed=repeat)
            finals[name].append(statistics.mean(losses[-5:]))
        print(
            f"  repeat {repeat}: loss after {args.loss_steps} steps (mean of last 5) muon {finals['muon'][-1]:.3f}, "
            f"adamw {finals['adamw'][-1]:.3f}"
        )
    muon, adamw = statistics.median(finals["muon"]), statistics.median(finals["adamw"])
    print(
        f"loss after {args.loss_steps} steps: Muon {muon:.3f}, AdamW {adamw:.3f}, Muon / AdamW = {muon / adamw:.3f} "
        f"(median over {args.repeats} repeats, lr {args.lr})"
    )


if __name__ == "__main__":
    sys.exit(main())
