"""The Omni speech path off the happy path (issue 11, items 1-7): loader keyword arguments, pipeline batching and
decoding, the CLI's output file and one-line errors, shared row checks, length guards, empty speech, bad audio."""

import json
import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from transformers import AutoProcessor, AutoTokenizer, pipeline
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from qwen_omni import OmniProcessor, SNACFeatureExtractor
from qwen_omni.common.clips import load_audio_text_rows
from qwen_omni.entrypoints import cli
from qwen_omni.omni import pretraining
from qwen_omni.omni.corpus import load_prepared_dataset, prepare_dataset

from omni_testing import REPO_ROOT


FIXTURES = REPO_ROOT / "tests" / "fixtures"
OLD_CHECKPOINT = FIXTURES / "omni_checkpoint_v0"
SHORT, LONG = "Hello there.", "the quick brown fox jumps over the lazy dog, and a small model learns."
GREEDY = {"do_sample": False, "max_new_tokens": 29}


@pytest.fixture(scope="module")
def processor(omni_dir):
    return AutoProcessor.from_pretrained(omni_dir)


@pytest.fixture(scope="module")
def tts(omni_dir):
    return pipeline("text-to-speech", model=str(omni_dir), trust_remote_code=True, dtype=torch.float32)


def write_wav(path, samples, rate=24000):
    soundfile.write(path, np.asarray(samples, dtype=np.float32), rate, subtype="PCM_16")
    return str(path)


def noise(seconds, rate=24000, seed=0):
    return np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- 1. loader kwargs
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_processor_loads_with_loader_dtype_and_ignores_it(omni_dir, dtype):
    processor = AutoProcessor.from_pretrained(omni_dir, trust_remote_code=True, dtype=dtype)
    assert "dtype" not in processor.feature_extractor.to_dict()
    json.loads(processor.feature_extractor.to_json_string())  # was: "Object of type dtype is not JSON serializable"
    feature_extractor, unused = SNACFeatureExtractor.from_pretrained(
        omni_dir, dtype=dtype, device_map="cpu", max_duration_seconds=3, return_unused_kwargs=True
    )
    assert unused == {"dtype": dtype, "device_map": "cpu"} and feature_extractor.max_duration_seconds == 3
    # the batch size of the codec is the processor's; the codec itself stays in float32 (SNAC's attention needs it)
    processor = OmniProcessor.from_pretrained(omni_dir, dtype=dtype, device_map="cpu", encode_batch_size=3)
    assert processor.encode_batch_size == 3 and processor.audio_tokenizer.dtype == torch.float32


def test_bf16_pipeline_returns_a_waveform_not_token_ids(omni_dir):
    tts = pipeline("text-to-speech", model=str(omni_dir), trust_remote_code=True, dtype=torch.bfloat16)
    assert tts.processor is not None
    out = tts(SHORT, generate_kwargs=GREEDY)
    samples_per_frame = tts.processor.audio_tokenizer.config.samples_per_frame
    assert out["sampling_rate"] == 24000
    assert out["audio"].dtype == np.float32 and out["audio"].size == 4 * samples_per_frame  # 29 tokens: 4 frames


# ---------------------------------------------------------------------------------------------- 2. left padding
def test_pipeline_equals_generate_and_batches_padded_left(omni_dir, tts, processor):
    assert tts.tokenizer.padding_side == "left" and AutoTokenizer.from_pretrained(omni_dir).padding_side == "left"
    model = tts.model
    direct = processor.decode(model.generate(**processor(text=SHORT), **GREEDY))
    alone = tts(SHORT, generate_kwargs=GREEDY)["audio"]
    np.testing.assert_array_equal(alone, direct.numpy())
    batched = tts([SHORT, LONG], batch_size=2, generate_kwargs=GREEDY)
    np.testing.assert_allclose(batched[0]["audio"], alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched[1]["audio"], tts(LONG, generate_kwargs=GREEDY)["audio"], atol=1e-5, rtol=0)


def test_old_checkpoint_gets_left_padding_and_the_new_defaults():
    import qwen_omni

    qwen_omni.register_auto_classes()  # the fixture ships no code files: the registered classes load it

    processor = AutoProcessor.from_pretrained(OLD_CHECKPOINT)
    # both sides a pipeline may pad with (its feature extractor's, saved as "right", in processor-only mode)
    assert processor.tokenizer.padding_side == processor.feature_extractor.padding_side == "left"
    assert processor.feature_extractor.max_duration_seconds == 30.0  # saved as null
    config = json.loads((OLD_CHECKPOINT / "config.json").read_text())
    assert processor.model_max_length == config["max_position_embeddings"]


