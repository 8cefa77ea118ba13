# Copyright 2025 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Cost of LoRA on Qwen3-Omni's attention + MoE router + fused experts, as ratios to the frozen base, in one run.

    HF_HUB_OFFLINE=1 python bench/bench_moe_lora.py            # defaults: 32 experts, top-4, hidden 256
    python bench/bench_moe_lora.py --seq_len 128 --repeats 5   # quicker

Model: a random Qwen3-Omni thinker *text model* (`Qwen3OmniMoeThinkerTextModel`), every layer a sparse MoE block.
For each experts implementation ("eager", "grouped_mm") three variants are timed on the same weights and inputs:

- `base`:   the frozen model, no LoRA. The input embeddings require grad so that backward runs through every layer,
            which is what a LoRA step must do anyway (LoRA sits in layer 0, so activation gradients flow through the
            whole stack); the ratio therefore isolates what the adapters add, not the cost of having a backward at all.
- `peft`:   PEFT 0.21 LoRA via `target_modules` (q/k/v/o_proj) + `target_parameters` (`mlp.gate.weight`,
            `mlp.experts.gate_up_proj`, `mlp.experts.down_proj`), i.e. PEFT's `ParamWrapper` on the experts.
- `routed`: the same adapter after `apply_routed_lora` (qwen3_omni_moe/routed_lora.py): LoRA on the routed tokens.
- `routed_4bit`: the same adapter and routed forward over the same experts stored in NF4 (double-quantized,
            `quantized_experts.py`), dequantized per hit expert (eager) or as a transient stack (grouped_mm);
            `routed_4bit / routed` is the step-time cost of 4-bit experts.
- `peft_4bit`: PEFT's own wrapper over the same 4-bit experts (`apply_peft_lora`, `qwen3_omni/peft_lora.py`), which
            dequantizes the whole stack and adds `dW` at every forward; `peft_4bit / peft` is its cost of 4-bit.
- `base_routed_path`: the frozen model, no LoRA, with its experts run by the routed forward's own code path
            (`routed_lora_experts_forward` without factors). The routed eager path sorts the (token, expert) pairs
            instead of transformers' one-hot loop, so `routed / base_routed_path` is the pure cost of the adapters
            and shows whether part of `routed / base` comes from a different base computation.

A step is forward + `loss.backward()` with `loss = mean(last_hidden_state ** 2)`, timed on CPU by this process's CPU
time with one torch thread (`--clock cpu`, the default there: other jobs on a shared 2-core machine inflate wall
time by whole multiples but barely touch CPU time; `--clock wall --num_threads 2` measures elapsed time instead) and
on GPU by wall time after a synchronize. The variants are run round-robin
(`--repeats` rounds after `--warmup` rounds) so that drift on a shared machine hits them alike; the medians and their
ratios to `base` are printed. Compare ratios within one run only.

Memory, two honest figures (CPU has no allocator statistics like `torch.cuda.max_memory_allocated`):

- `peak`:  the peak resident memory *above* the resident memory just before one step, in a fresh subprocess per
           variant (after a warm-up step; the kernel's high-water mark is reset through `/proc/self/clear_refs`, and
           glibc's mmap threshold is pinned low with heap trimming on, so freed tensors go back to the OS instead of
           hiding in the heap; allocations under 16 KiB can still be reused unseen, so it slightly undercounts). It
           counts activations, transient `W + dW` stacks and gradients. On CUDA `torch.cuda.max_memory_allocated`
           is used instead.
- `saved`: the bytes of tensors autograd saves for backward during the forward (unique storages, parameters
           excluded), counted with `torch.autograd.graph.saved_tensors_hooks`: exact and deterministic, but blind to
           transients that live only inside the forward or the backward.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3OmniMoeTextConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel

from qwen_omni.qwen3_omni.peft_lora import apply_peft_lora
from qwen_omni.qwen3_omni.quantized_experts import quantize_experts
from qwen_omni.qwen3_omni.routed_lora import apply_routed_lora, routed_lora_experts_forward


