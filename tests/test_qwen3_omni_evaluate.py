"""`train/evaluate.py` on tiny random Qwen3-Omni checkpoints: metric values by hand, a fine-tune that memorised the
eval rows beats its base (adapter and merged folder alike), the per-row cache, audio datasets, bad input, the Talker's
voice with a tiny random WavLMForXVector."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from qwen_omni.common.metrics import (
    choice_accuracy,
    error_rates,
    exact_match,
    extract_choice,
    split_thinking,
    text_similarity,
)
from qwen_omni.qwen3_omni import tiny_checkpoints


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
ROWS = [
    ("What do you hear?", "A dog barks twice."),
    ("Describe the sound in detail.", "The clip holds a steady tone, then silence."),
    ("Pick one: A red B blue", "B"),
]


# ---------------------------------------------------------------------------------------------------- metrics
def test_metric_values_equal_hand_computed_ones():
    # WER: 1 substitution (world -> word) + 1 deletion (the) over 2 + 6 words, after Whisper normalisation
    rates = error_rates(["Hello, World!", "the cat sat on the mat"], ["hello word", "The cat sat on mat."])
    assert rates["wer"] == pytest.approx(2 / 8)
    assert rates["cer"] == pytest.approx(5 / (11 + 22))
    # BLEU: n-gram precisions 6/7, 5/6, 4/5, 3/4; the hypothesis is longer, so no brevity penalty
    scores = text_similarity(["the cat sat on the mat"], ["the cat sat on the mat today"])
    assert scores["bleu"] == pytest.approx(100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25)
    # ROUGE-L: longest common subsequence 5 of 5 hypothesis and 6 reference words, F1 = 2PR / (P + R)
    scores = text_similarity(["the cat sat on the mat"], ["the cat on the mat"])
    assert scores["rouge_l"] == pytest.approx(2 * 1 * (5 / 6) / (1 + 5 / 6))
    assert text_similarity(["a red square"], ["a red square"])["chrf"] == pytest.approx(100)
    assert text_similarity(["aaaa"], ["zzzz"])["chrf"] == 0
    assert exact_match(["The answer: Paris.", "four"], ["the answer paris", "4 or 5"])["exact_match"] == 0.5
    accuracy = choice_accuracy(["B", "(C)", "A", "D"], ["The answer is (B).", "C) green", "I think b", "A"])
    assert (accuracy["accuracy"], accuracy["unanswered"]) == (0.5, 1)


def test_answer_extraction_and_thinking():
    assert [extract_choice(text) for text in ("Answer: D", "answer is c", "(E) because", "A.", "a dog", "")] == [
        "D",
        None,
        "E",
        "A",
        None,
        None,
    ]
    assert split_thinking("<think> two plus two </think>\nThe answer is four.") == (
        "two plus two",
        "The answer is four.",
    )
    assert split_thinking("reasoning only in the prompt's tag</think>four") == (
        "reasoning only in the prompt's tag",
        "four",
    )
    assert split_thinking("no thinking") == (None, "no thinking")


# ---------------------------------------------------------------------------------------------------- end to end
def conversation(prompt, answer=None):
    turns = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny checkpoint whose Thinker has a trained model's output scale (random 0.02-init logits are all within a
    few hundredths of each other), the eval rows, and a LoRA adapter trained on them until it answers them."""
    from peft import get_peft_model
    from transformers import Qwen3OmniMoeForConditionalGeneration

    from qwen_omni.qwen3_omni import (
        Qwen3OmniSFTCollator,
        build_lora_config,
        load_thinker,
    )

    root = tmp_path_factory.mktemp("qwen3_omni_eval")
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base")
    full = Qwen3OmniMoeForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        full.thinker.lm_head.weight.normal_(0.0, 1.0)
    full.save_pretrained(base)
    data = root / "eval.jsonl"
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a in ROWS]
    rows.append({"messages": [{"role": "user", "content": "a question nobody answered"}]})
    data.write_text("\n".join(json.dumps(row) for row in rows))

    processor = AutoProcessor.from_pretrained(base)
    torch.manual_seed(0)
    thinker = load_thinker(base, dtype=torch.float32)
    model = get_peft_model(thinker, build_lora_config(thinker, r=16, lora_alpha=32))
    batch = Qwen3OmniSFTCollator(processor)([{"conversations": conversation(p, a)} for p, a in ROWS])
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(200):  # until every answer token is the top one by far (about 60-100 steps)
        loss = model(**inputs).loss
        if loss.item() < 0.02:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(root / "adapter")
    return {"root": root, "base": base, "data": str(data), "adapter": str(root / "adapter"), "final_loss": loss.item()}


