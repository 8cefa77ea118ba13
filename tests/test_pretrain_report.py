"""The offline stand-in codec (informative codes, deterministic, cached) and pretrain.py's end-of-run report."""

import json
import math

import pytest
import torch
from test_pretrain import pretrain, tiny_args

from qwen_omni.common.clips import load_audio_text_rows
from qwen_omni.configuration_omni import SNACTokenLayout
from qwen_omni.modeling_snac import SNACAudioTokenizer
from qwen_omni.omni import evaluation, pretrain_report, pretraining, standin_codec
from qwen_omni.omni.corpus import prepare_dataset
from qwen_omni.omni.evaluation import code_perplexities, layout_code_perplexities, most_frequent_code_accuracy
from qwen_omni.omni.standin_codec import STANDIN_CODEC_CONFIG, fit_standin_codec, read_fit_waveforms

from omni_testing import REPO_ROOT, save_snac_checkpoint, tiny_processor


DEMO_CORPUS = REPO_ROOT / "data" / "demo_corpus"


@pytest.fixture(scope="module")
def corpus_rows():
    return load_audio_text_rows(DEMO_CORPUS)


@pytest.fixture(scope="module")
def standin_dir(corpus_rows, tmp_path_factory):
    """The stand-in codec fitted to the whole shipped corpus, as the offline default run fits it."""
    return standin_codec.standin_codec(corpus_rows, tmp_path_factory.mktemp("standin"))


def corpus_codes(codec_dir, rows) -> tuple[list[float], float]:
    """Code perplexity per codebook over `rows`, and the audio-token accuracy on the last 4 clips of predicting the
    most frequent code of the others."""
    processor = tiny_processor(codec_dir)
    waveforms, _ = read_fit_waveforms(rows, processor.sampling_rate, max_seconds=None)
    ids = processor.audio_to_ids(waveforms, sampling_rate=processor.sampling_rate)
    layout = processor.token_layout
    return layout_code_perplexities(ids, layout), most_frequent_code_accuracy(ids[:-4], ids[-4:], layout)


def test_code_perplexity_by_hand():
    assert code_perplexities([torch.tensor([3, 3, 3, 3])], 8) == [pytest.approx(1.0)]
    assert code_perplexities([torch.tensor([0, 1, 2, 3])], 8) == [pytest.approx(4.0)]
    # p = (1/2, 1/4, 1/4): exp(H) = exp(1.5 ln 2) = 2 ** 1.5
    assert code_perplexities([torch.tensor([5, 5, 1, 2])], 8) == [pytest.approx(2**1.5)]
    # per codebook through a token layout: strides [2, 1] give 3 ids per frame, c0[i], c1[2i], c1[2i+1]
    layout = SNACTokenLayout([2, 1], codebook_size=4, audio_token_offset=10)
    ids = layout.codes_to_ids([torch.tensor([1, 1]), torch.tensor([0, 1, 2, 3])])
    assert layout_code_perplexities([ids], layout) == [pytest.approx(1.0), pytest.approx(4.0)]


def test_most_frequent_code_accuracy_by_hand():
    layout = SNACTokenLayout([2, 1], codebook_size=4, audio_token_offset=10)
    train = [layout.codes_to_ids([torch.tensor([1, 1, 2]), torch.tensor([0, 3, 0, 3, 1, 1])]).tolist()]
    # most frequent per position: c0 -> 1, first c1 -> 0, second c1 -> 3
    held_out = [layout.codes_to_ids([torch.tensor([1, 2]), torch.tensor([0, 0, 0, 3])]).tolist()]
    # frame 0: (1, 0, 0) -> 2 of 3 right; frame 1: (2, 0, 3) -> 2 of 3 right
    assert most_frequent_code_accuracy(train, held_out, layout) == pytest.approx(4 / 6)


def test_standin_codec_spreads_codes_where_the_random_one_is_constant(standin_dir, corpus_rows, tmp_path):
    fitted, fitted_floor = corpus_codes(standin_dir, corpus_rows)
    # the codec that the offline default used before: the same config with random weights
    random_codec = save_snac_checkpoint(STANDIN_CODEC_CONFIG, tmp_path / "random", seed=0)
    random, random_floor = corpus_codes(random_codec, corpus_rows.select(range(12)))
    size = STANDIN_CODEC_CONFIG["codebook_size"]
    # measured: fitted ~510 / 650 / 800 of 1024 codes; random ~1.6 per codebook (nearly one constant code)
    assert all(value > 300 for value in fitted), fitted
    assert all(value < 5 for value in random), random
    assert all(value <= size for value in fitted)
    # why the old default looked trained: one code per frame position was right ~99% of the time
    assert random_floor > 0.8 and fitted_floor < 0.1, (random_floor, fitted_floor)
    info = json.loads((standin_dir / standin_codec.STANDIN_INFO_NAME).read_text())
    assert info["stand_in"] and info["fit_clips"] == 48 and info["clips_not_used"] == 0


