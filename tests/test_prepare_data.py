"""prepare_data: corpus formats, audio decoding without FFmpeg, skipped rows, resumable shards, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from qwen_omni import SNACAudioTokenizer, SNACFeatureExtractor
from qwen_omni.common.audio import read_audio
from qwen_omni.common.clips import load_audio_text_rows
from qwen_omni.omni.corpus import load_prepared_dataset, prepare_dataset
from qwen_omni.processing_omni import encode_audio

from omni_testing import REPO_ROOT


DEMO = REPO_ROOT / "data" / "demo_corpus"


def demo_rows(count):
    return [json.loads(line) for line in (DEMO / "metadata.jsonl").read_text().splitlines()[:count]]


def save_audio_dataset(path, clips):
    """A `datasets` folder with an `Audio` column (`audio`) and a `transcript` column."""
    import datasets

    dataset = datasets.Dataset.from_dict(
        {"audio": [str(DEMO / r["audio"]) for r in clips], "transcript": [r["text"] for r in clips]}
    )
    dataset.cast_column("audio", datasets.Audio()).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def feature_extractor(snac_24khz_dir):
    """The codec prepare_dataset encodes with (the fixture keeps its first name)."""
    return SNACAudioTokenizer.from_pretrained(snac_24khz_dir)


def test_read_audio_formats_and_resampling(tmp_path, feature_extractor):
    waveform, rate = soundfile.read(DEMO / demo_rows(1)[0]["audio"], dtype="float32")
    for name, kwargs in (
        ("clip.wav", {}),
        ("clip.ogg", {"format": "OGG", "subtype": "VORBIS"}),
        ("clip.mp3", {"format": "MP3"}),
    ):
        soundfile.write(tmp_path / name, np.stack([waveform, waveform], 1), rate, **kwargs)  # stereo
        decoded, decoded_rate = read_audio(str(tmp_path / name))
        assert decoded_rate == rate and decoded.ndim == 1
        assert abs(decoded.size - waveform.size) < 0.05 * rate  # mp3 adds encoder delay
    decoded, _ = read_audio({"path": None, "bytes": (tmp_path / "clip.wav").read_bytes()})
    np.testing.assert_allclose(decoded, waveform, atol=1e-4)
    # a 16 kHz file comes out at the codec's rate with the same duration
    soundfile.write(tmp_path / "clip16k.wav", waveform[::3], 8000)
    rows = [{"id": "a", "audio": str(tmp_path / "clip16k.wav"), "text": "hello", "speaker": None}]
    from qwen_omni.omni.corpus import _decode_row

    _, resampled, reason = _decode_row(rows[0], 24000, None)
    assert reason is None and abs(resampled.size - waveform.size) <= 3


def test_corrupt_file_is_skipped_and_reported_and_second_run_reuses(tmp_path, feature_extractor):
    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True)
    records = []
    for row in demo_rows(3):
        shutil.copy(DEMO / row["audio"], corpus / "audio" / Path(row["audio"]).name)
        records.append({**row, "audio": "audio/" + Path(row["audio"]).name})
    (corpus / "audio" / "broken.flac").write_bytes(b"not audio at all" * 100)
    records.append({"audio": "audio/broken.flac", "text": "this file is corrupt", "speaker": "x"})
    records.append({**records[0], "text": "   "})
    (corpus / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records))

    out = tmp_path / "prepared"
    rows = load_audio_text_rows(corpus)
    summary = prepare_dataset(rows, out, feature_extractor, shard_size=2, num_proc=2, show_progress=False)
    assert (summary.num_rows, summary.num_kept, summary.num_skipped) == (5, 3, 2)
    written = json.loads((out / "summary.json").read_text())
    reasons = {entry["audio"].split("/")[-1]: entry["reason"] for entry in written["skipped"]}
    assert reasons["broken.flac"].startswith("unreadable audio")
    assert any(reason == "empty transcript" for reason in reasons.values())
    prepared = load_prepared_dataset(out)
    assert len(prepared) == 3 and set(prepared.column_names) >= {"audio_codes", "text", "speaker", "duration"}
    # the codes are exactly what the feature extractor gives (offset 0), whole frames
    waveform, rate = soundfile.read(corpus / records[0]["audio"], dtype="float32")
    front_end = SNACFeatureExtractor(sampling_rate=feature_extractor.config.sampling_rate)
    expected = feature_extractor.token_layout.codes_to_ids(
        encode_audio(front_end, feature_extractor, waveform, rate)[0]
    ).tolist()
    by_text = {row["text"]: row["audio_codes"] for row in prepared}
    assert by_text[records[0]["text"]] == expected

    again = prepare_dataset(rows, out, feature_extractor, shard_size=2, show_progress=False)
    assert again.shards_encoded == 0 and again.shards_reused == 3 and again.num_kept == 3


def test_librispeech_libritts_csv_and_datasets_sources(tmp_path):
    clips = demo_rows(2)
    libri = tmp_path / "LibriSpeech" / "19" / "198"
    libri.mkdir(parents=True)
    for i, row in enumerate(clips):
        shutil.copy(DEMO / row["audio"], libri / f"19-198-000{i}.flac")
    (libri / "19-198.trans.txt").write_text(
        "".join(f"19-198-000{i} {row['text'].upper()}\n" for i, row in enumerate(clips))
    )
    rows = load_audio_text_rows(tmp_path / "LibriSpeech")
    assert rows["speaker"] == ["19", "19"] and rows["text"][1] == clips[1]["text"].upper()

    tts = tmp_path / "LibriTTS" / "84" / "121123"
    tts.mkdir(parents=True)
    soundfile.write(tts / "84_121123_000008_000000.wav", np.zeros(2400, dtype=np.float32), 24000)
    (tts / "84_121123_000008_000000.normalized.txt").write_text("Hello world.")
    rows = load_audio_text_rows(tmp_path / "LibriTTS")
    assert rows[0]["text"] == "Hello world." and rows[0]["speaker"] == "84"

    csv_file = tmp_path / "clips.csv"
    csv_file.write_text(
        "path,sentence\n" + "".join(f"{DEMO / r['audio']},{r['text'].replace(',', '')}\n" for r in clips)
    )
    rows = load_audio_text_rows(csv_file, audio_column="path", text_column="sentence", speaker_column=None)
    assert len(rows) == 2 and rows[0]["speaker"] is None
    with pytest.raises(ValueError, match=r"audio column 'audio'.*--audio_column"):
        load_audio_text_rows(csv_file)

    # a datasets folder with an Audio column: cast to Audio(decode=False), decoded by soundfile
    save_audio_dataset(tmp_path / "hf", clips)
    rows = load_audio_text_rows(tmp_path / "hf", text_column="transcript")
    waveform, rate = read_audio(rows[0]["audio"])
    assert rate == 24000 and waveform.size > 0 and rows[0]["text"] == clips[0]["text"]
    with pytest.raises(ValueError, match=r"has the columns \['audio', 'transcript'\], not \['text'\]"):
        load_audio_text_rows(tmp_path / "hf")


def test_streaming_source_prepares_and_resumes(tmp_path, feature_extractor):
    hf = save_audio_dataset(tmp_path / "hf", demo_rows(2))
    for run in range(2):
        rows = load_audio_text_rows(hf, text_column="transcript", streaming=True)
        assert not hasattr(rows, "__len__")  # an IterableDataset
        summary = prepare_dataset(rows, tmp_path / "streamed", feature_extractor, shard_size=1, show_progress=False)
        assert summary.num_kept == 2 and (summary.shards_encoded, summary.shards_reused) == (
            (2, 0) if run == 0 else (0, 2)
        )
    assert len(load_prepared_dataset(tmp_path / "streamed")) == 2


def test_everything_filtered_is_a_clear_error(tmp_path, feature_extractor):
    rows = load_audio_text_rows(DEMO).select(range(2))
    with pytest.raises(ValueError, match=r"No usable row.*max_duration"):
        prepare_dataset(rows, tmp_path / "out", feature_extractor, max_duration=0.5, show_progress=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_skipped"] == 2 and summary["skipped"][0]["reason"].startswith("longer than the limit")