def run_evaluate(*args):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train", "evaluate.py"), *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.slow
def test_memorised_finetune_beats_the_base(workdir, tmp_path):
    """The command on an adapter that memorised the rows: the fine-tune answers them and the base does not; base and
    fine-tune come from one model (disable_adapter), and the base column equals a run of the base alone; the report,
    rows, plot and model-index are written; a second run reads every answer from the per-row cache."""
    out = tmp_path / "eval"
    flags = [
        "--model_name_or_path",
        workdir["base"],
        "--adapter",
        workdir["adapter"],
        "--dataset_name",
        workdir["data"],
        "--output_dir",
        out,
        "--max_new_tokens",
        24,
        "--batch_size",
        2,
        "--dtype",
        "float32",
        "--evaluate_voice",
        "false",
    ]
    run_evaluate(*flags)
    report = json.loads((out / "eval_results.json").read_text())
    assert report["data"]["skipped"] == {"no_assistant_turn": 1}  # refused by the conversation loader
    assert report["data"]["rows_by_task"] == {"text": 2, "multiple_choice": 1}
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [row["finetune"] for row in predictions] == [answer for _, answer in ROWS], workdir["final_loss"]
    text, choice = report["tasks"]["text"], report["tasks"]["multiple_choice"]
    assert text["finetune"]["chrf"] == pytest.approx(100) and text["base"]["chrf"] < 50
    assert text["difference"]["chrf"] == pytest.approx(text["finetune"]["chrf"] - text["base"]["chrf"])
    assert choice["finetune"]["accuracy"] == 1.0 and choice["num_rows"] == 1
    # the metrics are those of the rows written
    references = [row["reference"] for row in predictions if row["task"] == "text"]
    assert text["base"] == text_similarity(references, [row["base"] for row in predictions if row["task"] == "text"])
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = {(entry["task_type"], entry["metric_type"]): entry["metric_value"] for entry in report["model_index"]}
    assert index[("text-generation", "chrf")] == pytest.approx(100) and index[("multiple-choice", "accuracy")] == 1.0

    # the card reads the model-index
    from huggingface_hub import ModelCard

    from qwen_omni.common.hub import build_model_card

    card = build_model_card(workdir["adapter"], "someone/tiny-sft", eval_report=report)
    meta = ModelCard(str(card)).data.to_dict()
    metrics = {(m["type"]) for result in meta["model-index"][0]["results"] for m in result["metrics"]}
    assert {"chrf", "bleu", "rouge_l", "accuracy"} <= metrics

    # resumed: every answer is read back from the cache, nothing is generated, the report is the same
    again = run_evaluate(*flags)
    assert "3 of 3 answers read" in again.stderr
    assert json.loads((out / "eval_results.json").read_text())["tasks"] == report["tasks"]

    # the base alone (no --adapter) answers as the adapter's disabled base did
    from qwen_omni.qwen3_omni.evaluation import evaluate_qwen3_omni

    alone = evaluate_qwen3_omni(
        workdir["base"],
        workdir["data"],
        tmp_path / "base_alone",
        max_new_tokens=24,
        dtype="float32",
        evaluate_voice_of_talker=False,
    )
    assert [row["base"] for row in read_jsonl(tmp_path / "base_alone" / "predictions.jsonl")] == [
        row["base"] for row in predictions
    ]
    assert alone["tasks"]["text"]["base"] == text["base"]


@pytest.mark.slow
def test_merged_folder_answers_as_the_adapter(workdir, tmp_path):
    from qwen_omni.qwen3_omni import merge_adapter
    from qwen_omni.qwen3_omni.evaluation import evaluate_qwen3_omni

    merged = merge_adapter(workdir["adapter"], str(tmp_path / "merged"), workdir["base"], dtype=torch.float32)
    report = evaluate_qwen3_omni(
        workdir["base"],
        workdir["data"],
        tmp_path / "eval",
        adapter=merged,
        max_new_tokens=24,
        dtype="float32",
        evaluate_voice_of_talker=False,
    )
    assert report["finetune_kind"] == "merged"
    assert [row["finetune"] for row in read_jsonl(tmp_path / "eval" / "predictions.jsonl")] == [a for _, a in ROWS]