def test_standin_codec_is_deterministic_and_cached(corpus_rows, tmp_path, monkeypatch):
    rows = corpus_rows.select(range(4))
    waveforms, _ = read_fit_waveforms(rows, STANDIN_CODEC_CONFIG["sampling_rate"])
    # the cached folder's weights equal a separate fit of the same clips with the same seed, tensor for tensor
    path = standin_codec.standin_codec(rows, tmp_path, seed=0)
    saved = torch.load(path / "pytorch_model.bin", weights_only=True)
    refitted = fit_standin_codec(waveforms, seed=0).state_dict()
    assert saved.keys() == refitted.keys()
    for name, tensor in refitted.items():
        assert torch.equal(tensor, saved[name]), name

    def refit(*args, **kwargs):
        raise AssertionError("the cached codec was fitted again")

    monkeypatch.setattr(standin_codec, "fit_standin_codec", refit)
    assert standin_codec.standin_codec(rows, tmp_path, seed=0) == path
    # another corpus or another seed is another codec, never the cached one
    with pytest.raises(AssertionError, match="fitted again"):
        standin_codec.standin_codec(corpus_rows.select(range(1, 5)), tmp_path, seed=0)
    with pytest.raises(AssertionError, match="fitted again"):
        standin_codec.standin_codec(rows, tmp_path, seed=1)