# ---------------------------------------------------------------------------------------------- 3. the CLI's output
def error_lines(stderr):
    return [line for line in stderr.splitlines() if "error:" in line]


def test_speak_refuses_bad_text_and_keeps_the_existing_file(omni_dir, tmp_path, capsys):
    out = write_wav(tmp_path / "keep.wav", noise(2.2))
    before = Path(out).read_bytes()
    status, _, stderr = run_in_process(
        capsys, "speak", "--model", str(omni_dir), "--text", "bad <|pad|>", "--out", out
    )
    assert (
        status == 2 and len(error_lines(stderr)) == 1 and "contains the special-token string(s) ['<|pad|>']" in stderr
    )
    # non-UTF-8 bytes on a real command line
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_omni.entrypoints.cli",
            "speak",
            "--model",
            str(omni_dir),
            "--text",
            os.fsdecode(b"bad \xff\xfe"),
            "--out",
            out,
        ],
        capture_output=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2 and "Traceback" not in stderr, stderr
    assert error_lines(stderr) == [
        "qwen-omni speak: error: --text is not valid UTF-8 text; pass UTF-8 (e.g. convert it with `iconv -t UTF-8`)."
    ]
    assert Path(out).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]


def test_speak_streams_a_valid_file_and_sigterm_leaves_the_output_unchanged(omni_dir, tmp_path, monkeypatch, capsys):
    from qwen_omni.omni import speech

    out = write_wav(tmp_path / "keep.wav", noise(2.2))
    before = Path(out).read_bytes()
    seen = []

    class TerminatedStreamer(speech.OmniAudioStreamer):
        """Checks the partial file after each chunk, and sends SIGTERM after the second."""

        def __init__(self, processor, on_chunk=None, **kwargs):
            def on_chunk_then_check(chunk):
                on_chunk(chunk)
                (partial,) = tmp_path.glob("keep.wav.*.partial.wav")
                with wave.open(str(partial)) as handle:  # the header's frame count is the data written so far
                    seen.append((handle.getnframes(), (partial.stat().st_size - 44) // 2))
                if len(seen) == 2:
                    os.kill(os.getpid(), signal.SIGTERM)

            super().__init__(processor, on_chunk=on_chunk_then_check, **kwargs)

    monkeypatch.setattr(speech, "OmniAudioStreamer", TerminatedStreamer)
    argv = ["speak", "--model", str(omni_dir), "--text", SHORT, "--out", out, "--max-new-tokens", "200", "--greedy"]
    status = cli.main(argv)
    stderr = capsys.readouterr().err
    assert status == 2 and "interrupted by SIGTERM" in stderr
    assert len(seen) == 2 and all(frames == data for frames, data in seen) and seen[1][0] > 0
    assert Path(out).read_bytes() == before
    (partial,) = tmp_path.glob("keep.wav.*.partial.wav")
    assert str(partial) in stderr and soundfile.info(partial).frames == seen[1][0]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_speak_replaces_the_output_only_when_done(omni_dir, tmp_path, capsys):
    out = write_wav(tmp_path / "keep.wav", noise(2.2))
    argv = ["speak", "--model", str(omni_dir), "--text", SHORT, "--out", out, "--max-new-tokens", "29", "--greedy"]
    assert cli.main(argv) == 0
    audio, rate = soundfile.read(out)
    assert rate == 24000 and 0 < audio.size < 2.2 * rate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]


# ---------------------------------------------------------------------------------------------- 4. shared row checks
def test_prepare_data_and_training_accept_the_same_rows(omni_dir, processor, tmp_path):
    import datasets

    from qwen_omni.omni.corpus import check_prepared_rows

    clip = write_wav(tmp_path / "clip.wav", noise(0.5))
    rows = [
        {"id": "good", "audio": clip, "text": "hello there", "speaker": "tara"},
        {"id": "pad-in-text", "audio": clip, "text": "hello <|pad|> there", "speaker": "tara"},
        {"id": "qwen-token-in-speaker", "audio": clip, "text": "hello", "speaker": "<|im_start|>tara"},
        {"id": "eos-in-text", "audio": clip, "text": "hello<|endoftext|>", "speaker": None},
    ]
    summary = prepare_dataset(
        datasets.Dataset.from_list(rows), tmp_path / "prepared", processor.audio_tokenizer, show_progress=False
    )
    skipped = {entry["id"]: entry["reason"] for entry in summary.skipped}
    assert sorted(skipped) == ["eos-in-text", "pad-in-text", "qwen-token-in-speaker"]
    assert all(reason.startswith("unusable text") for reason in skipped.values())
    kept = load_prepared_dataset(tmp_path / "prepared")
    assert kept["id"] == ["good"]
    check_prepared_rows(kept, processor, tmp_path / "prepared")  # training takes every kept row
    # a folder prepared before the check: training names the row instead of failing inside the packing
    message = r"1 prepared rows of .* row 'pad-in-text': transcript 'hello <\|pad\|> there' contains"
    with pytest.raises(ValueError, match=message):
        check_prepared_rows(datasets.Dataset.from_list([rows[0], rows[1]]), processor, "old-folder")


def test_pretrain_checks_the_prepared_rows(omni_dir, processor, tmp_path):
    import datasets
    from test_pretrain import tiny_args

    from qwen_omni.omni import corpus

    clip = write_wav(tmp_path / "clip.wav", noise(0.5))
    prepared = tmp_path / "prepared"
    rows = [{"id": "good", "audio": clip, "text": "hello there", "speaker": None}]
    prepare_dataset(datasets.Dataset.from_list(rows), prepared, processor.audio_tokenizer, show_progress=False)
    record = load_prepared_dataset(prepared).to_list()[0]
    corpus._write_shard(
        [record, {**record, "id": "old-row", "text": "hi <|audio_end|>"}], corpus._shard_dir(prepared, 0)
    )
    script_args, _ = tiny_args(prepared, omni_dir, tmp_path / "out")
    with pytest.raises(ValueError, match=r"row 'old-row': transcript 'hi <\|audio_end\|>' contains"):
        pretraining.prepared_rows(script_args, processor, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- 5. length guards
def test_feature_extractor_duration_default_and_limits(omni_dir):
    feature_extractor = SNACFeatureExtractor.from_pretrained(omni_dir)
    assert feature_extractor.max_duration_seconds == 30.0
    with pytest.raises(ValueError, match=r"Audio clip 1 lasts 31.0 s, longer than max_duration_seconds=30.0"):
        feature_extractor([np.zeros(100, np.float32), np.zeros(31 * 24000, np.float32)], sampling_rate=24000)
    feature_extractor.max_duration_seconds = float("inf")
    assert (
        feature_extractor(np.zeros(31 * 24000, np.float32), sampling_rate=24000)["padding_mask"].sum().item()
        == 31 * 24000
    )
    for bad in (float("nan"), -1.0, 0, True, "30"):
        with pytest.raises(ValueError, match="max_duration_seconds=.* must be a positive number"):
            SNACFeatureExtractor.from_pretrained(omni_dir, max_duration_seconds=bad)


def test_processor_refuses_prompts_longer_than_the_positions(processor):
    assert processor.model_max_length == 2048  # read from config.json (the tiny model's max_position_embeddings)
    with pytest.raises(
        ValueError,
        match=r"text-to-speech prompt of row 1 is \d+ tokens long, but the model takes 2048 "
        r"positions .*split the text into sentences",
    ):
        processor(text=[SHORT, "word " * 20000])
    processor.feature_extractor.max_duration_seconds = float("inf")
    try:
        with pytest.raises(ValueError, match=r"speech-to-text prompt of row 0 is \d+ tokens long.*shorter clips"):
            processor(audio=np.zeros(26 * 24000, np.float32), sampling_rate=24000)  # 26 s: 2137 audio tokens
    finally:
        processor.feature_extractor.max_duration_seconds = 30.0


@pytest.mark.parametrize("max_position_embeddings", [4096, 2048, 1024])
def test_default_max_new_tokens_fits_the_positions(snac_24khz_dir, max_position_embeddings):
    from qwen_omni.omni.build import PROMPT_RESERVE_TOKENS, build_omni_from_scratch

    from omni_testing import tiny_bpe_tokenizer

    model, processor = build_omni_from_scratch(
        tiny_bpe_tokenizer(),
        snac_24khz_dir,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_position_embeddings,
    )
    max_new_tokens = model.generation_config.max_new_tokens
    assert max_new_tokens + PROMPT_RESERVE_TOKENS <= max_position_embeddings  # was 4200 for every size
    assert max_new_tokens % 7 == 0 and processor.model_max_length == max_position_embeddings


# ---------------------------------------------------------------------------------------------- 6. empty speech
def test_decode_without_a_whole_frame_is_an_empty_waveform(processor, tmp_path):
    prompt = processor(text=SHORT, return_tensors=None)["input_ids"][0]
    offset = processor.token_layout.audio_token_offset
    partial_frame = [offset + 1, offset + 40]  # two tokens of a 7-token frame
    no_frame = prompt + partial_frame + [processor.audio_end_token_id]
    with CaptureLogger(logging.get_logger(type(processor).__module__)) as captured:
        waveform = processor.decode(no_frame)
    assert isinstance(waveform, np.ndarray) and waveform.dtype == np.float32 and waveform.size == 0
    assert "No whole audio frame was generated" in captured.out
    assert [w.size for w in processor.batch_decode([no_frame, prompt])] == [0, 0]
    assert processor.decode(torch.tensor([no_frame])).numel() == 0  # the pipeline's (1, length) form
    # generated ids alone: speech cut before its first frame, but words that end on audio-end stay text
    assert processor.decode([processor.audio_end_token_id]).size == 0
    words = processor.tokenizer("hello there", add_special_tokens=False)["input_ids"]
    assert processor.decode([*words, processor.audio_end_token_id], skip_special_tokens=True) == "hello there"
    processor.save_audio(waveform, tmp_path / "empty.wav")
    assert soundfile.info(tmp_path / "empty.wav").frames == 0
    # with a voice prompt, speech without a frame is empty, not the voice prompt's audio
    voice = processor(
        text=SHORT,
        voice_prompt_audio=noise(0.3),
        voice_prompt_text="hi",
        voice_prompt_sampling_rate=24000,
        return_tensors=None,
    )["input_ids"][0]
    assert processor.decode(voice + [processor.audio_end_token_id]).size == 0


def test_pipeline_num_return_sequences_gives_one_waveform_each(tts):
    audio_end = tts.processor.audio_end_token_id  # sampled rows then both hold 4 whole frames
    generate_kwargs = {
        "do_sample": True,
        "max_new_tokens": 29,
        "num_return_sequences": 2,
        "suppress_tokens": [audio_end],
    }
    out = tts(SHORT, generate_kwargs=generate_kwargs)
    assert isinstance(out["audio"], list) and [a.shape for a in out["audio"]] == [(4 * 2048,), (4 * 2048,)]


# ---------------------------------------------------------------------------------------------- 7. bad audio, CLI errors
def test_feature_extractor_audio_checks(processor):
    feature_extractor = processor.feature_extractor
    with pytest.raises(ValueError, match=r"Audio clip 0 is empty \(0 samples\)"):
        feature_extractor(
            [np.zeros((1, 0), np.float32)], sampling_rate=24000
        )  # an empty WAV, read (channels, samples)
    for rate in (True, 8000.7, float("nan"), None):
        with pytest.raises(ValueError, match=rf"`sampling_rate` must be a positive number, got {rate!r}"):
            feature_extractor(np.zeros(100, np.float32), sampling_rate=rate)
    assert processor.audio_to_ids(np.zeros(100, np.float32), sampling_rate=16000.0)[0].numel() == 7
    pcm = (noise(0.5) * 32767).astype(np.int16)
    as_int = processor.audio_to_ids(pcm, sampling_rate=24000)[0]
    as_float = processor.audio_to_ids(pcm.astype(np.float32) / 32768, sampling_rate=24000)[0]
    assert torch.equal(as_int, as_float)
    assert torch.equal(processor.audio_to_ids(torch.from_numpy(pcm), sampling_rate=24000)[0], as_float)


def run_in_process(capsys, *argv):
    """`qwen-omni ...` through `cli.main`: (exit status, stdout, stderr); argparse's errors exit with status 2."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_transcribe_reports_bad_files_and_keeps_input_order(omni_dir, tmp_path, capsys):
    files = [
        write_wav(tmp_path / "a.wav", noise(0.4, seed=1)),
        str(tmp_path / "missing.wav"),
        write_wav(tmp_path / "b16k.wav", noise(0.4, 16000, seed=2), 16000),
        write_wav(tmp_path / "empty.wav", np.zeros(0)),
        write_wav(tmp_path / "long.wav", np.zeros(31 * 24000)),
        write_wav(tmp_path / "c.wav", noise(0.3, seed=3)),
    ]
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(Path(files[0]).read_bytes()[:5000])
    files.insert(2, str(truncated))
    status, stdout, stderr = run_in_process(
        capsys, "transcribe", "--model", str(omni_dir), "--max-new-tokens", "3", *files
    )
    assert status == 1 and "Traceback" not in stderr, stderr
    # the 16 kHz file between two 24 kHz ones stays in its place (results were grouped by rate)
    assert [line.split("\t")[0] for line in stdout.splitlines()] == [files[0], files[3], files[-1]]
    errors = error_lines(stderr)
    assert len(errors) == 4
    assert f"{tmp_path / 'missing.wav'}: no such file" in stderr
    assert (
        f"{truncated}: the file is truncated or corrupt: its header promises 19200 bytes of audio but it holds 4956"
        in (stderr)
    )
    assert f"{tmp_path / 'empty.wav'}: the audio has 0 samples" in stderr
    assert f"{tmp_path / 'long.wav'} lasts 31.0 s, longer than max_duration_seconds=30.0; split it" in stderr


def test_cli_errors_are_one_line(omni_dir, qwen3_lm_dir, tmp_path, capsys):
    clip = write_wav(tmp_path / "a.wav", noise(0.2))
    cases = [
        (["transcribe", "--model", str(tmp_path / "nope"), clip], "no such folder"),
        (["transcribe", "--model", str(qwen3_lm_dir), clip], "is a 'qwen3' model, not an Omni checkpoint"),
        (["transcribe", "--model", str(omni_dir), str(tmp_path / "missing.wav")], "missing.wav: no such file"),
        (["transcribe", "--model", str(omni_dir), "--batch-size", "0", clip], "--batch-size must be a positive"),
        (
            [
                "speak",
                "--model",
                str(omni_dir),
                "--text",
                "hi",
                "--out",
                str(tmp_path / "x.wav"),
                "--max-duration",
                "inf",
            ],
            "--max-duration must be a positive, finite float",
        ),
        (
            ["speak", "--model", str(omni_dir), "--text", "hi", "--out", str(tmp_path / "no" / "x.wav")],
            "does not exist",
        ),
        (
            ["speak", "--model", str(omni_dir), "--text", "bad \udcff", "--out", str(tmp_path / "x.wav")],
            "not valid UTF-8",
        ),
        (
            [
                "speak",
                "--model",
                str(omni_dir),
                "--text",
                "hi",
                "--out",
                str(tmp_path / "x.wav"),
                "--max-new-tokens",
                "100000",
            ],
            "100000",
        ),
        (
            [
                "speak",
                "--model",
                str(omni_dir),
                "--text",
                "hi",
                "--out",
                str(tmp_path / "x.wav"),
                "--voice-prompt",
                write_wav(tmp_path / "ref.wav", np.zeros(31 * 24000)),
                "--voice-prompt-text",
                "hi",
            ],
            "ref.wav lasts 31.0 s",
        ),
    ]
    for argv, message in cases:
        status, _, stderr = run_in_process(capsys, *argv)
        assert status == 2 and "Traceback" not in stderr, (argv, stderr)
        assert len(error_lines(stderr)) == 1 and message in error_lines(stderr)[0], (argv, stderr)
    assert not (tmp_path / "x.wav").exists()


def test_prepare_data_keeps_clips_up_to_its_own_max_duration(processor, tmp_path):
    import datasets

    rows = datasets.Dataset.from_list(
        [{"id": "long", "audio": write_wav(tmp_path / "long.wav", noise(31)), "text": "hi"}]
    )
    summary = prepare_dataset(rows, tmp_path / "out", processor.audio_tokenizer, max_duration=60, show_progress=False)
    assert summary.num_kept == 1 and processor.feature_extractor.max_duration_seconds == 30.0


def test_prepare_data_names_the_bad_json_line_and_skips_truncated_wavs(processor, tmp_path):
    good = write_wav(tmp_path / "good.wav", noise(0.5))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(Path(good).read_bytes()[:4000])
    lines = [
        json.dumps({"audio": "good.wav", "text": "hello"}),
        "",
        json.dumps({"audio": "truncated.wav", "text": "hi"}),
    ]
    metadata = tmp_path / "metadata.jsonl"
    metadata.write_text("\n".join(lines) + "\n")
    summary = prepare_dataset(
        load_audio_text_rows(metadata), tmp_path / "out", processor.audio_tokenizer, show_progress=False
    )
    assert summary.num_kept == 1 and summary.skipped_by_reason == {"unreadable audio": 1}
    assert (
        "truncated or corrupt: its header promises 24000 bytes of audio but it holds 3956"
        in summary.skipped[0]["reason"]
    )
    metadata.write_text("\n".join([*lines, '{"audio": "good.wav", "text": "broken}']) + "\n")
    with pytest.raises(
        ValueError, match=r"metadata.jsonl line 4 is not valid JSON \(Unterminated string starting at column 31"
    ):
        load_audio_text_rows(metadata)
    with pytest.raises(ValueError, match=r"max_duration=nan must be a positive number"):
        prepare_dataset([], tmp_path / "out2", processor.audio_tokenizer, max_duration=float("nan"))
