"""train/evaluate.py on a tiny Omni model writes every metric and the plots; WER/CER values on known strings."""

import json
import math
import shutil
import sys

import numpy as np
import pytest

from qwen_omni.omni.evaluation import error_rates, normalize_text, si_sdr

from omni_testing import REPO_ROOT


def test_error_rates_on_known_strings():
    # 1 substitution (world -> word) + 1 deletion (the) over 2 + 6 words; normalisation removes case and punctuation
    result = error_rates(["Hello, World!", "the cat sat on the mat"], ["hello word", "The cat sat on mat."])
    assert result["wer"] == pytest.approx(2 / 8)
    assert (result["substitutions"], result["deletions"], result["insertions"]) == (1, 1, 0)
    # characters: "hello world" -> "hello word" 1 deletion; "the cat sat on the mat" -> "the cat sat on mat" 4 deletions
    assert result["cer"] == pytest.approx(5 / (11 + 22))
    assert error_rates(["abc"], ["abc"])["wer"] == 0.0
    empty = error_rates(["(laughs) uh", "yes"], ["", "no"])
    assert empty["skipped_empty_references"] == 1 and empty["wer"] == 1.0
    assert normalize_text("Mr. Smith's twenty-five DOGS!") == "mister smith is 25 dogs"


def test_si_sdr():
    rng = np.random.default_rng(0)
    clean = rng.standard_normal(8000)
    assert si_sdr(clean, 0.5 * clean) > 60  # scale-invariant
    noisy = clean + 0.1 * rng.standard_normal(8000)
    assert si_sdr(clean, noisy) == pytest.approx(20, abs=1)


def test_evaluate_script_writes_report_and_plots(tmp_path, omni_dir):
    clips = tmp_path / "clips"
    (clips / "audio").mkdir(parents=True)
    rows = [json.loads(line) for line in (REPO_ROOT / "data/voice_clips/metadata.jsonl").read_text().splitlines()][:2]
    for row in rows:
        shutil.copy(REPO_ROOT / "data/voice_clips" / row["audio"], clips / row["audio"])
    (clips / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = tmp_path / "model"
    shutil.copytree(omni_dir, model)
    state = {
        "log_history": [
            {"loss": 6.0, "audio_loss": 6.0, "step": 1},
            {"loss": 5.0, "audio_loss": 5.0, "mean_token_accuracy": 0.3, "step": 2},
        ]
    }
    (model / "trainer_state.json").write_text(json.dumps(state))

    sys.path.insert(0, str(REPO_ROOT / "train"))
    try:
        import evaluate as evaluate_script  # train/evaluate.py
    finally:
        sys.path.pop(0)
    out = tmp_path / "eval"
    evaluate_script.main(
        evaluate_script.EvaluateArguments(
            model=str(model), dataset=str(clips), output_dir=str(out), asr_max_new_tokens=4, tts_length_factor=0.2
        )
    )
    report = json.loads((out / "eval_results.json").read_text())
    assert report["num_clips"] == 2
    for section, keys in {
        "asr": ("wer", "cer"),
        "tts_intelligibility": ("wer", "cer", "clips_without_speech"),
        "codec": ("mel_distance", "si_sdr"),
        "teacher_forced": (
            "audio_loss",
            "audio_token_accuracy",
            "audio_perplexity",
            "text_loss",
            "text_token_accuracy",
            "text_perplexity",
        ),
    }.items():
        for key in keys:
            assert isinstance(report[section][key], (int, float)) and math.isfinite(report[section][key]), (
                section,
                key,
            )
    assert report["tts_intelligibility"]["transcriber"] == "self"
    tf = report["teacher_forced"]
    assert tf["audio_perplexity"] == pytest.approx(math.exp(tf["audio_loss"]))
    for plot in ("training_curves.png", "spectrograms.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["plots"] == {"training_curves": "training_curves.png", "spectrograms": "spectrograms.png"}
