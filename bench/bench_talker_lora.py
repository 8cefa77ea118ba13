# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Cost of the Talker voice recipe's LoRA (Talker attention + router + experts, code predictor), as ratios in one run.

    HF_HUB_OFFLINE=1 python bench/bench_talker_lora.py                 # defaults: talker hidden 256, 32 experts top-6
    python bench/bench_talker_lora.py --repeats 5 --no_memory          # quicker

Model: a random Qwen3-Omni whose Talker has the real one's structure at a reduced size (MoE layers with a shared
expert, 16 codebooks of 2048 codes, a 3072-id codec vocabulary, a 5-layer code predictor). A batch is `--batch_size`
clips of `--frames` codec frames after a `--prompt_len`-token conversation, teacher-forced as in training
(`talker_voice.talker_voice_forward`: Talker + code predictor, both losses).

Step time, variants on the same weights and batch (CPU time of this process with one torch thread by default, or wall
time after a synchronize on a GPU; round-robin over `--repeats` rounds after a warm-up, medians):

- `frozen_forward`: the frozen Talker and code predictor, forward only, no gradients.
- `frozen_step`: the frozen model, forward + backward of the loss through the activations (the Talker's input
  embeddings require grad, as the trained speaker row makes them in training): what any LoRA step pays besides the
  adapters, as in `bench_moe_lora.py`'s base.
- `peft`: the recipe's adapter with PEFT 0.21's `ParamWrapper` on the experts (`W + dW` for every expert).
- `routed`: the same adapter after `apply_routed_lora` (LoRA on the routed tokens).
- `routed_thinker_recomputed`: `routed` with the frozen Thinker run (without gradients) in the step instead of cached.
- `routed_predictor_mlp`: `routed` plus the opt-in LoRA on the code predictor's MLP weights
  (`--lora_target_code_predictor_mlp`, a weight-level `W + dW`).

The target (`routed / frozen_step <= 1.3`) compares the LoRA step with the frozen step; both steps are also given over
`frozen_forward`.

Memory: the peak resident memory above the level just before one voice step (forward + backward, Thinker included
when it is not cached), in a fresh subprocess per variant, as `bench_moe_lora.py` measures it (`/proc/self/clear_refs`
high-water mark, glibc mmap threshold pinned low; on CUDA `torch.cuda.max_memory_allocated`): `cached` (the Thinker's
outputs computed once per clip before training) vs `recomputed` (the frozen Thinker runs in every step).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from peft import get_peft_model
from transformers import Qwen3OmniMoeForConditionalGeneration

from qwen_omni.qwen3_omni import tiny_checkpoints
from qwen_omni.qwen3_omni.routed_lora import apply_routed_lora  # noqa: E402
from qwen_omni.qwen3_omni.talker_voice import (  # noqa: E402
    TalkerVoiceExample,
    build_talker_lora_config,
    cache_thinker_outputs,
    make_talker_experts_routable,
    talker_voice_examples_forward,
)


