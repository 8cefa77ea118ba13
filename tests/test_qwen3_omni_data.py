"""Qwen3-Omni SFT data: peer formats (LLaMA-Factory sharegpt / OpenAI, ms-swift), placeholder/media counts, refused
rows and their report, key-presence templates, reasoning kept in the labels, and `use_audio_in_video`.

The chat template is `qwen3_omni/tiny_chat_template.jinja`, which reproduces the real checkpoints' two traps
(part kind by key presence; `<think>` dropped from list-form replies)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoProcessor

from qwen_omni.qwen3_omni import Qwen3OmniSFTCollator, load_conversation_dataset, load_thinker, tiny_checkpoints
from qwen_omni.qwen3_omni.conversations import (
    DatasetReport,
    decode_media,
    detect_dataset_format,
    row_to_conversation,
    template_conversation,
)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "data", "examples")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
# Small video frames, so that a video costs a few dozen tokens
VIDEO_KWARGS = {"videos_kwargs": {"size": {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}}}
THINKING_REPLY = "<think>\nA red square, then a test pattern.\n</think>\n\nA red square and a test pattern."

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg for the test videos")


def make_video(path, with_sound=True):
    """A 1 s, 4 fps, 32x32 test-pattern mp4, with a 440 Hz sound track or silent (no audio stream at all)."""
    command = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=4:duration=1"]
    if with_sound:
        command += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=1", "-shortest", "-c:a", "aac"]
    subprocess.run([*command, "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)], check=True)
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_omni_data")
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base")  # with qwen3_omni/tiny_chat_template.jinja
    # The shipped examples, with media made here under the names they use
    data = root / "examples"
    shutil.copytree(EXAMPLES, data, ignore=shutil.ignore_patterns("media"))
    made = tiny_checkpoints.write_media(data / "media")
    assert sorted(os.listdir(data / "media")) == ["square.png", "tone.wav"], made
    make_video(data / "media" / "clip.mp4")
    make_video(data / "media" / "silent.mp4", with_sound=False)
    return {"root": root, "base": base, "data": data}


@pytest.fixture(scope="module")
def processor(workdir):
    return AutoProcessor.from_pretrained(workdir["base"])


def token_counts(processor, input_ids):
    return {
        kind: int((input_ids == getattr(processor, f"{kind}_token_id")).sum()) for kind in ("audio", "image", "video")
    }


def test_fixture_template_has_the_real_traps(processor):
    """The template the tiny checkpoints carry renders a None-filled text part as an image and drops list-form
    reasoning, as the real checkpoints' templates do."""
    none_filled = [{"role": "user", "content": [{"type": "text", "text": "hi", "image": None, "audio": None}]}]
    assert "<|image_pad|>" in processor.apply_chat_template(none_filled, tokenize=False)
    listed = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>\nhm\n</think>\n\nHello."}]},
    ]
    assert processor.apply_chat_template(listed, tokenize=False).endswith("<|im_start|>assistant\nHello.<|im_end|>\n")
    stringed = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello."}]
    assert "<think>\nhm\n</think>\n\nHello." in processor.apply_chat_template(stringed, tokenize=False)


@pytest.mark.parametrize(
    "file_name, expected_format",
    [("llamafactory_sharegpt.json", "sharegpt"), ("llamafactory_openai.json", "tagged"), ("ms_swift.jsonl", "tagged")],
)
def test_peer_format_files_train_like_the_native_rows(workdir, processor, file_name, expected_format):
    report = DatasetReport(name=file_name)
    peer = load_conversation_dataset(str(workdir["data"] / file_name), report=report)
    native = load_conversation_dataset(str(workdir["data"] / "native.jsonl"))
    assert report.dataset_format == expected_format and report.num_refused == 0 and len(peer) == 2
    collator = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS)
    for index in range(2):
        got, expected = collator([peer[index]]), collator([native[index]])
        assert torch.equal(got["input_ids"], expected["input_ids"])
        assert torch.equal(got["labels"], expected["labels"])
        for key in ("input_features", "pixel_values", "pixel_values_videos"):
            assert (key in got) == (key in expected)
            if key in got:
                assert torch.equal(got[key], expected[key])
    audio_row, visual_row = collator([peer[0]]), collator([peer[1]])
    audio_tokens = processor._get_num_audio_tokens(16000)  # the 1 s tone
    assert token_counts(processor, audio_row["input_ids"]) == {"audio": audio_tokens, "image": 0, "video": 0}
    assert audio_row["input_features"].shape[0] == 1
    assert token_counts(processor, visual_row["input_ids"]) == {
        "audio": 0,
        "image": int(visual_row["image_grid_thw"].prod()) // 4,
        "video": int(visual_row["video_grid_thw"].prod()) // 4,
    }
    assert visual_row["image_grid_thw"].shape[0] == 1 and visual_row["video_grid_thw"].shape[0] == 1
    # No tag survives as literal text
    text = processor.tokenizer.decode(visual_row["input_ids"][0])
    assert "<image>" not in text and "<video>" not in text