def write_clips(folder, texts, rate=16000, seed=0):
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(folder / "metadata.jsonl", "w") as handle:
        for index, text in enumerate(texts):
            sf.write(folder / f"clip{index}.wav", (0.3 * rng.standard_normal(rate // 4)).astype("float32"), rate)
            handle.write(json.dumps({"audio": f"clip{index}.wav", "text": text}) + "\n")
    return folder


def test_audio_dataset_is_scored_as_speech_recognition(workdir, tmp_path):
    """A clip folder (audio + text columns): each clip is asked to be transcribed, WER / CER are the rows'; a clip
    without a transcript is skipped and counted; batched answers equal one-at-a-time answers."""
    from qwen_omni.qwen3_omni.evaluation import evaluate_qwen3_omni

    clips = write_clips(tmp_path / "clips", ["the quick brown fox", "a red square", "", "the lazy dog"])
    reports = {}
    for batch_size in (3, 1):
        out = tmp_path / f"eval{batch_size}"
        reports[batch_size] = evaluate_qwen3_omni(
            workdir["base"],
            str(clips),
            out,
            max_new_tokens=8,
            batch_size=batch_size,
            dtype="float32",
            evaluate_voice_of_talker=False,
        )
        rows = read_jsonl(out / "predictions.jsonl")
        assert [row["task"] for row in rows] == ["asr"] * 3
    report = reports[3]
    assert report["data"]["kind"] == "audio" and report["data"]["skipped"] == {"no_reference": 1}
    assert report["tasks"]["asr"]["base"] == error_rates(
        [row["reference"] for row in rows], [row["base"] for row in rows]
    )
    assert reports[1]["tasks"] == report["tasks"]


def test_bad_input_is_refused_before_generation(workdir, tmp_path):
    from qwen_omni.qwen3_omni.evaluation import evaluate_qwen3_omni

    unanswered = tmp_path / "unanswered.jsonl"
    unanswered.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hello"}]})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"No usable evaluation row ") as refused:
        evaluate_qwen3_omni(
            workdir["base"], str(unanswered), tmp_path / "out1", dtype="float32", evaluate_voice_of_talker=False
        )
    # the row without a reply is refused by the conversation loader, the blank reply by the evaluation
    assert "'no_assistant_turn': 1" in str(refused.value) and "'no_reference': 1" in str(refused.value)
    for flag, message in (
        ("speaker_encoder", "--speaker_encoder '.*missing' cannot be loaded"),
        ("transcriber", "--transcriber '.*missing' cannot be loaded"),
    ):
        with pytest.raises(ValueError, match=message):
            evaluate_qwen3_omni(
                workdir["base"], workdir["data"], tmp_path / flag, dtype="float32", **{flag: str(tmp_path / "missing")}
            )
        assert not (tmp_path / flag / "cache").exists()  # nothing generated
    with pytest.raises(ValueError, match="neither a LoRA adapter folder"):
        evaluate_qwen3_omni(
            workdir["base"],
            workdir["data"],
            tmp_path / "out2",
            adapter=str(tmp_path),
            dtype="float32",
            evaluate_voice_of_talker=False,
        )


# ---------------------------------------------------------------------------------------------------- voice
@pytest.fixture(scope="module")
def voice(workdir):
    """A tiny base with Talker scales that separate codes, a merged "voice fine-tune" that adds speaker nova as a
    copy of Ethan's row (every other weight the base's), a tiny random WavLMForXVector and reference clips."""
    from test_talker_voice import give_trained_scales
    from transformers import (
        Qwen3OmniMoeForConditionalGeneration,
        Wav2Vec2FeatureExtractor,
        WavLMConfig,
        WavLMForXVector,
    )

    from qwen_omni.qwen3_omni.talker_voice import add_speaker

    root = workdir["root"] / "voice"
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base")
    processor = AutoProcessor.from_pretrained(base)
    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    give_trained_scales(model)
    model.save_pretrained(base)
    speakers = model.config.talker_config.speaker_id
    add_speaker(model, "nova", max(speakers.values()) + 1, speakers["ethan"])
    model.save_pretrained(root / "merged")
    processor.save_pretrained(root / "merged")
    torch.manual_seed(0)
    encoder = WavLMForXVector(
        WavLMConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 3),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            tdnn_dim=(16, 16),
            tdnn_kernel=(3, 1),
            tdnn_dilation=(1, 1),
            xvector_output_dim=8,
            num_buckets=16,
            max_bucket_distance=32,
        )
    )
    encoder.save_pretrained(root / "wavlm")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(root / "wavlm")
    clips = write_clips(root / "nova_clips", ["one", "two"], seed=3)
    return {"base": base, "merged": str(root / "merged"), "wavlm": str(root / "wavlm"), "clips": str(clips)}


def test_speak_is_what_generate_says(voice):
    """`speak` (the Thinker teacher-forced to say the text) gives the waveform `generate(speaker=...)` gives when its
    Thinker says that text."""
    from test_talker_voice import generate_codes
    from transformers import Qwen3OmniMoeForConditionalGeneration

    from qwen_omni.qwen3_omni.evaluation import speak

    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(voice["base"], dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(voice["base"])
    waveform = speak(model, processor, "the quick brown fox", "Ethan", max_new_tokens=24)
    _, expected = generate_codes(model, processor, "the quick brown fox", "ethan")
    assert waveform.size > 0
    np.testing.assert_allclose(waveform, expected.flatten().numpy(), atol=1e-5)


@pytest.mark.slow
def test_voice_of_a_new_speaker_and_the_preserved_ones(voice, tmp_path):
    """A voice fine-tune that adds nova and changes nothing else: every other speaker's speech is the base's
    (similarity 1, the same intelligibility), nova is compared with the base's Ethan (its starting row: the same
    speech) against the reference clips, and all the speech is written."""
    from qwen_omni.qwen3_omni.evaluation import evaluate_qwen3_omni

    data = tmp_path / "texts.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": text}]})
            for text in ("the quick brown fox", "a red square on white")
        )
    )
    report = evaluate_qwen3_omni(
        voice["base"],
        str(data),
        tmp_path / "eval",
        adapter=voice["merged"],
        max_new_tokens=4,
        dtype="float32",
        base_speaker="Ethan",
        speaker_encoder=voice["wavlm"],
        speaker_reference=voice["clips"],
        talker_max_new_tokens=24,
    )["voice"]
    assert (report["tested_speaker"], report["base_speaker_compared"]) == ("nova", "ethan")
    assert sorted(report["preserved_speakers"]) == ["aiden", "chelsie", "ethan"]
    for name in report["preserved_speakers"]:
        entry = report["speakers"][name]
        assert entry["finetune"]["similarity_to_base_speech"] == pytest.approx(1.0, abs=1e-5)
        assert entry["difference"]["self_transcribed.wer"] == 0
    nova = report["speakers"]["nova"]
    assert nova["base"]["spoken_as"] == "ethan" and nova["finetune"]["spoken_as"] == "nova"
    assert nova["finetune"]["similarity_to_reference"] == pytest.approx(
        nova["base"]["similarity_to_reference"], abs=1e-5
    )
    assert -1 <= nova["finetune"]["similarity_to_reference"] <= 1
    assert nova["finetune"]["texts_without_speech"] == 0
    assert len(list((tmp_path / "eval" / "speech" / "finetune" / "nova").glob("*.wav"))) == 2