def test_offline_codec_refuses_a_prepared_dataset_without_its_codec(tmp_path, snac_24khz_dir):
    prepared = tmp_path / "prepared"
    prepare_dataset(
        load_audio_text_rows(DEMO_CORPUS).select(range(2)),
        prepared,
        SNACAudioTokenizer.from_pretrained(snac_24khz_dir),
        show_progress=False,
    )
    script_args, _ = pretrain.parse_args(["--dataset_name", str(prepared), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"is a prepared dataset.*pass that codec with --codec"):
        pretraining.offline_codec(script_args, tmp_path / "out")


@pytest.mark.parametrize(
    "num_rows,fraction,seed", [(48, 0.1, 42), (16, 0.125, 0), (5, 0.5, 3), (2, 0.1, 1), (7, 0.0, 0)]
)
def test_heldout_split_never_overlaps_training(num_rows, fraction, seed):
    train, heldout = pretraining.split_heldout(num_rows, fraction, seed)
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == list(range(num_rows))
    assert len(heldout) == (0 if fraction == 0 else max(1, round(fraction * num_rows)))
    assert train  # something is always left to train on
    assert pretraining.split_heldout(num_rows, fraction, seed) == (train, heldout)


def test_heldout_speakers_are_never_trained_on_and_the_rest_splits_as_before():
    from datasets import Dataset

    speakers = ["a", "b", "c", "d"] * 5
    rows = Dataset.from_dict({"speaker": speakers})
    train, heldout, voice = pretraining.split_rows(rows, 0.25, seed=3, heldout_speakers=["d"])
    assert voice == [i for i, speaker in enumerate(speakers) if speaker == "d"]
    assert sorted(train + heldout + voice) == list(range(20)) and len(heldout) == 4
    kept = [i for i, speaker in enumerate(speakers) if speaker != "d"]
    local_train, local_heldout = pretraining.split_heldout(15, 0.25, 3)
    assert (train, heldout) == ([kept[i] for i in local_train], [kept[i] for i in local_heldout])
    assert pretraining.split_rows(rows, 0.25, seed=3) == (*pretraining.split_heldout(20, 0.25, 3), [])
    with pytest.raises(ValueError, match=r"--heldout_speakers names \['e'\], who speak no clip"):
        pretraining.split_rows(rows, 0.25, seed=3, heldout_speakers=["e"])
    with pytest.raises(ValueError, match="hold out every clip"):
        pretraining.split_rows(rows, 0.25, seed=3, heldout_speakers=["a", "b", "c", "d"])


@pytest.fixture(scope="module")
def standin_prepared(corpus_rows, standin_dir, tmp_path_factory):
    """16 clips of the shipped corpus encoded with the stand-in codec (distinct code sequences per clip)."""
    out = tmp_path_factory.mktemp("prepared_standin")
    prepare_dataset(
        corpus_rows.select(range(16)), out, SNACAudioTokenizer.from_pretrained(standin_dir), show_progress=False
    )
    return out


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def test_no_training_row_holds_a_heldout_clip(standin_prepared, standin_dir, tmp_path):
    script_args, _ = tiny_args(standin_prepared, standin_dir, tmp_path, "--eval_fraction", "0.25")
    _, processor = pretraining.load_or_build_model(script_args, tmp_path)
    rows = pretraining.prepared_rows(script_args, processor, tmp_path)
    train_dataset, eval_datasets, (train_indices, heldout_indices, voice_indices) = pretraining.build_datasets(
        script_args, processor, rows, seed=42
    )
    assert len(heldout_indices) == 4 and not set(train_indices) & set(heldout_indices) and voice_indices == []
    training_rows = train_dataset["input_ids"]
    all_ids = pretrain_report.audio_ids_of(rows, processor)
    for index in range(len(rows)):
        audio = all_ids[index]
        transcript = processor.tokenizer(rows[index]["text"], add_special_tokens=False)["input_ids"]
        in_training = any(contains(row, audio) for row in training_rows)
        assert in_training == (index in train_indices), index
        if index in heldout_indices:
            assert not any(contains(row, transcript) for row in training_rows), rows[index]["text"]
            # ...while the evaluation sets are made of exactly the held-out clips
            assert any(contains(row, audio) for row in eval_datasets["tts"]["input_ids"])


def test_report_compares_untrained_and_trained_on_the_heldout_clips(
    standin_prepared, standin_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    script_args, training_args = tiny_args(
        standin_prepared, standin_dir, out, "--max_steps", "2", "--eval_fraction", "0.125"
    )
    rows = load_audio_text_rows(DEMO_CORPUS).select(range(16))
    _, heldout_indices = pretraining.split_heldout(16, 0.125, training_args.seed)
    text_of_audio = {}

    # a transcriber with known output: nothing before training, after it the first held-out clip exactly and the
    # second with one character wrong ("." does not count: Whisper normalisation drops it)
    calls = []

    def fake_transcribe(model, processor, audio_ids, max_new_tokens):
        calls.append([text_of_audio[tuple(ids)] for ids in audio_ids])  # KeyError: not a held-out clip
        if len(calls) == 1:
            return ["" for _ in audio_ids]
        texts = calls[-1]
        return [texts[0], "x" + texts[1][1:]]

    monkeypatch.setattr(evaluation, "transcribe_audio_ids", fake_transcribe)
    spoken = []

    def fake_round_trip(model, processor, clips, reference_audio_ids, **kwargs):
        # the trained model speaks the held-out texts, then hears them: one of two words wrong in each
        spoken.append(([clip.text for clip in clips], kwargs))
        return {"cer": 0.25, "wer": 0.5, "transcripts": ["x"] * len(clips), "duration_ratio": 1.0}

    monkeypatch.setattr(pretrain_report, "speech_round_trip", fake_round_trip)
    processor_rows = None
    original_build = pretraining.build_datasets

    def build_and_index(script_args, processor, prepared, seed):
        nonlocal processor_rows
        processor_rows = prepared
        for ids, index in zip(pretrain_report.audio_ids_of(prepared, processor), range(len(prepared))):
            if index in heldout_indices:
                text_of_audio[tuple(ids)] = prepared[index]["text"]
        return original_build(script_args, processor, prepared, seed)

    monkeypatch.setattr(pretrain, "build_datasets", build_and_index)
    pretrain.main(script_args, training_args)

    report = json.loads((out / pretrain_report.REPORT_NAME).read_text())
    heldout_texts = [rows[i]["text"] for i in heldout_indices]
    assert calls == [heldout_texts, heldout_texts]
    assert spoken == [(heldout_texts, {"do_sample": False})]
    assert report["heldout"]["trained"]["speech_round_trip"]["cer"] == 0.25
    assert "speech_round_trip" not in report["heldout"]["untrained"] and "heldout_speakers" not in report
    assert report["heldout"]["clip_ids"] == [processor_rows[i]["id"] for i in heldout_indices]
    assert report["heldout"]["references"] == heldout_texts
    # by hand: normalised references, one substituted character in the second one
    normalised = [evaluation.normalize_text(text) for text in heldout_texts]
    assert normalised[1][0] != "x"
    expected_cer = 1 / sum(len(text) for text in normalised)
    assert report["heldout"]["trained"]["asr"]["cer"] == pytest.approx(expected_cer)
    assert report["heldout"]["untrained"]["asr"]["cer"] == pytest.approx(1.0)
    for model in ("untrained", "trained"):
        teacher_forced = report["heldout"][model]["teacher_forced"]
        assert 0 <= teacher_forced["audio_token_accuracy"] <= 1 and teacher_forced["audio_tokens"] > 0
    assert 0 < report["heldout"]["most_frequent_code_audio_accuracy"] < 1
    # the codec: the fitted stand-in, named as such, with one perplexity per codebook over all 16 clips
    assert report["codec"]["stand_in"] and "STAND-IN" in report["codec"]["note"]
    assert report["num_corpus_clips"] == 16 and len(report["code_perplexity"]) == 3
    assert all(1 <= value <= 1024 for value in report["code_perplexity"])
    assert not math.isnan(report["heldout"]["trained"]["teacher_forced"]["audio_loss"])
    # by hand, too: the best of the 14 training transcripts given for both held-out clips
    training_texts = [rows[i]["text"] for i in range(16) if i not in heldout_indices]
    best = min(
        sum(edit_distance(normalised_ref, evaluation.normalize_text(text)) for normalised_ref in normalised)
        / sum(len(text) for text in normalised)
        for text in training_texts
    )
    assert report["heldout"]["best_constant_transcript_cer"] == pytest.approx(best)
    checks, margins = report["heldout"]["checks"], report["heldout"]["margins"]
    assert checks["asr_cer_below_untrained"] and checks["asr_cer_below_best_constant_transcript"]
    assert (
        set(checks)
        == set(margins)
        == {
            "audio_accuracy_above_most_frequent_code",
            "audio_accuracy_above_untrained",
            "asr_cer_below_untrained",
            "asr_cer_below_best_constant_transcript",
            "speech_round_trip_cer_below_best_constant_transcript",
        }
    )
    # margins are relative: how far below the bar a CER is, as a share of the bar
    assert margins["asr_cer_below_untrained"] == pytest.approx(1 - expected_cer)
    assert margins["speech_round_trip_cer_below_best_constant_transcript"] == pytest.approx((best - 0.25) / best)
    assert checks["speech_round_trip_cer_below_best_constant_transcript"] == (0.25 < best)


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def test_checks_flag_a_model_that_learned_one_constant_code():
    # the old offline default: 0.99 audio-token accuracy, but so does predicting the most frequent code
    def heldout(cer, audio, floor, constant_cer):
        return {
            "untrained": {"asr": {"cer": 1.8}, "teacher_forced": {"audio_token_accuracy": 0.0}},
            "trained": {"asr": {"cer": cer}, "teacher_forced": {"audio_token_accuracy": audio}},
            "most_frequent_code_audio_accuracy": floor,
            "best_constant_transcript_cer": constant_cer,
        }

    checks, margins = pretrain_report.heldout_checks(heldout(cer=0.9, audio=0.99, floor=0.99, constant_cer=0.75))
    assert (
        not checks["audio_accuracy_above_most_frequent_code"] and not checks["asr_cer_below_best_constant_transcript"]
    )
    assert checks["audio_accuracy_above_untrained"] and checks["asr_cer_below_untrained"]
    assert margins["asr_cer_below_best_constant_transcript"] == pytest.approx(-0.2)
    assert margins["asr_cer_below_untrained"] == pytest.approx(0.5)
    checks, margins = pretrain_report.heldout_checks(heldout(cer=0.4, audio=0.08, floor=0.02, constant_cer=0.8))
    assert all(checks.values()) and margins["audio_accuracy_above_most_frequent_code"] == pytest.approx(3.0)
    assert "speech_round_trip_cer_below_best_constant_transcript" not in checks  # no round trip measured
    checks, margins = pretrain_report.heldout_checks(heldout(cer=None, audio=0.0, floor=0.03, constant_cer=None))
    assert not any(checks.values()) and margins["asr_cer_below_best_constant_transcript"] is None


def test_best_constant_transcript_cer_by_hand():
    # "ab" for both: 0 + 2 edits over 4 characters; "cd": 2 + 0; "abcd": 2 + 2 (insertions)
    assert evaluation.best_constant_transcript_cer(["cd", "ab", "abcd"], ["ab", "cd"]) == pytest.approx(0.5)
    assert evaluation.best_constant_transcript_cer(["ab"], [" "]) is None  # no reference character to err on
