"""LoRA SFT of a tiny random Qwen3-Omni (thinker + talker + code2wav) with `train/sft.py` and `train/merge.py`."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from script_testing import AUDIO_TURN, IMAGE_TURN, load_script, mixed_conversation_rows, reply, sft_parser
from transformers import AutoProcessor, Qwen3OmniMoeForConditionalGeneration

from qwen_omni.qwen3_omni import (
    ModalityLossWeights,
    Qwen3OmniSFTCollator,
    Qwen3OmniSFTTrainer,
    build_lora_config,
    load_conversation_dataset,
    load_thinker,
    tiny_checkpoints,
)
from qwen_omni.qwen3_omni.arguments import Qwen3OmniSFTConfig
from qwen_omni.qwen3_omni.conversations import decode_media


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_omni_sft")
    checkpoint = tiny_checkpoints.save_tiny_checkpoint(root / "base")
    tiny_checkpoints.write_media(root / "data")
    rows = mixed_conversation_rows(4)
    # A row that names an audio it does not give: refused at load time, counted in the run's data report
    rows.append({"conversations": [{"role": "user", "content": "<audio>What do you hear?"}, reply("A tone.")]})
    with open(root / "data" / "train.jsonl", "w") as f:
        f.write("\n".join(json.dumps(row) for row in rows))
    return {"root": root, "base": checkpoint, "data": str(root / "data" / "train.jsonl")}


@pytest.fixture(scope="module")
def processor(workdir):
    return AutoProcessor.from_pretrained(workdir["base"])


def test_thinker_loads_from_full_and_thinker_only_checkpoints(workdir, tmp_path):
    thinker = load_thinker(workdir["base"])
    assert thinker.config.model_type == "qwen3_omni_moe_thinker"
    assert thinker.config._experts_implementation == ("grouped_mm" if torch.cuda.is_available() else "eager")
    full = Qwen3OmniMoeForConditionalGeneration.from_pretrained(workdir["base"])
    reference = full.thinker.state_dict()
    assert sorted(thinker.state_dict()) == sorted(reference)
    assert all(torch.equal(value, reference[name]) for name, value in thinker.state_dict().items())
    assert not any(name.startswith(("talker", "code2wav")) for name, _ in thinker.named_parameters())

    thinker.save_pretrained(tmp_path / "thinker")
    again = load_thinker(str(tmp_path / "thinker"), experts_implementation="grouped_mm")
    assert again.config._experts_implementation == "grouped_mm"
    assert all(torch.equal(value, reference[name]) for name, value in again.state_dict().items())


def test_lora_lands_on_attention_router_and_experts_only(workdir):
    thinker = load_thinker(workdir["base"])
    config = build_lora_config(thinker, r=4, lora_alpha=8, expert_r=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = get_peft_model(thinker, config)
    # PEFT 0.21 reports the experts' rank_pattern as ignored (it checks module names only), but applies it (below);
    # the recipe's trainer silences that one report (test_trainer_uses_the_routed_expert_lora_by_default)
    assert [str(w.message) for w in caught if "did not match any targeted module" in str(w.message)] == [
        f"The following {key} keys did not match any targeted module and were ignored: "
        "['mlp.experts.down_proj', 'mlp.experts.gate_up_proj']."
        for key in ("rank_pattern", "alpha_pattern")
    ]
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    adapted = {name.split(".lora_")[0].replace(".base_layer", "") for name in trainable}
    expected = set()
    for layer in range(2):
        prefix = f"base_model.model.model.language_model.layers.{layer}"
        expected |= {f"{prefix}.self_attn.{proj}" for proj in ("q_proj", "k_proj", "v_proj", "o_proj")}
        expected |= {f"{prefix}.mlp.gate", f"{prefix}.mlp.experts"}
    assert adapted == expected
    assert not any("audio_tower" in name or "visual" in name for name in trainable)
    # Router, gate_up_proj and down_proj wrappers: rank 4 for the router, 2 per expert (8 experts) for the experts
    ranks = {
        name.replace("base_model.model.model.language_model.layers.0.", ""): module.lora_A["default"].out_features
        for name, module in model.named_modules()
        if hasattr(module, "parameter_name") and "layers.0." in name
    }
    assert sorted(ranks.values()) == [4, 16, 16]


def test_towers_get_lora_only_when_asked(workdir):
    thinker = load_thinker(workdir["base"])
    config = build_lora_config(thinker, towers=["audio"], target_router=False, target_experts=False)
    assert any(name.startswith("model.audio_tower.layers.0.self_attn.") for name in config.target_modules)
    assert not any(name.startswith("model.visual.") for name in config.target_modules)
    assert config.target_parameters is None


def test_nonzero_lora_dropout_with_parameter_targets_is_a_clear_error(workdir):
    thinker = load_thinker(workdir["base"])
    with pytest.raises(ValueError, match=r"lora_dropout=0\.1 .*PEFT's wrapper .*`--moe_lora_impl routed`"):
        build_lora_config(thinker, lora_dropout=0.1, moe_lora_impl="peft")
    # the routed LoRA (default) takes it on the router and experts too: tests/test_quantized_experts.py
    assert build_lora_config(thinker, lora_dropout=0.1).lora_dropout == 0.1
    # Attention-only LoRA takes dropout
    config = build_lora_config(thinker, lora_dropout=0.1, target_router=False, target_experts=False)
    assert config.lora_dropout == 0.1 and len(config.target_modules) == 8


def test_labels_are_the_assistant_tokens_exactly(workdir, processor):
    conversation = [
        {"role": "system", "content": "You are a helpful assistant."},
        AUDIO_TURN,
        reply("A steady tone."),
        {"role": "user", "content": "And then?"},
        reply("Then silence."),
    ]
    rows = [{"conversations": conversation}]
    path = workdir["root"] / "data" / "labels.json"
    path.write_text(json.dumps(rows))
    dataset = load_conversation_dataset(str(path))
    batch = Qwen3OmniSFTCollator(processor)([dataset[0]])
    tokenizer = processor.tokenizer
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected_tokens = (
        tokenizer.encode("A steady tone.", add_special_tokens=False)
        + [im_end]
        + tokenizer.encode("Then silence.", add_special_tokens=False)
        + [im_end]
    )
    kept = labels != -100
    assert labels[kept].tolist() == expected_tokens
    assert torch.equal(labels[kept], input_ids[kept])
    # The two spans start right after `<|im_start|>assistant\n`
    header = [tokenizer.convert_tokens_to_ids("<|im_start|>")] + tokenizer.encode(
        "assistant\n", add_special_tokens=False
    )
    starts = [i for i in range(1, len(kept)) if kept[i] and not kept[i - 1]]
    assert len(starts) == 2
    for start in starts:
        assert input_ids[start - len(header) : start].tolist() == header
    assert batch["sample_weight"].tolist() == [pytest.approx(0.8)]
    assert (batch["input_ids"] == processor.audio_token_id).sum() > 0 and batch["input_features"].shape[0] == 1


def test_overlong_samples_are_truncated_or_dropped_and_counted(workdir, processor):
    long_text = {
        "conversations": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            reply("the quick brown fox jumps over the lazy dog " * 4),
        ]
    }
    path = workdir["root"] / "data" / "long.json"
    path.write_text(json.dumps([long_text, {"conversations": [AUDIO_TURN, reply("A tone.")]}]))
    text_row, audio_row = load_conversation_dataset(str(path))
    full = Qwen3OmniSFTCollator(processor)([text_row])["input_ids"].shape[1]

    truncate = Qwen3OmniSFTCollator(processor, max_length=full - 5)
    batch = truncate([text_row])
    assert batch["input_ids"].shape == (1, full - 5)
    assert (batch["num_truncated"], batch["num_dropped_too_long"]) == (1, 0)
    # The audio sample's placeholders lie beyond a 20-token cut: dropped, not cut through
    batch = Qwen3OmniSFTCollator(processor, max_length=20)([audio_row, text_row])
    assert batch["num_dropped_too_long"] == 1 and batch["num_truncated"] == 1 and batch["input_ids"].shape[0] == 1
    assert "input_features" not in batch

    # A cut that leaves no assistant token drops the sample
    batch = Qwen3OmniSFTCollator(processor, max_length=8)([text_row])
    assert (batch["num_truncated"], batch["num_dropped_too_long"]) == (0, 1)

    drop = Qwen3OmniSFTCollator(processor, max_length=full - 5, truncation="drop")
    batch = drop([text_row, audio_row])
    assert (batch["num_truncated"], batch["num_dropped_too_long"]) == (0, 1)
    assert batch["input_ids"].shape[0] == 1 and "input_features" in batch


def test_missing_and_unreadable_media_are_skipped_and_counted(workdir, processor):
    data = workdir["root"] / "data"
    (data / "broken.wav").write_bytes(b"not a wav file")
    rows = [
        {"conversations": [{"role": "user", "content": [{"type": "audio", "audio": "gone.wav"}]}, reply("x")]},
        {"conversations": [{"role": "user", "content": [{"type": "audio", "audio": "broken.wav"}]}, reply("x")]},
        {"conversations": [IMAGE_TURN, reply("A red square.")]},
    ]
    (data / "media.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    dataset = load_conversation_dataset(str(data / "media.jsonl"))
    assert len(dataset) == 2  # the missing file is caught at load time
    collator = Qwen3OmniSFTCollator(processor)
    batch = collator([dataset[0], dataset[1]])
    assert batch["num_skipped_media"] == 1 and batch["input_ids"].shape[0] == 1
    assert batch["sample_weight"].tolist() == [pytest.approx(0.9)]
    # A batch with nothing left still holds one (label-free) row so that every rank runs a step
    batch = collator([dataset[0]])
    assert batch["num_skipped_media"] == 1 and (batch["labels"] == -100).all() and batch["sample_weight"].sum() == 0


def test_video_from_frames_and_from_a_file(workdir, processor, tmp_path):
    frames = []
    for index in range(4):
        frame = np.full((32, 32, 3), 60 * index, dtype=np.uint8)
        frames.append(str(tmp_path / f"frame{index}.png"))
        from PIL import Image

        Image.fromarray(frame).save(frames[-1])

    def decoded(paths, fps):
        media = decode_media([{"role": "user", "content": [{"type": "video", "video": paths}]}], fps=fps)
        return media["videos"][0].shape[0], media["video_fps"]

    assert decoded(frames, fps=2.0) == (4, [2.0])  # qwen-omni-utils takes frame lists whole, at the given rate
    if shutil.which("ffmpeg"):
        clip = str(tmp_path / "clip.mp4")
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-framerate",
                "4",
                "-i",
                str(tmp_path / "frame%d.png"),
                "-pix_fmt",
                "yuv420p",
                clip,
            ],
            check=True,
        )
        assert decoded([clip], fps=4.0) == (4, [4.0])
    conversation = {
        "conversations": [{"role": "user", "content": [{"type": "video", "video": frames}]}, reply("Fading in.")]
    }
    path = tmp_path / "video.json"
    path.write_text(json.dumps([conversation]))
    pixels = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    collator = Qwen3OmniSFTCollator(processor, processor_kwargs={"videos_kwargs": {"size": pixels}})
    batch = collator([load_conversation_dataset(str(path))[0]])
    # qwen-omni-utils sizes the 32x32 frames up to its minimum pixel budget, as at inference
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert (batch["input_ids"] == processor.video_token_id).sum() == 8
    assert batch["sample_weight"].tolist() == [pytest.approx(0.9)]


def test_weighted_loss_is_exact_under_gradient_accumulation(workdir, processor, tmp_path):
    dataset = load_conversation_dataset(workdir["data"])
    collator = Qwen3OmniSFTCollator(processor, loss_weights=ModalityLossWeights(text=1.0, audio=0.5, vision=0.25))
    rows = [dataset[0], dataset[1], dataset[2]]  # audio, image, text
    args = Qwen3OmniSFTConfig(
        output_dir=str(tmp_path),
        report_to="none",
        router_aux_loss_coef=0.0,
        gradient_accumulation_steps=2,
        use_cpu=True,
    )
    model = load_thinker(workdir["base"])
    trainer = Qwen3OmniSFTTrainer(
        model=model, args=args, data_collator=collator, train_dataset=dataset, processing_class=processor
    )
    trainer.model.eval()
    micro_batches = [collator(rows[:2]), collator(rows[2:])]
    whole = collator(rows)
    with torch.no_grad():
        num_items = trainer._get_num_items_in_batch(micro_batches, torch.device("cpu"))
        accumulated = sum(
            trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=num_items) for b in micro_batches
        )
        single = trainer.compute_loss(trainer.model, dict(whole))
        # Reference: sum_b w_b NLL_b / sum_b w_b n_b from the model's own logits, one sample at a time
        numerator = denominator = 0.0
        for row in rows:
            sample = collator([row])
            logits = model(
                **{
                    k: v
                    for k, v in sample.items()
                    if k
                    not in ("labels", "sample_weight", "num_truncated", "num_dropped_too_long", "num_skipped_media")
                }
            ).logits
            labels = sample["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="sum")
            weight = sample["sample_weight"].item()
            numerator += weight * nll.item()
            denominator += weight * (labels != -100).sum().item()
    assert sorted(b["sample_weight"].tolist()[0] for b in (collator([r]) for r in rows)) == [0.25, 0.5, 1.0]
    assert num_items.item() == pytest.approx(denominator)
    assert accumulated.item() == pytest.approx(numerator / denominator, rel=1e-5)
    assert single.item() == pytest.approx(numerator / denominator, rel=1e-5)


def test_bf16_falls_back_to_fp32_without_support(tmp_path):
    args = Qwen3OmniSFTConfig(output_dir=str(tmp_path), report_to="none")
    assert args.bf16 == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@pytest.fixture(scope="module")
def trained(workdir):
    out = workdir["root"] / "adapter"
    command = [
        sys.executable,
        os.path.join(REPO, "train", "sft.py"),
        "--config",
        os.path.join(REPO, "train", "configs", "instruct.yaml"),
        "--model_name_or_path",
        workdir["base"],
        "--dataset_name",
        workdir["data"],
        "--output_dir",
        str(out),
        "--dtype",
        "float32",
        "--max_steps",
        "14",
        "--per_device_train_batch_size",
        "3",
        "--gradient_accumulation_steps",
        "2",
        "--learning_rate",
        "2e-2",
        "--warmup_steps",
        "0",
        "--lr_scheduler_type",
        "constant",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--lora_expert_r",
        "4",
        "--logging_steps",
        "1",
        "--save_strategy",
        "steps",
        "--save_steps",
        "14",
        "--report_to",
        "none",
        "--max_length",
        "256",
        "--system_prompt",
        "You are a helpful assistant.",
        "--dataloader_num_workers",
        "0",
        "--max_skipped_fraction",
        "0.1",
    ]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"out": out, "log": result.stdout + result.stderr}


@pytest.mark.slow
def test_sft_script_lowers_the_loss_and_saves_only_the_adapter(workdir, trained):
    out = trained["out"]
    state = json.loads((out / "checkpoint-14" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 14
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    assert all("aux_loss" in entry for entry in state["log_history"] if "loss" in entry)
    assert "fall back" in trained["log"] or "fp32" in trained["log"] or torch.cuda.is_available()

    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(os.listdir(out))
    weights = load_file(out / "adapter_model.safetensors")
    assert all(".lora_A." in name or ".lora_B." in name for name in weights)
    assert not any("audio_tower" in name or "visual" in name for name in weights)
    trained_b = {name for name, value in weights.items() if ".lora_B." in name and value.abs().sum() > 0}
    for layer in range(2):
        for part in ("mlp.gate", "mlp.experts", "self_attn.q_proj", "self_attn.v_proj"):
            assert any(f"layers.{layer}.{part}" in name for name in trained_b), (layer, part)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_dropout"] == 0.0 and config["rank_pattern"]["mlp.experts.gate_up_proj"] == 4
    # The refused row is in the run's summary, in the log and in the output dir
    report = json.loads((out / "data_report_train.json").read_text())
    assert (report["num_rows"], report["num_kept"], report["format"]) == (13, 12, "tagged")
    assert report["refused"]["placeholder_mismatch"]["first_row_ids"] == [12]
    while_training = report["while_training"]
    assert while_training.pop("num_rows_seen") % 12 == 0  # whole passes over the 12 kept rows
    assert while_training == {
        "num_truncated": 0,
        "num_dropped_too_long": 0,
        "num_skipped_media": 0,
        "num_steps_without_labels": 0,
    }
    assert "placeholder_mismatch: 1 rows (first ids [12])" in trained["log"]


def test_push_to_hub_publishes_the_adapter_with_a_card_that_loads_it(workdir, tmp_path, monkeypatch):
    """`--push_to_hub`: the repo id is checked before any work; the adapter goes up once, at the end, through
    hub.push_to_hub, with the Qwen3-Omni adapter card (transformers' class, no remote code), not TRL's."""

    from huggingface_hub import HfApi

    from omni_testing import usage_code

    script = load_script("sft")
    parser = sft_parser(script)

    def run(output_dir, repo_id):
        return script.main(
            *parser.parse_args_and_config(
                args=[
                    "--model_name_or_path",
                    workdir["base"],
                    "--dataset_name",
                    workdir["data"],
                    "--output_dir",
                    str(output_dir),
                    "--dtype",
                    "float32",
                    "--max_steps",
                    "1",
                    "--per_device_train_batch_size",
                    "2",
                    "--lora_r",
                    "4",
                    "--lora_alpha",
                    "8",
                    "--save_strategy",
                    "no",
                    "--report_to",
                    "none",
                    "--max_skipped_fraction",
                    "0.1",
                    "--push_to_hub",
                    "true",
                    "--hub_model_id",
                    repo_id,
                    "--use_cpu",
                    "true",
                    "--bf16",
                    "false",
                ]
            )
        )

    with pytest.raises(ValueError, match="repo"):
        run(tmp_path / "refused", "not a repo id")
    assert not (tmp_path / "refused").exists()
    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw) or "https://hf.co/commit/1")
    run(tmp_path / "out", "someone/thinker-lora")
    assert [(upload["repo_id"], upload["folder_path"]) for upload in uploads] == [
        ("someone/thinker-lora", str(tmp_path / "out"))
    ]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Qwen3OmniMoeThinkerForConditionalGeneration" in usage_code(card) and "trust_remote_code" not in card


@pytest.mark.slow
def test_merged_checkpoint_matches_base_plus_adapter(workdir, trained, processor, tmp_path):
    merged_dir = tmp_path / "merged"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "train", "merge.py"),
            "--adapter",
            str(trained["out"]),
            "--output_dir",
            str(merged_dir),
            "--base_model",
            workdir["base"],
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    merged = Qwen3OmniMoeForConditionalGeneration.from_pretrained(merged_dir)
    base = Qwen3OmniMoeForConditionalGeneration.from_pretrained(workdir["base"])
    assert merged.has_talker
    for part in ("talker", "code2wav"):
        reference = getattr(base, part).state_dict()
        assert all(torch.equal(value, reference[name]) for name, value in getattr(merged, part).state_dict().items())
    thinker_reference = base.thinker.state_dict()
    for name, value in merged.thinker.state_dict().items():
        if name.startswith(("model.audio_tower", "model.visual")):
            assert torch.equal(value, thinker_reference[name]), name

    dataset = load_conversation_dataset(workdir["data"])
    batch = Qwen3OmniSFTCollator(AutoProcessor.from_pretrained(merged_dir))([dataset[0], dataset[1], dataset[2]])
    inputs = {
        k: v
        for k, v in batch.items()
        if k
        in (
            "input_ids",
            "attention_mask",
            "pixel_values",
            "image_grid_thw",
            "input_features",
            "feature_attention_mask",
        )
    }
    adapted = PeftModel.from_pretrained(load_thinker(workdir["base"]), str(trained["out"])).eval()
    with torch.no_grad():
        expected = adapted(**inputs).logits
        got = merged.thinker.eval()(**inputs).logits
        plain = base.thinker.eval()(**inputs).logits
    assert (expected - plain).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_omni_checkpoints_are_handed_to_voice_sft(tmp_path, workdir):

    from transformers import AutoConfig

    AutoConfig.for_model("omni").save_pretrained(tmp_path)  # the Omni config, registered by `import qwen_omni`
    script = load_script("sft")
    assert script.checkpoint_model_type(["--model_name_or_path", str(tmp_path), "--output_dir", "x"]) == "omni"
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text(f"model_name_or_path: {tmp_path}\nlearning_rate: 1.0e-4\n")
    assert script.checkpoint_model_type(["--config", str(config_file)]) == "omni"
    assert script.checkpoint_model_type(["--model_name_or_path", str(workdir["base"])]) == "qwen3_omni_moe"


@pytest.mark.parametrize("moe_lora_impl, load_in_4bit", [("routed", False), ("peft", False), ("peft", True)])
def test_trainer_uses_the_routed_expert_lora_by_default(workdir, processor, tmp_path, moe_lora_impl, load_in_4bit):
    from peft.tuners.lora.layer import ParamWrapper as PeftParamWrapper

    from qwen_omni.qwen3_omni.peft_lora import ParamWrapper as SafePeftParamWrapper
    from qwen_omni.qwen3_omni.routed_lora import ParamWrapper as RoutedParamWrapper

    dataset = load_conversation_dataset(workdir["data"])
    args = Qwen3OmniSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    thinker = load_thinker(workdir["base"], load_in_4bit=load_in_4bit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Qwen3OmniSFTTrainer(
            model=thinker,
            args=args,
            data_collator=Qwen3OmniSFTCollator(processor),
            train_dataset=dataset,
            processing_class=processor,
            peft_config=build_lora_config(thinker, r=4, lora_alpha=8, expert_r=2),
            moe_lora_impl=moe_lora_impl,
        )
    # PEFT's false report that the experts' rank was ignored (test_lora_lands_on_attention_router_and_experts_only)
    assert not [w for w in caught if "did not match any targeted module" in str(w.message)]
    wrappers = [module for module in trainer.model.modules() if isinstance(module, PeftParamWrapper)]
    assert len(wrappers) == 3 * 2  # router + gate_up_proj + down_proj in each of the 2 MoE layers
    routed = [isinstance(module, RoutedParamWrapper) for module in wrappers]
    assert all(routed) if moe_lora_impl == "routed" else not any(routed)
    # PEFT's own forward, in the wrapper that is safe on 4-bit experts (tests/test_quantized_experts.py)
    assert all(isinstance(module, SafePeftParamWrapper) for module in wrappers)


def test_unknown_moe_lora_impl_is_refused(workdir, processor, tmp_path):
    with pytest.raises(ValueError, match="moe_lora_impl='fast' is not one of"):
        Qwen3OmniSFTTrainer(model=None, args=None, moe_lora_impl="fast")