def test_one_command_dispatches_by_model_type(omni_dir, tmp_path, monkeypatch):
    """`train/evaluate.py` hands an Omni checkpoint (`model_type: omni`) to the Omni evaluation, with the Qwen3-Omni
    flag names accepted, and any other checkpoint to the Qwen3-Omni evaluation with its flags and loading options."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_script", os.path.join(REPO, "train", "evaluate.py"))
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up
    spec.loader.exec_module(script)
    calls = []
    monkeypatch.setattr(script, "evaluate_model", lambda *args, **kwargs: calls.append(("omni", args, kwargs)))
    monkeypatch.setattr(script, "evaluate_qwen3_omni", lambda *args, **kwargs: calls.append(("qwen3", args, kwargs)))
    script.run(["--model_name_or_path", str(omni_dir), "--dataset_name=clips", "--output_dir", "out"])
    assert calls[-1][0] == "omni" and calls[-1][1] == (str(omni_dir), "clips", "out")
    base = tiny_checkpoints.save_tiny_checkpoint(tmp_path / "base")
    script.run(
        [
            "--model_name_or_path",
            base,
            "--adapter",
            "ft",
            "--dataset_name",
            "rows.jsonl",
            "--output_dir",
            "out",
            "--load_in_4bit",
            "--max_samples",
            "5",
            "--evaluate_voice",
            "false",
        ]
    )
    kind, args, kwargs = calls[-1]
    assert kind == "qwen3" and args == (base, "rows.jsonl", "out")
    assert kwargs["adapter"] == "ft" and kwargs["max_samples"] == 5 and kwargs["evaluate_voice_of_talker"] is False
    assert kwargs["quantization_kwargs"]["load_in_4bit"] and kwargs["quantization_kwargs"]["quantize_experts"]


@pytest.mark.slow
def test_voice_adapter_base_is_the_adapter_disabled(voice, tmp_path):
    """A Talker voice adapter (LoRA with non-zero B on the Talker, nova's codec row trained): the base's speech comes
    from the same model inside `disable_adapter()` and equals a plain base model's; the fine-tune's speech of the
    preserved speakers differs from it (the adapter is on), which the similarity to the base's speech measures."""
    import soundfile as sf
    from peft import get_peft_model
    from transformers import Qwen3OmniMoeForConditionalGeneration

    from qwen_omni.qwen3_omni.evaluation import evaluate_qwen3_omni, speak
    from qwen_omni.qwen3_omni.talker_voice import (
        add_speaker,
        build_talker_lora_config,
        load_talker_model,
        write_talker_voice_config,
    )

    model = load_talker_model(voice["base"], dtype=torch.float32)
    speakers = dict(model.config.talker_config.speaker_id)
    codec_id = max(speakers.values()) + 1
    add_speaker(model, "nova", codec_id, speakers["ethan"])
    torch.manual_seed(0)
    peft_model = get_peft_model(model, build_talker_lora_config(model, [codec_id], r=4, lora_alpha=8))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.2)
    peft_model.save_pretrained(tmp_path / "nova")
    write_talker_voice_config(tmp_path / "nova", "nova", codec_id, speakers["ethan"])

    data = tmp_path / "texts.jsonl"
    data.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Say it."},
                    {"role": "assistant", "content": "the quick brown fox"},
                ]
            }
        )
    )
    report = evaluate_qwen3_omni(
        voice["base"],
        str(data),
        tmp_path / "eval",
        adapter=str(tmp_path / "nova"),
        max_new_tokens=4,
        dtype="float32",
        speaker_encoder=voice["wavlm"],
        talker_max_new_tokens=24,
    )["voice"]
    assert (report["tested_speaker"], report["base_speaker_compared"]) == ("nova", "ethan")
    assert sorted(report["preserved_speakers"]) == ["aiden", "chelsie", "ethan"]
    plain = Qwen3OmniMoeForConditionalGeneration.from_pretrained(voice["base"], dtype=torch.float32).eval()
    expected = speak(plain, AutoProcessor.from_pretrained(voice["base"]), "the quick brown fox", "chelsie", 24)
    base_speech, _ = sf.read(tmp_path / "eval" / "speech" / "base" / "chelsie" / "0.wav", dtype="float32")
    finetune_speech, _ = sf.read(tmp_path / "eval" / "speech" / "finetune" / "chelsie" / "0.wav", dtype="float32")
    np.testing.assert_allclose(base_speech, expected, atol=1e-5)  # written as float32
    # the tiny code2wav speaks at ~1e-7 amplitude: compare relative to it
    assert finetune_speech.shape != base_speech.shape or (
        np.abs(finetune_speech - base_speech).max() > 0.1 * np.abs(base_speech).max()
    )
    assert report["speakers"]["chelsie"]["finetune"]["similarity_to_base_speech"] < 1 - 1e-4
