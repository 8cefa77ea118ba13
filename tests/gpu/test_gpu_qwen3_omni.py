"""GPU tier, Qwen3-Omni: NF4 fused experts against the dequantized bf16 computation on CUDA, the routed LoRA step on
4-bit experts, `--offload_experts` measured against `--estimate_memory` on a Thinker of the real 30B-A3B widths (a few
layers), offload's step time against resident experts, `train/sft.py --load_in_4bit` then `train/merge.py`, and one
Talker voice step. See tests/gpu/conftest.py for how the tier runs on CPU."""

import gc
import json
import re
import shutil
import statistics
import subprocess
import sys
import time

import pytest
import test_quantized_experts as cpu_experts  # its tiny MoE text model and dequantized twin
import test_talker_voice as cpu_talker  # its clip writer
import torch
from gpu_testing import REPO_ROOT, SCRIPT_ENV, TESTS_DIR, cuda_device, cuda_median_seconds
from peft import get_peft_model
from safetensors.torch import load_file
from script_testing import load_script, seed_recipe_run, sft_parser
from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeThinkerForConditionalGeneration, TrainerCallback

from qwen_omni.qwen3_omni import build_lora_config, load_thinker, tiny_checkpoints
from qwen_omni.qwen3_omni.memory_estimate import GB, estimate_for_run
from qwen_omni.qwen3_omni.peft_lora import silence_false_expert_rank_warning
from qwen_omni.qwen3_omni.quantized_experts import nf4_parametrization, quantize_experts
from qwen_omni.qwen3_omni.routed_lora import apply_routed_lora


pytestmark = pytest.mark.gpu

REAL_CONFIG = TESTS_DIR / "fixtures" / "qwen3-omni-30b-a3b-instruct.config.json"
REAL_WIDTH_LAYERS = 4
SEQUENCE_LENGTH = 1024
MEMORY_TOLERANCE = 0.15
TIMED_STEPS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoints.save_tiny_checkpoint(tmp_path_factory.mktemp("gpu_q") / "base")


@pytest.mark.parametrize("experts_implementation", ["eager", "grouped_mm"])
def test_nf4_fused_experts_forward_and_backward_on_cuda_equal_the_dequantized_bf16(
    experts_implementation, record_figure
):
    model = cpu_experts.tiny_text_model(experts_implementation=experts_implementation)
    twin = cpu_experts.tiny_text_model(experts_implementation=experts_implementation)
    config = cpu_experts.lora_config()
    device = cuda_device("bitsandbytes' CUDA NF4 kernels")
    model, twin = model.to(device, torch.bfloat16), twin.to(device, torch.bfloat16)
    assert quantize_experts(model) == 4  # quantized on the GPU by bitsandbytes' CUDA kernels
    assert nf4_parametrization(model.layers[0].mlp.experts, "gate_up_proj").absmax.device.type == device.type
    reference = cpu_experts.dequantized_twin(model, twin)
    routed = get_peft_model(model, config)
    apply_routed_lora(routed)
    expected = get_peft_model(reference, cpu_experts.lora_config())
    expected.load_state_dict(routed.state_dict(), strict=False)
    input_ids = cpu_experts.INPUT_IDS.to(device)
    got = routed(input_ids=input_ids).last_hidden_state
    want = expected(input_ids=input_ids).last_hidden_state
    record_figure("max_abs_forward_difference", (got - want).abs().max().item())
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    got.float().square().mean().backward()
    want.float().square().mean().backward()
    gradients = {name: p.grad for name, p in routed.named_parameters() if p.requires_grad}
    reference_gradients = {name: p.grad for name, p in expected.named_parameters() if p.requires_grad}
    assert gradients.keys() == reference_gradients.keys() and any(".experts." in name for name in gradients)
    worst = 0.0
    for name, gradient in gradients.items():
        want_gradient = reference_gradients[name]
        scale = want_gradient.abs().max().item() or 1.0
        worst = max(worst, (gradient - want_gradient).abs().max().item() / scale)
        torch.testing.assert_close(gradient, want_gradient, atol=3e-2 * scale, rtol=3e-2, msg=name)
    record_figure("max_relative_gradient_difference", worst)


