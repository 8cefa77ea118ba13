"""Publishing: the card's YAML metadata, the code-file and clean-process checks, and everything up to HfApi."""

import json
import shutil

import pytest
from huggingface_hub import HfApi

from qwen_omni.common.hub import build_model_card, check_folder, push_to_hub, required_code_files, validate_repo_id

from omni_testing import front_matter, usage_code


CODE_FILES = ["configuration_omni.py", "feature_extraction_omni.py", "modeling_omni.py", "processing_omni.py"]
REPORT = {
    "dataset": "data/voice_clips",
    "num_clips": 2,
    "asr": {"wer": 0.5, "cer": 0.25},
    "tts_intelligibility": {"wer": 0.75, "cer": 0.5, "transcriber": "self"},
    "codec": {"mel_distance": 0.3, "si_sdr": 4.0},
    "teacher_forced": {"audio_perplexity": 12.0},
}


@pytest.fixture
def model_folder(tmp_path, omni_dir):
    folder = tmp_path / "model"
    shutil.copytree(omni_dir, folder)
    (folder / "eval").mkdir()
    (folder / "eval" / "eval_results.json").write_text(json.dumps(REPORT))
    return folder


def test_push_checks_then_uploads(model_folder, monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))
    monkeypatch.setattr(
        HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw)) or "https://hf.co/commit/1"
    )

    assert (
        push_to_hub(model_folder, "someone/omni-nova", datasets=["someone/nova-clips"], base_model="someone/omni-base")
        == "https://hf.co/commit/1"
    )
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    upload = calls[1][1]
    assert upload["repo_id"] == "someone/omni-nova" and upload["folder_path"] == str(model_folder)
    uploaded = {p.name for p in model_folder.iterdir()}
    assert set(CODE_FILES) <= uploaded and set(required_code_files(model_folder)) <= uploaded
    assert {"config.json", "model.safetensors", "audio_tokenizer", "README.md"} <= uploaded

    card = (model_folder / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-to-speech"
    assert {"custom_code", "snac"} <= set(meta["tags"])
    assert meta["base_model"] == "someone/omni-base" and meta["datasets"] == ["someone/nova-clips"]
    assert meta["license"] == "apache-2.0"
    metrics = {
        (r["task"]["type"], m["name"]): m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]
    }
    assert metrics[("automatic-speech-recognition", "WER")] == 0.5
    assert metrics[("text-to-speech", "Intelligibility WER")] == 0.75
    assert metrics[("text-to-speech", "Codec SI-SDR (dB)")] == 4.0
    assert "trust_remote_code=True" in card and 'from_pretrained("someone/omni-nova"' in card


@pytest.mark.parametrize("repo_id", ["omni-nova", "a/b/c", "owner/", "/name", "own er/name", None])
def test_bad_repo_id_is_refused_before_anything(repo_id, model_folder, monkeypatch):
    monkeypatch.setattr(HfApi, "upload_folder", lambda *a, **k: pytest.fail("uploaded"))
    with pytest.raises(ValueError, match="not of the form 'owner/name'"):
        push_to_hub(model_folder, repo_id)
    assert validate_repo_id("Some-Org/omni_nova.v2") == "Some-Org/omni_nova.v2"


def test_folder_missing_code_files_is_refused(model_folder, monkeypatch):
    monkeypatch.setattr(HfApi, "upload_folder", lambda *a, **k: pytest.fail("uploaded"))
    (model_folder / "processing_omni.py").unlink()
    with pytest.raises(ValueError, match=r"lacks the code files \['processing_omni.py'\]"):
        push_to_hub(model_folder, "someone/omni-nova")


def test_code_files_come_from_auto_map(model_folder):
    auto_map = json.loads((model_folder / "config.json").read_text())["auto_map"]
    assert {value.split(".")[0] + ".py" for value in auto_map.values()} <= set(required_code_files(model_folder))
    assert set(CODE_FILES) <= set(check_folder(model_folder))


def test_adapter_card(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "Qwen/Qwen3-Omni-30B-A3B-Instruct", "peft_type": "LORA"})
    )
    (folder / "adapter_model.safetensors").write_bytes(b"")
    check_folder(folder)
    card = str(build_model_card(folder, "someone/omni-lora"))
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["base_model"] == "Qwen/Qwen3-Omni-30B-A3B-Instruct"
    # a Qwen3-Omni Thinker adapter loads onto transformers' own class, without remote code
    usage = usage_code(card)
    assert 'Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained("Qwen/Qwen3-Omni-30B-A3B-Instruct"' in usage
    assert "trust_remote_code" not in card and "lora_dropout" not in usage
    # an adapter trained with dropout on the router / experts: PEFT's wrapper refuses it at load, the snippet sets it 0
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "base_model_name_or_path": "Qwen/Qwen3-Omni-30B-A3B-Instruct",
                "peft_type": "LORA",
                "lora_dropout": 0.1,
                "target_parameters": ["model.language_model.layers.0.mlp.gate.weight"],
            }
        )
    )
    assert "config.lora_dropout = 0.0" in usage_code(str(build_model_card(folder, "someone/omni-lora")))
    not_ours = tmp_path / "plain"
    not_ours.mkdir()
    (not_ours / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="neither an Omni model nor a LoRA adapter"):
        build_model_card(not_ours, "someone/plain")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="no adapter_model.safetensors"):
        check_folder(folder)
