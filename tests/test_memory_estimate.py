"""`train/sft.py --estimate_memory` (qwen3_omni/memory_estimate.py): exact against measured parameter and optimizer
bytes on a tiny Qwen3-Omni, and the figures of docs/launching_and_memory.md on the real Qwen3-Omni-30B-A3B config (built on the meta device)."""

import os
import re
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model
from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

from qwen_omni.qwen3_omni import build_lora_config, tiny_checkpoints
from qwen_omni.qwen3_omni.memory_estimate import estimate_training_memory
from qwen_omni.qwen3_omni.quantized_experts import quantize_experts


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_CONFIG = os.path.join(REPO, "tests", "fixtures", "qwen3-omni-30b-a3b-instruct.config.json")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
LORA = dict(r=4, lora_alpha=8, expert_r=2)


def tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize(
    "quantized, optim, lora",
    # expert rank 32: the experts' A and B reach bitsandbytes' 4096-value minimum for 8-bit states, the rest stay 32-bit
    [(False, "adamw_torch", LORA), (True, "adamw_torch", LORA), (True, "adamw_bnb_8bit", {**LORA, "expert_r": 32})],
)
def test_estimate_matches_measured_parameter_and_optimizer_bytes_on_a_tiny_model(quantized, optim, lora):
    config = tiny_checkpoints.build_config(tiny_checkpoints.build_tokenizer())
    torch.manual_seed(0)
    thinker = Qwen3OmniMoeThinkerForConditionalGeneration._from_config(config.thinker_config, dtype=torch.float32)
    if quantized:
        assert quantize_experts(thinker) == 4
    model = get_peft_model(thinker, build_lora_config(thinker, **lora))
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if optim == "adamw_bnb_8bit":  # what `Trainer` builds for it: bitsandbytes' AdamW with 8-bit states
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW(trainable, lr=1e-3, optim_bits=8)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    for p in trainable:
        p.grad = torch.ones_like(p)
    optimizer.step()
    # bitsandbytes' quantization code books (`qmap1`, `qmap2`) are one pair shared by every parameter
    measured_optimizer = tensor_bytes(
        t for state in optimizer.state.values() for key, t in state.items() if torch.is_tensor(t) and "qmap" not in key
    )
    assert optim != "adamw_bnb_8bit" or any(
        t.dtype == torch.uint8 for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )

    estimate = estimate_training_memory(
        config, dtype=torch.float32, quantize_experts=quantized, lora_kwargs=lora, optim=optim, sequence_lengths=(64,)
    )
    assert estimate.weights == tensor_bytes(frozen) + tensor_bytes(model.buffers())
    assert estimate.adapter == tensor_bytes(trainable)
    assert estimate.gradients == tensor_bytes(p.grad for p in trainable)
    assert estimate.optimizer == measured_optimizer
    assert estimate.static_total == estimate.weights + estimate.adapter + estimate.gradients + estimate.optimizer
    assert estimate.trainable_parameters == sum(p.numel() for p in trainable)


@pytest.mark.parametrize("quantize_towers", [True, False])
def test_estimate_matches_a_thinker_loaded_in_4bit_byte_for_byte(quantize_towers, tmp_path):
    import bitsandbytes as bnb

    from qwen_omni.qwen3_omni import load_thinker

    checkpoint = tiny_checkpoints.save_tiny_checkpoint(tmp_path / "base")
    thinker = load_thinker(checkpoint, load_in_4bit=True, quantize_towers=quantize_towers, dtype="float32")
    model = get_peft_model(thinker, build_lora_config(thinker, **LORA))
    # a Linear4bit keeps its block scales (and their nested scales and code books) in its quantization state
    quantization_states = [
        tensor
        for module in model.modules()
        if isinstance(module, bnb.nn.Linear4bit)
        for state in (module.weight.quant_state, module.weight.quant_state.state2)
        for tensor in (state.absmax, state.code, getattr(state, "offset", None))
        if tensor is not None
    ]
    measured = (
        tensor_bytes(p for p in model.parameters() if not p.requires_grad)
        + tensor_bytes(model.buffers())
        + tensor_bytes(quantization_states)
    )
    estimate = estimate_training_memory(
        thinker.config,
        dtype=torch.float32,
        load_in_4bit=True,
        quantize_towers=quantize_towers,
        lora_kwargs=LORA,
        sequence_lengths=(64,),
    )
    assert estimate.weights == measured
    assert estimate.adapter == tensor_bytes(p for p in model.parameters() if p.requires_grad)


def readme_rows():
    with open(os.path.join(REPO, "docs", "launching_and_memory.md")) as f:
        text = f.read()
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| `([^`]+)`[^|]*\|" + r"([^|]+)\|" * 7, line)
        if match and match.group(1).split()[0].endswith(".yaml"):
            rows[match.group(1)] = [cell.strip() for cell in match.groups()[1:]]
    return rows


def sft_estimate_output(recipe, model_dir, output_dir, in_process):
    """What `train/sft.py --config train/configs/<recipe> --estimate_memory` prints, through the script itself or its
    parser and `estimate_for_run` in this process (the same code path, without a 10 s interpreter start)."""
    config_file, *flags = recipe.split()
    argv = [
        "--config",
        os.path.join(REPO, "train", "configs", config_file),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(output_dir),
        "--estimate_memory",
        *flags,
    ]
    if in_process:
        from trl import ScriptArguments, TrlParser

        from qwen_omni.qwen3_omni.arguments import Qwen3OmniArguments, Qwen3OmniModelConfig, Qwen3OmniSFTConfig
        from qwen_omni.qwen3_omni.memory_estimate import estimate_for_run

        parser = TrlParser((ScriptArguments, Qwen3OmniSFTConfig, Qwen3OmniModelConfig, Qwen3OmniArguments))
        _, training_args, model_args, omni_args = parser.parse_args_and_config(argv)
        return estimate_for_run(model_args, training_args, omni_args).format()
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train", "sft.py"), *argv],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, in_process",
    [
        ("instruct.yaml", True),
        ("instruct.yaml --load_in_4bit", True),
        ("instruct.yaml --load_in_4bit --quantize_towers false", True),
        ("qlora.yaml --offload_experts", False),
    ],
)
def test_estimate_memory_prints_the_readme_figures_for_the_real_30b_a3b_shape(recipe, in_process, tmp_path):
    os.makedirs(tmp_path / "model")
    with open(REAL_CONFIG) as f, open(tmp_path / "model" / "config.json", "w") as out:
        out.write(f.read())
    lines = sft_estimate_output(recipe, tmp_path / "model", tmp_path / "out", in_process).strip().splitlines()
    assert re.fullmatch(r"static total: \d+\.\d\d GB", lines[-1])
    printed = dict(line.rsplit(": ", 1) for line in lines)
    weights, host, adapter, gradients, optimizer, total, activations = readme_rows()[recipe]
    assert printed["weights"] == f"{weights} GB"
    assert printed.get("experts offloaded to host memory", "- GB") == f"{host} GB"
    assert printed["adapter"] == f"{adapter} GB"
    assert printed["gradients"] == f"{gradients} GB"
    assert printed["optimizer state"] == f"{optimizer} GB"
    assert printed["static total"] == f"{total} GB"
    assert printed["activations at sequence length 4096 (estimate)"] == f"{activations} GB"
    assert not os.path.exists(tmp_path / "out")  # nothing was trained or written