def test_routed_lora_step_on_4bit_experts_runs_on_cuda(checkpoint, record_figure):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(10, 300, (2, 64), generator=generator)
    device = cuda_device("a 4-bit Thinker on the GPU")
    thinker = load_thinker(checkpoint, load_in_4bit=True, dtype="bfloat16")
    experts = thinker.model.language_model.layers[0].mlp.experts
    codes_before = experts.parametrizations.gate_up_proj.original.detach().clone()
    assert codes_before.device.type == device.type and codes_before.dtype == torch.uint8
    with silence_false_expert_rank_warning():
        model = get_peft_model(thinker, build_lora_config(thinker, r=4, lora_alpha=8, expert_r=2))
    assert apply_routed_lora(model) > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    input_ids = input_ids.to(device)
    losses = []
    for _ in range(3):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    record_figure("losses", losses)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert torch.equal(experts.parametrizations.gate_up_proj.original, codes_before)  # the 4-bit base is frozen
    lora_b = {name: p for name, p in model.named_parameters() if "lora_B" in name}
    assert any(".mlp.experts." in name for name in lora_b)
    assert all(p.abs().sum() > 0 for p in lora_b.values())  # B starts at zero: every adapter trained


def real_width_thinker_config():
    """The real Qwen3-Omni-30B-A3B Thinker config with `REAL_WIDTH_LAYERS` decoder layers (expert, hidden, attention
    and vocabulary widths as shipped) and one-layer towers (their widths as shipped)."""
    thinker = Qwen3OmniMoeConfig.from_json_file(str(REAL_CONFIG)).thinker_config
    thinker.text_config.num_hidden_layers = REAL_WIDTH_LAYERS
    thinker.audio_config.encoder_layers = 1
    thinker.vision_config.depth = 1
    thinker.vision_config.deepstack_visual_indexes = [0]
    return thinker


class StepProbe(TrainerCallback):
    """Peak CUDA memory of the training (weights already loaded), the time of each optimizer step, and, with offload,
    how many layer copies a step starts and how long one layer's copy takes alone."""

    def __init__(self):
        self.step_seconds, self.peak_bytes, self.transfers, self.layer_copy_seconds = [], 0, 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.step_seconds.append(time.perf_counter() - self._start)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        torch.cuda.synchronize()
        self.peak_bytes = torch.cuda.max_memory_allocated()
        offloader = next((m._expert_offloader for m in model.modules() if hasattr(m, "_expert_offloader")), None)
        if offloader is not None:
            self.transfers = len(offloader.transfers) / state.global_step
            host = offloader.host[0]
            assert all(tensor.device.type == "cpu" and tensor.is_pinned() for tensor in host)
            self.layer_copy_seconds = cuda_median_seconds(lambda: [t.to("cuda", non_blocking=True) for t in host])