def test_format_is_detected_and_can_be_forced(workdir):
    rows = [json.loads(line) for line in open(workdir["data"] / "ms_swift.jsonl")]
    assert detect_dataset_format(rows) == "tagged"
    sharegpt = json.load(open(workdir["data"] / "llamafactory_sharegpt.json"))
    assert detect_dataset_format(sharegpt) == "sharegpt"
    with pytest.raises(ValueError, match=r"mix dataset formats: tagged \(row 0\), sharegpt \(row 2\).*--dataset_"):
        detect_dataset_format(rows + sharegpt)
    # A forced format is used as given (the sharegpt reader finds no from/value turns in ms-swift rows)
    report = DatasetReport(name="forced")
    with pytest.raises(ValueError, match="No trainable row left"):
        load_conversation_dataset(str(workdir["data"] / "ms_swift.jsonl"), dataset_format="sharegpt", report=report)
    assert report.dataset_format == "sharegpt" and report.refused == {"unsupported_turn_key": [0, 1]}
    assert report.first_messages["unsupported_turn_key"] == (
        "row 0: turn keys ['content', 'role'] are not supported by this recipe (sharegpt turns take "
        "['from', 'value'])."
    )
    with pytest.raises(ValueError, match="dataset_format='alpaca' is not one of"):
        load_conversation_dataset(str(workdir["data"] / "ms_swift.jsonl"), dataset_format="alpaca")


def test_sharegpt_roles_system_column_and_media_dir(workdir, tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "<audio>Weather?"},
                {"from": "function_call", "value": '{"name": "weather", "arguments": {}}'},
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "It is sunny."},
            ],
            "system": "Be brief.",
            "audios": ["tone.wav"],
        }
    ]
    conversation = row_to_conversation(rows[0], 0, "sharegpt", base_dir=str(workdir["data"] / "media"))
    assert [turn["role"] for turn in conversation] == ["system", "user", "assistant", "tool", "assistant"]
    assert conversation[0]["content"] == [{"type": "text", "text": "Be brief."}]
    assert conversation[1]["content"][0] == {"type": "audio", "audio": str(workdir["data"] / "media" / "tone.wav")}
    assert conversation[2]["content"][0]["text"] == '<tool_call>\n{"name": "weather", "arguments": {}}\n</tool_call>'
    # --media_dir: relative paths resolve there instead of next to the data file
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    dataset = load_conversation_dataset(str(tmp_path / "rows.json"), media_dir=str(workdir["data"] / "media"))
    assert dataset[0]["conversations"][1]["content"][0]["audio"] == str(workdir["data"] / "media" / "tone.wav")
    report = DatasetReport(name="no media dir")
    with pytest.raises(ValueError, match="No trainable row left"):
        load_conversation_dataset(str(tmp_path / "rows.json"), report=report)
    assert list(report.refused) == ["missing_media"]


def test_placeholder_media_mismatch_is_refused_counted_and_reported(workdir, tmp_path):
    good = {
        "messages": [{"role": "user", "content": "<audio>Hear?"}, {"role": "assistant", "content": "A tone."}],
        "audios": ["media/tone.wav"],
    }
    two_tags = {
        "messages": [{"role": "user", "content": "<audio><audio>Hear?"}, {"role": "assistant", "content": "x"}],
        "audios": ["media/tone.wav"],
    }
    untagged_image = {
        "messages": [{"role": "user", "content": "See?"}, {"role": "assistant", "content": "x"}],
        "images": ["media/square.png"],
    }
    path = workdir["data"] / "mismatch.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [good, two_tags, good, untagged_image]))
    report = DatasetReport(name="mismatch")
    dataset = load_conversation_dataset(str(path), report=report)
    assert dataset["row_id"] == [0, 2]
    assert report.refused == {"placeholder_mismatch": [1, 3]}
    assert report.first_messages["placeholder_mismatch"] == (
        "row 1: 2 <audio> placeholder(s) in the text but 1 audios given; each <audio> tag takes one entry of "
        "'audios', in order."
    )
    summary = report.to_dict()
    assert summary["num_refused"] == 2 and summary["refused"]["placeholder_mismatch"]["first_row_ids"] == [1, 3]
    report.check(0.5)
    with pytest.raises(ValueError, match=r"2 of 4 rows \(50.0%\) were refused, more than --max_skipped_fraction=0.1"):
        report.check(0.1)
    report.save(str(tmp_path / "report.json"))
    assert json.loads((tmp_path / "report.json").read_text())["refused"]["placeholder_mismatch"]["count"] == 2