TIMED_VARIANTS = (
    "frozen_forward",
    "frozen_step",
    "peft",
    "routed",
    "routed_thinker_recomputed",
    "routed_predictor_mlp",
)
MEMORY_VARIANTS = ("cached", "recomputed")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, batch and clock options (shared with bench_voice_preservation.py)."""
    parser.add_argument("--talker_hidden", type=int, default=256)
    parser.add_argument("--talker_layers", type=int, default=2)
    parser.add_argument("--num_experts", type=int, default=32)
    parser.add_argument("--top_k", type=int, default=6)
    parser.add_argument("--thinker_hidden", type=int, default=512)
    parser.add_argument("--thinker_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--prompt_len", type=int, default=48)
    parser.add_argument("--frames", type=int, default=50, help="codec frames per clip (4 s at 12.5 Hz)")
    parser.add_argument(
        "--lora_r", type=int, default=8, help="8 of 256 is the YAML's 32 of the real Talker's 1024 (rank / hidden)"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory_probe", choices=MEMORY_VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> Qwen3OmniMoeForConditionalGeneration:
    processor = tiny_checkpoints.build_processor()
    config = tiny_checkpoints.build_config(processor.tokenizer)
    text = config.thinker_config.text_config
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = args.thinker_hidden, args.thinker_layers, 1024
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 8, 4, 64
    text.moe_intermediate_size, text.num_experts, text.num_experts_per_tok = 256, 32, 4
    text.rope_parameters["mrope_section"] = [8, 12, 12]
    config.thinker_config.audio_config.output_dim = args.thinker_hidden
    config.thinker_config.vision_config.out_hidden_size = args.thinker_hidden
    talker = config.talker_config
    talker.thinker_hidden_size, talker.accept_hidden_layer = args.thinker_hidden, args.thinker_layers // 2
    talker_text = talker.text_config
    talker_text.hidden_size, talker_text.num_hidden_layers = args.talker_hidden, args.talker_layers
    talker_text.num_attention_heads, talker_text.num_key_value_heads, talker_text.head_dim = 4, 2, 64
    talker_text.moe_intermediate_size, talker_text.shared_expert_intermediate_size = 96, 192
    talker_text.num_experts, talker_text.num_experts_per_tok = args.num_experts, args.top_k
    talker_text.rope_parameters["mrope_section"] = [8, 12, 12]
    # the real codec layout: 2048 codes, 1024 special ids after them
    talker_text.vocab_size = 2048 + 1024
    offset = 2048 - tiny_checkpoints.TINY_CODEBOOK_SIZE
    for name in (
        "codec_pad_id",
        "codec_bos_id",
        "codec_eos_token_id",
        "codec_nothink_id",
        "codec_think_bos_id",
        "codec_think_eos_id",
    ):
        setattr(talker, name, getattr(talker, name) + offset)
    talker.speaker_id = {name: value + offset for name, value in talker.speaker_id.items()}
    predictor = talker.code_predictor_config
    predictor.hidden_size, predictor.num_hidden_layers, predictor.intermediate_size = args.talker_hidden, 5, 512
    predictor.num_attention_heads, predictor.num_key_value_heads, predictor.head_dim = 4, 2, 64
    predictor.vocab_size = 2048
    config.code2wav_config.codebook_size = 2048
    for sub_config in (text, talker_text, predictor):  # derived per-layer lists follow the new depths
        if getattr(sub_config, "layer_types", None):
            sub_config.layer_types = [sub_config.layer_types[0]] * sub_config.num_hidden_layers
    torch.manual_seed(0)
    model = Qwen3OmniMoeForConditionalGeneration(config).to(args.device).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".mlp.experts." in name:  # transformers leaves the Talker's fused experts uninitialised
                parameter.normal_(0.0, 0.02)
    model.requires_grad_(False)
    make_talker_experts_routable(model)
    return model


def make_examples(args: argparse.Namespace, model) -> list[TalkerVoiceExample]:
    generator = torch.Generator().manual_seed(0)
    config = model.config
    examples = []
    for _ in range(args.batch_size):
        vocab = config.thinker_config.text_config.vocab_size
        text_ids = torch.randint(0, 200, (args.prompt_len,), generator=generator).tolist()
        # <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n  + the answer
        prompt = [
            config.im_start_token_id,
            config.user_token_id,
            *text_ids[: args.prompt_len // 2],
            config.im_end_token_id,
            config.im_start_token_id,
            config.assistant_token_id,
            text_ids[-1],
        ]
        answer = text_ids[args.prompt_len // 2 :] + [config.im_end_token_id]
        assert max(prompt + answer) < vocab
        codes = torch.randint(0, 2048, (args.frames, config.talker_config.num_code_groups), generator=generator)
        examples.append(TalkerVoiceExample(torch.tensor(prompt), torch.tensor(prompt + answer), codes))
    return examples


def build_lora(model, moe_lora_impl: str, lora_r: int, predictor_mlp: bool = False):
    speaker = model.config.talker_config.speaker_id["ethan"]
    torch.manual_seed(0)
    config = build_talker_lora_config(
        model, [speaker], r=lora_r, lora_alpha=2 * lora_r, target_code_predictor_mlp=predictor_mlp
    )
    peft_model = get_peft_model(model, config)
    if moe_lora_impl == "routed":
        apply_routed_lora(peft_model)
    return peft_model.get_base_model()


def step(model, examples, train: bool) -> None:
    speaker = model.config.talker_config.speaker_id["ethan"]
    if not train:
        with torch.no_grad():
            talker_voice_examples_forward(model, examples, speaker)
        return
    output = talker_voice_examples_forward(model, examples, speaker)
    output.loss.backward()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_probe(args: argparse.Namespace, variant: str) -> int:
    """Peak bytes above the pre-step level for one voice step (run in its own process)."""
    model = build_lora(build_model(args), "routed", args.lora_r)
    examples = make_examples(args, model)
    if variant == "cached":
        cache_thinker_outputs(model, examples)
    step(model, examples, train=True)  # warm-up
    model.zero_grad(set_to_none=True)
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(model, examples, train=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the VmHWM high-water mark to the current RSS
    step(model, examples, train=True)
    return (_proc_status_kib("VmHWM") - before) * 1024


def peak_memory(variant: str, argv: list[str]) -> int | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", MALLOC_TRIM_THRESHOLD_="0", HF_HUB_OFFLINE="1")
    command = [sys.executable, os.path.abspath(__file__), *argv, "--memory_probe", variant]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  memory probe {variant} failed:\n{result.stderr[-2000:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    if args.memory_probe:
        print(json.dumps({"peak_bytes": memory_probe(args, args.memory_probe)}))
        return
    on_gpu = args.device.startswith("cuda")
    clock = time.perf_counter if on_gpu else time.process_time
    base = build_model(args)
    examples = make_examples(args, base)
    cache_thinker_outputs(base, examples)  # as in training: the step times are the Talker's and code predictor's
    frozen_step_model = copy.deepcopy(base)
    # the trained speaker row makes the Talker's inputs require grad; frozen, make the codec embedding do so instead
    frozen_step_model.talker.get_input_embeddings().weight.requires_grad_(True)
    routed = build_lora(copy.deepcopy(base), "routed", args.lora_r)
    models = {
        "frozen_forward": (base, False),
        "frozen_step": (frozen_step_model, True),
        "peft": (build_lora(copy.deepcopy(base), "peft", args.lora_r), True),
        "routed": (routed, True),
        "routed_thinker_recomputed": (routed, True),
        "routed_predictor_mlp": (build_lora(copy.deepcopy(base), "routed", args.lora_r, predictor_mlp=True), True),
    }
    uncached = [TalkerVoiceExample(example.prompt_ids, example.sequence, example.codes) for example in examples]
    times = {variant: [] for variant in TIMED_VARIANTS}
    for round_index in range(args.repeats + 1):
        order = TIMED_VARIANTS if round_index % 2 == 0 else tuple(reversed(TIMED_VARIANTS))
        for variant in order:
            model, train = models[variant]
            synchronize(args.device)
            start = clock()
            step(model, uncached if variant == "routed_thinker_recomputed" else examples, train)
            synchronize(args.device)
            if round_index:  # round 0 is the warm-up
                times[variant].append(clock() - start)
            model.zero_grad(set_to_none=True)
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    print(
        f"Talker voice step, {args.device}, clock={'wall' if on_gpu else 'cpu'}, threads={args.num_threads}: "
        f"batch {args.batch_size} x ({args.prompt_len} prompt tokens + {args.frames} frames), talker hidden "
        f"{args.talker_hidden} x {args.talker_layers} layers, {args.num_experts} experts top-{args.top_k}, LoRA r "
        f"{args.lora_r}; medians of {args.repeats} interleaved rounds"
    )
    print(f"{'variant':>26} {'ms':>9} {'x frozen_forward':>17} {'x frozen_step':>14}")
    for variant in TIMED_VARIANTS:
        print(
            f"{variant:>26} {medians[variant] * 1e3:>9.1f} {medians[variant] / medians['frozen_forward']:>17.2f} "
            f"{medians[variant] / medians['frozen_step']:>14.2f}"
        )
    print(f"routed / peft step: {medians['routed'] / medians['peft']:.2f}")
    if not args.no_memory:
        peaks = {variant: peak_memory(variant, argv) for variant in MEMORY_VARIANTS}
        if all(peaks.values()):
            print(
                f"peak memory of a voice step: Thinker cached {peaks['cached'] / 2**20:.1f} MiB, recomputed "
                f"{peaks['recomputed'] / 2**20:.1f} MiB (x{peaks['recomputed'] / peaks['cached']:.2f})"
            )


if __name__ == "__main__":
    main()