@pytest.fixture(scope="module")
def real_width_runs(tmp_path_factory):
    """`train/sft.py --config qlora.yaml` with and without `--offload_experts` on a real-width Thinker: the
    `--estimate_memory` figures for each (CPU), then (CUDA) each run's peak memory and step times."""
    root = tmp_path_factory.mktemp("real_width")
    model_dir = root / "thinker"
    real_width_thinker_config().save_pretrained(model_dir)
    # text-only rows: the tiny tokenizer's ids are all text ids of the real vocabulary
    tiny_checkpoints.build_processor().save_pretrained(model_dir)
    reply = " ".join(["the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9"] * 80)
    rows = [{"messages": [{"role": "user", "content": "Read this."}, {"role": "assistant", "content": reply}]}] * 8
    (root / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    sft = load_script("sft")
    parser = sft_parser(sft)
    recipes = {"qlora.yaml": [], "qlora.yaml --offload_experts": ["--offload_experts"]}

    def argv(name, flags):
        return [
            "--config",
            str(REPO_ROOT / "train" / "configs" / "qlora.yaml"),
            "--model_name_or_path",
            str(model_dir),
            "--dataset_name",
            str(root / "train.jsonl"),
            "--output_dir",
            str(root / name),
            "--max_length",
            str(SEQUENCE_LENGTH),
            "--max_steps",
            str(TIMED_STEPS),
            "--gradient_accumulation_steps",
            "1",
            "--warmup_steps",
            "0",
            "--lr_scheduler_type",
            "constant",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--dataloader_num_workers",
            "0",
            "--disable_tqdm",
            "true",
            *flags,
        ]

    estimates = {}
    for name, flags in recipes.items():
        _, training_args, model_args, omni_args = parser.parse_args_and_config(
            args=[*argv(name.replace(" ", "_"), flags), "--estimate_memory"]
        )
        estimate = estimate_for_run(model_args, training_args, omni_args)  # what --estimate_memory prints
        assert (estimate.host_offloaded > 0) == bool(flags)
        estimates[name] = estimate.static_total + estimate.activations[SEQUENCE_LENGTH]
    assert estimates["qlora.yaml --offload_experts"] < estimates["qlora.yaml"]  # 2 of the 4 layers' experts leave

    device = cuda_device("the real-width Thinker is trained on the GPU")
    torch.manual_seed(0)
    with torch.device(device):
        thinker = Qwen3OmniMoeThinkerForConditionalGeneration._from_config(
            real_width_thinker_config(), dtype=torch.bfloat16
        )
    with torch.no_grad():
        for name, parameter in thinker.named_parameters():
            if ".mlp.experts." in name:  # not initialised by every transformers version
                parameter.normal_(0.0, 0.02)
    thinker.save_pretrained(model_dir)
    del thinker
    gc.collect()
    torch.cuda.empty_cache()

    class ProbedTrainer(sft.Qwen3OmniSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(probe)

    runs = {}
    for name, flags in recipes.items():
        probe = StepProbe()
        sft.Qwen3OmniSFTTrainer = ProbedTrainer
        # what an earlier run may have left allocated is not this run's
        baseline = torch.cuda.memory_allocated()
        sft.main(*parser.parse_args_and_config(args=argv(name.replace(" ", "_"), flags)))
        gc.collect()
        torch.cuda.empty_cache()
        runs[name] = {"estimate": estimates[name], "probe": probe, "baseline": baseline}
    shutil.rmtree(model_dir)  # ~6 GB
    return runs


@pytest.mark.parametrize("recipe", ["qlora.yaml", "qlora.yaml --offload_experts"])
def test_training_peak_memory_is_within_15_percent_of_estimate_memory(real_width_runs, recipe, record_figure):
    run = real_width_runs[recipe]
    measured, estimated = run["probe"].peak_bytes - run["baseline"], run["estimate"]
    record_figure(
        "memory_recipe", f"{recipe} (real 30B-A3B widths, {REAL_WIDTH_LAYERS} layers, sequence {SEQUENCE_LENGTH})"
    )
    record_figure("memory_allocated_before_the_run_gb", round(run["baseline"] / GB, 3), "GB")
    record_figure("memory_measured_gb", round(measured / GB, 3), "GB")
    record_figure("memory_estimated_gb", round(estimated / GB, 3), "GB")
    record_figure("memory_measured_over_estimated", round(measured / estimated, 3))
    assert abs(measured - estimated) <= MEMORY_TOLERANCE * estimated, (measured / GB, estimated / GB)


def test_offload_step_time_against_resident_experts_shows_the_copy_overlapped(real_width_runs, record_figure):
    resident_probe = real_width_runs["qlora.yaml"]["probe"]
    offload_probe = real_width_runs["qlora.yaml --offload_experts"]["probe"]
    resident = statistics.median(resident_probe.step_seconds[1:])  # the first step allocates the optimizer state
    offload = statistics.median(offload_probe.step_seconds[1:])
    copy = offload_probe.transfers * offload_probe.layer_copy_seconds
    record_figure("resident_step_seconds", round(resident, 4), "s")
    record_figure("offload_step_seconds", round(offload, 4), "s")
    record_figure("offload_over_resident", round(offload / resident, 3), "x")
    record_figure("copies_per_step_seconds_alone", round(copy, 4), "s")
    # the forward and the checkpointed backward both stream: each step copies every layer but the two kept resident
    # where the direction turns (the first step two more: nothing is resident yet)
    assert offload_probe.transfers >= 2 * REAL_WIDTH_LAYERS - 4
    # run one after the other, compute and copies would take resident + copy; overlapped, a part of the smaller hides
    hidden = (resident + copy - offload) / min(resident, copy)
    record_figure("overlap_hidden_fraction", round(hidden, 3))
    assert hidden >= 0.1, (resident, offload, copy)


def test_sft_script_with_load_in_4bit_on_cuda_then_merge(checkpoint, tmp_path, record_figure):
    out, argv = seed_recipe_run(checkpoint, tmp_path, "bfloat16")
    merged = tmp_path / "merged"
    parser = sft_parser(load_script("sft"))
    _, _, model_args, _ = parser.parse_args_and_config(args=argv)
    assert model_args.load_in_4bit and model_args.quantize_experts
    device = cuda_device("train/sft.py trains on the GPU")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train" / "sft.py"), *argv],
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert f"(local rank 0) on {device.type}" in log
    losses = [float(value) for value in re.findall(r"'loss': '?([0-9.]+)", log)]
    record_figure("losses", losses)
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.2, losses
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train" / "merge.py"),
            "--adapter",
            str(out),
            "--output_dir",
            str(merged),
            "--base_model",
            checkpoint,
        ],
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    base, folded = load_file(f"{checkpoint}/model.safetensors"), load_file(merged / "model.safetensors")
    experts = [name for name in base if ".mlp.experts." in name and name.startswith("thinker.")]
    assert experts and base.keys() == folded.keys()
    assert any(not torch.equal(base[name], folded[name]) for name in experts)  # the expert update was folded in


def test_talker_voice_recipe_one_step_on_cuda(tmp_path, record_figure):
    base = tiny_checkpoints.save_tiny_checkpoint(tmp_path / "base")
    mimi = tiny_checkpoints.save_tiny_mimi(tmp_path / "mimi")
    data = cpu_talker.write_clips(tmp_path / "data")
    out = tmp_path / "voice"
    argv = [
        "--config",
        str(REPO_ROOT / "train" / "configs" / "talker_voice.yaml"),
        "--model_name_or_path",
        base,
        "--dataset_name",
        data,
        "--codec_name_or_path",
        mimi,
        "--output_dir",
        str(out),
        "--speaker_name",
        "nova",
        "--dtype",
        "bfloat16",
        "--per_device_train_batch_size",
        "3",
        "--gradient_accumulation_steps",
        "1",
        "--max_steps",
        "1",
        "--warmup_steps",
        "0",
        "--learning_rate",
        "1e-3",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--lora_expert_r",
        "2",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    voice = load_script("talker_voice_sft")
    parser = voice.TrlParser(
        (voice.ScriptArguments, voice.Qwen3OmniSFTConfig, voice.Qwen3OmniModelConfig, voice.TalkerVoiceArguments)
    )
    parser.parse_args_and_config(args=argv)  # the flags as the script reads them
    device = cuda_device("the Talker voice recipe trains on the GPU")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train" / "talker_voice_sft.py"), *argv],
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert f"(local rank 0) on {device.type}" in log
    losses = [float(value) for value in re.findall(r"'loss': '?([0-9.]+)", log)]
    record_figure("loss", losses)
    assert len(losses) == 1 and 0 < losses[0] < float("inf")
    weights = load_file(out / "adapter_model.safetensors")
    assert any(".mlp.experts." in name for name in weights)
    assert all(value.abs().sum() > 0 for name, value in weights.items() if ".lora_B." in name)