def test_rows_through_datasets_render_like_plain_json(workdir, processor, tmp_path):
    """`load_dataset` fills every part key with None; the collator's rendering must not see them."""
    rows = [json.loads(line) for line in open(workdir["data"] / "native.jsonl")]
    folder = tmp_path / "hub_like"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    for name in ("tone.wav", "square.png", "clip.mp4"):
        (folder / "media").mkdir(exist_ok=True)
        shutil.copy(workdir["data"] / "media" / name, folder / "media" / name)
    through_datasets = load_conversation_dataset(str(folder))  # datasets.load_dataset on a folder
    from_file = load_conversation_dataset(str(folder / "train.jsonl"))  # Dataset.from_list: None-filled too
    plain = [row_to_conversation(row, index, "native", str(folder)) for index, row in enumerate(rows)]
    collator = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS)
    for index, conversation in enumerate(plain):
        loaded = through_datasets[index]["conversations"]
        assert any(value is None for turn in loaded for part in turn["content"] for value in part.values())
        # Before the parts are cleaned, a key-presence template renders the text part as an image placeholder
        assert processor.apply_chat_template(loaded, tokenize=False) != processor.apply_chat_template(
            conversation, tokenize=False
        )
        assert template_conversation(loaded) == template_conversation(conversation)
        assert (
            collator.render(loaded)
            == collator.render(conversation)
            == collator.render(from_file[index]["conversations"])
        )
        assert torch.equal(
            collator([through_datasets[index]])["input_ids"], collator([{"conversations": conversation}])["input_ids"]
        )
    assert collator.render(plain[0]) == (
        "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>What do you hear?<|im_end|>\n"
        "<|im_start|>assistant\nA steady tone.<|im_end|>\n"
    )


def test_thinking_replies_keep_their_reasoning_in_the_labels(workdir, processor):
    dataset = load_conversation_dataset(str(workdir["data"] / "llamafactory_sharegpt.json"))
    conversation = dataset[1]["conversations"]
    # The real rule drops the reasoning of this list-form reply ...
    assert "<think>" not in processor.apply_chat_template(template_conversation(conversation), tokenize=False)
    # ... the labels keep it, exactly as the data gives it
    batch = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS)([dataset[1]])
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels != -100]) == THINKING_REPLY + "<|im_end|>"
    # A multi-turn text conversation: both replies keep theirs
    turns = [
        {"role": "user", "content": "Two plus two?"},
        {"role": "assistant", "content": "<think>\ntwo plus two is four\n</think>\n\nFour."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "<think>\nfour and one\n</think>\n\nFive."},
    ]
    batch = Qwen3OmniSFTCollator(processor)([{"conversations": row_to_conversation({"messages": turns}, 0, "native")}])
    labels = batch["labels"][0]
    expected = (
        "<think>\ntwo plus two is four\n</think>\n\nFour.<|im_end|><think>\nfour and one\n</think>\n\nFive.<|im_end|>"
    )
    assert processor.tokenizer.decode(labels[labels != -100]) == expected
    # The same replies given as TRL/OpenAI `reasoning_content` train the same tokens
    turns[1] = {"role": "assistant", "reasoning_content": "two plus two is four", "content": "Four."}
    turns[3] = {"role": "assistant", "reasoning_content": "\nfour and one\n", "content": "Five."}
    batch = Qwen3OmniSFTCollator(processor)([{"conversations": row_to_conversation({"messages": turns}, 0, "native")}])
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels != -100]) == expected


def test_turn_keys_the_recipe_cannot_honour_are_refused(workdir):
    tool_call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}
    rows = [
        {"messages": [{"role": "user", "content": "Call f."}, tool_call]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "loss": False}]},
        {
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            "tools": '[{"name": "f"}]',
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ]
    path = workdir["data"] / "turn_keys.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    report = DatasetReport(name="turn keys")
    assert load_conversation_dataset(str(path), report=report)["row_id"] == [3]
    assert report.refused == {"unsupported_turn_key": [0, 1], "tools": [2]}
    assert "row 0: turn keys ['tool_calls'] are not supported" in report.first_messages["unsupported_turn_key"]