VARIANTS = ("base", "base_routed_path", "peft", "routed", "routed_4bit", "peft_4bit")
IMPLEMENTATIONS = ("eager", "grouped_mm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_experts", type=int, default=32)
    parser.add_argument("--top_k", type=int, default=4)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--moe_intermediate_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of every target (attention, router, experts)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="cpu: this process's CPU time, which other processes on a shared machine barely disturb (default on "
        "CPU, with --num_threads 1 so that idle OpenMP threads spinning are not counted); wall: elapsed time "
        "(default on GPU)",
    )
    parser.add_argument("--num_threads", type=int, help="torch CPU threads (default: 1 with --clock cpu)")
    parser.add_argument("--no_memory", action="store_true", help="skip the per-variant peak-memory subprocesses")
    parser.add_argument("--memory_probe", nargs=2, metavar=("IMPLEMENTATION", "VARIANT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def grouped_mm_unsupported_reason(device: str) -> str | None:
    """Why torch's grouped matmul cannot run here (None when it can); transformers would fall back to a loop."""
    grouped_mm = getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    if grouped_mm is None:
        return f"torch {torch.__version__} has neither torch.nn.functional.grouped_mm nor torch._grouped_mm"
    try:
        inputs = torch.randn(8, 16, device=device)
        weights = torch.randn(2, 16, 16, device=device)
        grouped_mm(inputs, weights, offs=torch.tensor([3, 8], dtype=torch.int32, device=device))
    except (RuntimeError, NotImplementedError) as error:
        return f"torch {torch.__version__} grouped_mm fails on {device}: {error}"
    return None


def build_variants(args: argparse.Namespace, implementation: str) -> dict[str, torch.nn.Module]:
    config = Qwen3OmniMoeTextConfig(
        vocab_size=256,
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        moe_intermediate_size=args.moe_intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=args.hidden_size // 4,
        num_experts=args.num_experts,
        num_experts_per_tok=args.top_k,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    torch.manual_seed(0)
    base = Qwen3OmniMoeThinkerTextModel(config).to(args.device)
    base.set_experts_implementation(implementation)
    base.requires_grad_(False)
    lora_config = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
        # B != 0 so that the adapter changes the output and the equality check below means something
        init_lora_weights=False,
    )
    peft_model = get_peft_model(copy.deepcopy(base), lora_config)
    routed_model = copy.deepcopy(peft_model)
    # per layer: router weight, experts gate_up_proj and down_proj
    if apply_routed_lora(routed_model) != 3 * args.num_layers:
        raise RuntimeError("apply_routed_lora did not convert the router and experts wrappers of every layer")
    quantized = copy.deepcopy(base)
    quantize_experts(quantized)
    # PEFT matches a parametrized (4-bit) tensor by its module's full name only
    quantized_config = copy.copy(lora_config)
    quantized_config.target_parameters = [
        f"layers.{layer}.{name}" for layer in range(args.num_layers) for name in lora_config.target_parameters
    ]
    quantized_for_peft = copy.deepcopy(quantized)
    routed_4bit = get_peft_model(quantized, quantized_config)
    apply_routed_lora(routed_4bit)
    routed_4bit.load_state_dict(routed_model.state_dict(), strict=False)  # the same adapter weights
    peft_4bit = get_peft_model(quantized_for_peft, quantized_config)
    apply_peft_lora(peft_4bit)
    peft_4bit.load_state_dict(routed_model.state_dict(), strict=False)
    base_routed_path = copy.deepcopy(base)
    no_lora = {"gate_up_proj": [], "down_proj": []}
    for layer in base_routed_path.layers:
        layer.mlp.experts.forward = functools.partial(routed_lora_experts_forward, layer.mlp.experts, lora=no_lora)
    return {
        "base": base,
        "base_routed_path": base_routed_path,
        "peft": peft_model,
        "routed": routed_model,
        "routed_4bit": routed_4bit,
        "peft_4bit": peft_4bit,
    }


def make_inputs(args: argparse.Namespace) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(args.batch_size, args.seq_len, args.hidden_size, generator=generator)
    return embeds.to(args.device).requires_grad_(True)


def train_step(model: torch.nn.Module, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Forward + backward; returns the last hidden state (detached) for the equality check."""
    model.zero_grad(set_to_none=True)
    inputs_embeds.grad = None
    hidden = model(inputs_embeds=inputs_embeds).last_hidden_state
    hidden.float().pow(2).mean().backward()
    return hidden.detach()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def saved_tensor_bytes(model: torch.nn.Module, inputs_embeds: torch.Tensor) -> int:
    """Bytes of the unique non-parameter storages autograd saves during one forward."""
    parameter_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_ptrs:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        hidden = model(inputs_embeds=inputs_embeds).last_hidden_state
    del hidden
    return sum(saved.values())


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_probe(args: argparse.Namespace, implementation: str, variant: str) -> int:
    """Peak bytes above the pre-step level for one step of one variant (run in its own process)."""
    model = build_variants(args, implementation)[variant]
    gc.collect()
    inputs_embeds = make_inputs(args)
    train_step(model, inputs_embeds)  # warm-up: lazy allocations, autograd graph caches
    model.zero_grad(set_to_none=True)
    inputs_embeds.grad = None
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step(model, inputs_embeds)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the VmHWM high-water mark to the current RSS
    train_step(model, inputs_embeds)
    return (_proc_status_kib("VmHWM") - before) * 1024


def peak_memory(args: argparse.Namespace, implementation: str, variant: str, argv: list[str]) -> int | None:
    # every allocation >= 16 KiB gets its own mmap (unmapped on free) and the heap top is trimmed on free, so memory
    # freed after the warm-up step cannot be silently reused without showing up in the step's peak
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", MALLOC_TRIM_THRESHOLD_="0", HF_HUB_OFFLINE="1")
    command = [sys.executable, os.path.abspath(__file__), *argv, "--memory_probe", implementation, variant]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  memory probe {implementation}/{variant} failed:\n{result.stderr[-2000:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def bench_implementation(args: argparse.Namespace, implementation: str, argv: list[str]) -> None:
    models = build_variants(args, implementation)
    inputs_embeds = make_inputs(args)

    outputs = {variant: train_step(models[variant], inputs_embeds) for variant in ("peft", "routed")}
    max_output_diff = (outputs["peft"] - outputs["routed"]).abs().max().item()
    peft_grads = {n: p.grad for n, p in models["peft"].named_parameters() if p.requires_grad}
    routed_grads = {n: p.grad for n, p in models["routed"].named_parameters() if p.requires_grad}
    max_grad_diff = max((peft_grads[n] - routed_grads[n]).abs().max().item() for n in peft_grads)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_idx in range(args.warmup + args.repeats):
        for variant in VARIANTS:
            synchronize(args.device)
            start = clock()
            train_step(models[variant], inputs_embeds)
            synchronize(args.device)
            if round_idx >= args.warmup:
                times[variant].append(clock() - start)
    medians = {variant: statistics.median(values) for variant, values in times.items()}

    saved = {variant: saved_tensor_bytes(models[variant], inputs_embeds) for variant in VARIANTS}
    del models
    gc.collect()
    peaks = {}
    if not args.no_memory:
        peaks = {variant: peak_memory(args, implementation, variant, argv) for variant in VARIANTS}

    print(f"\n== experts_implementation={implementation} ==")
    print(f"routed vs peft: max |output diff| {max_output_diff:.2e}, max |lora grad diff| {max_grad_diff:.2e}")
    print(
        f"{'variant':<16} {'step ms (median)':>17} {'min..max ms':>17} {'x base':>7} {'saved MiB':>10} "
        f"{'x base':>7} {'peak MiB':>9} {'x base':>7}"
    )
    for variant in VARIANTS:
        peak = peaks.get(variant)
        peak_columns = (
            f"{peak / 2**20:>9.1f} {peak / peaks['base']:>7.2f}"
            if peak is not None and peaks.get("base")
            else f"{'n/a':>9} {'n/a':>7}"
        )
        print(
            f"{variant:<16} {medians[variant] * 1e3:>17.1f} "
            f"{f'{min(times[variant]) * 1e3:.0f}..{max(times[variant]) * 1e3:.0f}':>17} "
            f"{medians[variant] / medians['base']:>7.2f} {saved[variant] / 2**20:>10.1f} "
            f"{saved[variant] / saved['base']:>7.2f} {peak_columns}"
        )
    print(
        f"adapter cost on the same experts code path: routed / base_routed_path = "
        f"{medians['routed'] / medians['base_routed_path']:.2f}x step time"
    )
    print(
        f"4-bit experts: routed_4bit / routed = {medians['routed_4bit'] / medians['routed']:.2f}x step time; "
        f"peft_4bit / peft = {medians['peft_4bit'] / medians['peft']:.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.clock = args.clock or ("wall" if args.device.startswith("cuda") else "cpu")
    args.num_threads = args.num_threads or (1 if args.clock == "cpu" else None)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.memory_probe:
        print(json.dumps({"peak_bytes": memory_probe(args, *args.memory_probe)}))
        return
    probe_argv = [a for a in argv if a != "--no_memory"]
    print(
        f"torch {torch.__version__} on {args.device} ({torch.get_num_threads()} threads); "
        f"{args.num_layers} MoE layers, "
        f"{args.num_experts} experts top-{args.top_k}, hidden {args.hidden_size}, expert intermediate "
        f"{args.moe_intermediate_size}, {args.batch_size}x{args.seq_len} tokens, LoRA r={args.rank} on q/k/v/o + "
        f"router + experts; median of {args.repeats} rounds after {args.warmup} warm-up; {args.clock} clock"
    )
    for implementation in args.implementations:
        if implementation == "grouped_mm" and (reason := grouped_mm_unsupported_reason(args.device)):
            print(f"\n== experts_implementation=grouped_mm skipped: {reason}")
            continue
        bench_implementation(args, implementation, probe_argv)


if __name__ == "__main__":
    main()