def test_use_audio_in_video_feeds_the_sound_track_interleaved(workdir, processor):
    row = {
        "conversations": [
            {
                "role": "user",
                "content": [{"type": "video", "video": "media/clip.mp4"}, {"type": "text", "text": "What happens?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A tone plays."}]},
        ]
    }
    path = workdir["data"] / "video.json"
    path.write_text(json.dumps([row]))
    dataset = load_conversation_dataset(str(path), use_audio_in_video=True)
    plain = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS)([dataset[0]])
    assert "input_features" not in plain and "use_audio_in_video" not in plain
    assert token_counts(processor, plain["input_ids"])["audio"] == 0

    # 4 frames at 4 fps: two temporal grids of 0.5 s, so the audio of the first half goes between them
    batch = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS, video_fps=4.0, use_audio_in_video=True)(
        [dataset[0]]
    )
    assert batch["video_grid_thw"][0, 0] == 2
    assert batch["use_audio_in_video"] is True and batch["input_features"].shape[0] == 1
    ids = batch["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    start = ids.index(tokenizer.convert_tokens_to_ids("<|vision_start|>"))
    end = ids.index(tokenizer.convert_tokens_to_ids("<|vision_end|>"))
    # Qwen3-Omni's layout: <|vision_start|><|audio_start|> video and audio tokens by time <|audio_end|><|vision_end|>
    assert ids[start + 1] == processor.tokenizer.convert_tokens_to_ids("<|audio_start|>")
    assert ids[end - 1] == processor.tokenizer.convert_tokens_to_ids("<|audio_end|>")
    inside = ids[start + 2 : end - 1]
    audio_positions = [i for i, token in enumerate(inside) if token == processor.audio_token_id]
    video_positions = [i for i, token in enumerate(inside) if token == processor.video_token_id]
    clip = str(workdir["data"] / "media" / "clip.mp4")
    track = decode_media([{"role": "user", "content": [{"type": "video", "video": [clip]}]}], use_audio_in_video=True)[
        "audios"
    ][0]
    assert abs(len(track) - 16000) < 2048  # the 1 s sine (AAC adds a few priming/padding samples)
    assert len(audio_positions) == processor._get_num_audio_tokens(len(track))
    assert len(video_positions) == int(batch["video_grid_thw"].prod()) // 4
    assert len(audio_positions) + len(video_positions) == len(inside)
    assert video_positions[0] < audio_positions[0] < video_positions[-1]  # interleaved, not appended

    thinker = load_thinker(workdir["base"]).eval()
    positions, _ = thinker.model.get_rope_index(
        batch["input_ids"],
        None,
        batch["video_grid_thw"],
        batch["attention_mask"],
        True,
        batch["feature_attention_mask"].sum(-1),
        batch["video_second_per_grid"],
    )
    temporal = positions[0, 0, start + 2 : end - 1]
    # By time: every token's temporal position is at least the one before it (the processor's interleaving order)
    assert (temporal[1:] >= temporal[:-1]).all()
    inputs = {
        key: value
        for key, value in batch.items()
        if key not in ("labels", "sample_weight", "num_truncated", "num_dropped_too_long", "num_skipped_media")
    }
    with torch.no_grad():
        logits = thinker(**inputs).logits
    assert torch.isfinite(logits).all()


def test_use_audio_in_video_refuses_silent_videos_and_frame_lists(workdir):
    rows = [
        {
            "messages": [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "x"}],
            "videos": ["media/silent.mp4"],
        },
        {
            "messages": [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "x"}],
            "videos": ["media/clip.mp4"],
        },
        {
            "conversations": [
                {"role": "user", "content": [{"type": "video", "video": ["media/square.png"] * 2}]},
                {"role": "assistant", "content": [{"type": "text", "text": "x"}]},
            ]
        },
    ]
    path = workdir["data"] / "silent.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    report = DatasetReport(name="silent")
    dataset = load_conversation_dataset(str(path), use_audio_in_video=True, dataset_format="tagged", report=report)
    assert dataset["row_id"] == [1]
    assert report.refused == {"video_without_audio": [0, 2]}
    assert (
        "silent.mp4' has no sound track, which --use_audio_in_video needs"
        in report.first_messages["video_without_audio"]
    )
    assert len(load_conversation_dataset(str(path), dataset_format="tagged")) == 3  # without the flag, all kept


def test_sft_stops_before_training_when_too_many_rows_are_refused(workdir, tmp_path):
    rows = [json.loads(line) for line in open(workdir["data"] / "ms_swift.jsonl")]
    broken = {**rows[0], "audios": []}  # one <audio> tag, no audio
    path = workdir["data"] / "too_many.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [rows[0], broken, rows[0], rows[0]]))
    out = tmp_path / "out"
    command = [
        sys.executable,
        os.path.join(REPO, "train", "sft.py"),
        "--model_name_or_path",
        workdir["base"],
        "--dataset_name",
        str(path),
        "--output_dir",
        str(out),
        "--dtype",
        "float32",
        "--max_steps",
        "1",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--max_skipped_fraction",
        "0.2",
    ]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "1 of 4 rows (25.0%) were refused, more than --max_skipped_fraction=0.2" in result.stderr
    assert "row 1: 1 <audio> placeholder(s) in the text but 0 audios given" in result.stderr
    report = json.loads((out / "data_report_train.json").read_text())
    assert report["format"] == "tagged" and report["refused"]["placeholder_mismatch"]["first_row_ids"] == [1]
    assert not (out / "checkpoint-1").exists() and "'loss'" not in result.stdout
