"""The peers' own demo rows (copied verbatim into `tests/fixtures/peers/`, see its README) through the Qwen3-Omni data
path, with small generated media under the same names and of the same kinds: LLaMA-Factory's `mllm_*demo.json` and
ms-swift's documented multimodal rows, media reaching the encoders as many times as the rows name them, and
`--use_audio_in_video` as each peer means it, checked against Qwen's own inference path (`qwen-omni-utils`'
`process_mm_info` and `Qwen3OmniMoeProcessor(use_audio_in_video=True)`; transformers 5.x needs the decoded track's
`audio_from_video_indices` beside it, or torchcodec to decode the track itself)."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from qwen_omni_utils import process_mm_info
from transformers import AutoProcessor

from qwen_omni.qwen3_omni import (
    Qwen3OmniSFTCollator,
    load_conversation_dataset,
    load_thinker,
    tiny_checkpoints,
)
from qwen_omni.qwen3_omni.conversations import DatasetReport


PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "peers")
LLAMAFACTORY_FILES = ("mllm_demo.json", "mllm_audio_demo.json", "mllm_video_demo.json", "mllm_video_audio_demo.json")
# Small video frames, so that a video costs a few dozen tokens
VIDEO_KWARGS = {"videos_kwargs": {"size": {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}}}
MODEL_KEYS = (
    "input_ids",
    "attention_mask",
    "input_features",
    "feature_attention_mask",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
    "use_audio_in_video",
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg for the test media")


def tone(path, seconds=1.0, frequency=440.0, rate=16000):
    """A sine tone written by ffmpeg in the container and codec the name's extension implies (mp3, wav, flac)."""
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency={frequency}:sample_rate={rate}:duration={seconds}",
            str(path),
        ],
        check=True,
    )


def video(path, sound=False, seconds=1, rate=4):
    """A 32x32 test-pattern video, with no audio stream unless `sound` (an mp4 with AAC, an avi with mpeg4)."""
    command = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc=size=32x32:rate={rate}:duration={seconds}",
    ]
    if sound:
        command += ["-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=16000:duration={seconds}", "-shortest"]
    codec = ["-c:v", "mpeg4"] if str(path).endswith(".avi") else ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    subprocess.run([*command, *codec, str(path)], check=True)


def picture(path, color):
    from PIL import Image

    Image.fromarray(np.full((40, 48, 3), color, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer_demos")
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base")
    # LLaMA-Factory's data folder: the demo files and mllm_demo_data/ with media of the same names and kinds
    llamafactory = root / "llamafactory"
    shutil.copytree(os.path.join(PEERS, "llamafactory"), llamafactory)
    media = llamafactory / "mllm_demo_data"
    media.mkdir()
    for index, color in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200)), start=1):
        picture(media / f"{index}.jpg", color)
    tone(media / "1.mp3"), tone(media / "2.wav", frequency=550), tone(media / "3.flac", frequency=660)
    tone(media / "4.mp3", seconds=2.0, frequency=770)
    for name in ("1.mp4", "2.avi", "3.mp4", "4.mp4"):
        video(media / name, seconds=2 if name == "4.mp4" else 1)  # none of LLaMA-Factory's demo videos has sound
    # ms-swift's documented rows use the placeholder folder /xxx/: point it at a folder of such files
    swift = root / "ms_swift"
    swift.mkdir()
    with open(os.path.join(PEERS, "ms_swift", "custom_dataset_sft.jsonl")) as f:
        rows = f.read()
    (swift / "custom_dataset_sft.jsonl").write_text(rows.replace("/xxx/", f"{swift}/"))
    picture(swift / "x.jpg", (90, 90, 10)), picture(swift / "x.png", (10, 90, 90))
    tone(swift / "x.mp3")
    video(swift / "x.mp4", sound=True)
    for name, color in zip(("y", "a", "b", "c"), (40, 80, 120, 160)):
        picture(swift / f"{name}.png", (color, color, color))
    return {"root": root, "base": base, "llamafactory": llamafactory, "swift": swift}


@pytest.fixture(scope="module")
def processor(workdir):
    return AutoProcessor.from_pretrained(workdir["base"])


@pytest.fixture(scope="module")
def thinker(workdir):
    return load_thinker(workdir["base"]).eval()


def encoder_calls(thinker, batch):
    """Run the Thinker on one collated batch; return how many clips reached the audio encoder and how many images and
    videos the vision encoder saw, counted by hooks on the encoders."""
    seen = {"audio_clips": 0, "vision_items": 0, "audio_calls": 0, "vision_calls": 0}

    def on_audio(module, args, kwargs):
        seen["audio_calls"] += 1
        seen["audio_clips"] += len(kwargs["feature_lens"])

    def on_vision(module, args, kwargs):
        seen["vision_calls"] += 1
        seen["vision_items"] += len(kwargs["grid_thw"])

    hooks = [
        thinker.model.audio_tower.register_forward_pre_hook(on_audio, with_kwargs=True),
        thinker.model.visual.register_forward_pre_hook(on_vision, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            logits = thinker(**{key: batch[key] for key in MODEL_KEYS if key in batch}).logits
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.isfinite(logits).all()
    return seen


def rope_positions(thinker, batch):
    positions, _ = thinker.model.get_rope_index(
        batch["input_ids"],
        batch.get("image_grid_thw"),
        batch.get("video_grid_thw"),
        batch["attention_mask"],
        bool(batch.get("use_audio_in_video", False)),
        batch["feature_attention_mask"].sum(-1) if "feature_attention_mask" in batch else None,
        batch.get("video_second_per_grid"),
    )
    return positions


@pytest.mark.parametrize("file_name", LLAMAFACTORY_FILES)
def test_llamafactory_demo_files_reach_the_encoders_row_by_row(workdir, processor, thinker, file_name):
    rows = json.loads((workdir["llamafactory"] / file_name).read_text())
    report = DatasetReport(name=file_name)
    dataset = load_conversation_dataset(str(workdir["llamafactory"] / file_name), report=report)
    assert report.dataset_format == "tagged" and report.num_refused == 0 and len(dataset) == len(rows) >= 3
    collator = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS)
    for row, example in zip(rows, dataset):
        batch = collator([example])
        assert int(batch["num_skipped_media"]) == 0
        named = {
            kind: len(row.get(column, []))
            for kind, column in (("audio", "audios"), ("image", "images"), ("video", "videos"))
        }
        seen = encoder_calls(thinker, batch)
        # Each media entry reaches its encoder once: one audio clip per audio, one vision item per image or video
        assert seen["audio_clips"] == named["audio"] and seen["audio_calls"] == int(named["audio"] > 0)
        assert seen["vision_items"] == named["image"] + named["video"]
        assert seen["vision_calls"] == int(named["image"] > 0) + int(named["video"] > 0)
        # Every label is a reply token: the replies of the row, each closed by <|im_end|>
        labels = batch["labels"][0]
        replies = [turn["content"] + "<|im_end|>" for turn in row["messages"] if turn["role"] == "assistant"]
        assert processor.tokenizer.decode(labels[labels != -100]) == "".join(replies)


def test_llamafactory_video_audio_demo_with_use_audio_in_video(workdir, processor, thinker):
    """LLaMA-Factory's convention: the <audio> after each <video> is the video's sound, fed once, inside the video's
    placeholder. Its demo videos have no sound track, and every row used to be refused (video_without_audio)."""
    path = workdir["llamafactory"] / "mllm_video_audio_demo.json"
    report = DatasetReport(name="video_audio")
    dataset = load_conversation_dataset(str(path), use_audio_in_video=True, report=report)
    assert report.num_refused == 0 and len(dataset) == 3
    video_part = dataset[0]["conversations"][0]["content"][0]
    assert video_part["video"] == [str(workdir["llamafactory"] / "mllm_demo_data" / "4.mp4")]
    assert video_part["video_audio"] == str(workdir["llamafactory"] / "mllm_demo_data" / "4.mp3")
    collator = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS, use_audio_in_video=True)
    batch = collator([dataset[0]])
    seen = encoder_calls(thinker, batch)
    assert seen == {"audio_clips": 1, "vision_items": 1, "audio_calls": 1, "vision_calls": 1}  # the audio once
    ids = batch["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    start = ids.index(tokenizer.convert_tokens_to_ids("<|vision_start|>"))
    assert ids[start + 1] == tokenizer.convert_tokens_to_ids("<|audio_start|>")  # the audio is inside the video's
    assert ids.count(tokenizer.convert_tokens_to_ids("<|audio_start|>")) == 1  # and nowhere else

    # Qwen's own path on the same inputs: process_mm_info's decoding, the processor's use_audio_in_video=True
    audio_conversation = [{"role": "user", "content": [{"type": "audio", "audio": video_part["video_audio"]}]}]
    video_conversation = [{"role": "user", "content": [{"type": "video", "video": video_part["video"][0]}]}]
    audios, _, _ = process_mm_info(audio_conversation, use_audio_in_video=False)
    _, _, videos, video_kwargs = process_mm_info(
        video_conversation, use_audio_in_video=False, return_video_kwargs=True
    )
    expected = processor(
        text=[collator.render(dataset[0]["conversations"])],
        audio=audios,
        videos=videos,
        use_audio_in_video=True,
        audio_from_video_indices=[0],
        return_tensors="pt",
        videos_kwargs={**VIDEO_KWARGS["videos_kwargs"], "fps": video_kwargs["fps"][0], "do_sample_frames": False},
    )
    expected["use_audio_in_video"] = True
    for key in ("input_ids", "input_features", "feature_attention_mask", "pixel_values_videos", "video_grid_thw"):
        assert torch.equal(batch[key], expected[key]), key
    assert torch.equal(rope_positions(thinker, batch), rope_positions(thinker, expected))
    audio_tokens = int((batch["input_ids"] == processor.audio_token_id).sum())
    assert audio_tokens == processor._get_num_audio_tokens(len(audios[0])) > 0


def test_paired_audio_trains_as_the_same_sound_inside_the_video_file(workdir, processor, thinker, tmp_path):
    """A LLaMA-Factory row pairing a silent video with a wav gives the tensors and position ids of a native row whose
    video holds that wav as its sound track (muxed losslessly), decoded by process_mm_info as at inference."""
    silent, sound = tmp_path / "clip.mp4", tmp_path / "voice.wav"
    video(silent, seconds=2)
    tone(sound, seconds=2.0, frequency=500)
    muxed = tmp_path / "muxed.mkv"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(silent),
            "-i",
            str(sound),
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "copy",
            "-c:a",
            "pcm_s16le",
            str(muxed),
        ],
        check=True,
    )
    paired = {
        "messages": [
            {"role": "user", "content": "<video><audio>What is said?"},
            {"role": "assistant", "content": "A tone."},
        ],
        "videos": ["clip.mp4"],
        "audios": ["voice.wav"],
    }
    native = {
        "conversations": [
            {
                "role": "user",
                "content": [{"type": "video", "video": "muxed.mkv"}, {"type": "text", "text": "What is said?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]},
        ]
    }
    (tmp_path / "paired.json").write_text(json.dumps([paired]))
    (tmp_path / "native.json").write_text(json.dumps([native]))
    collator = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS, use_audio_in_video=True)
    got = collator([load_conversation_dataset(str(tmp_path / "paired.json"), use_audio_in_video=True)[0]])
    native_rows = load_conversation_dataset(str(tmp_path / "native.json"), use_audio_in_video=True)
    conversation = native_rows[0]["conversations"]
    reference = collator([{"conversations": conversation}])
    for key in (
        "input_ids",
        "labels",
        "input_features",
        "feature_attention_mask",
        "pixel_values_videos",
        "video_grid_thw",
        "video_second_per_grid",
    ):
        assert torch.equal(got[key], reference[key]), key
    assert torch.equal(rope_positions(thinker, got), rope_positions(thinker, reference))
    # The native row through Qwen's inference path, process_mm_info(use_audio_in_video=True): the same tensors
    media_conversation = [{"role": "user", "content": [{"type": "video", "video": str(muxed)}]}]
    audios, images, videos, video_kwargs = process_mm_info(
        media_conversation, use_audio_in_video=True, return_video_kwargs=True
    )
    expected = processor(
        text=[collator.render(conversation)],
        audio=audios,
        images=images,
        videos=videos,
        use_audio_in_video=True,
        audio_from_video_indices=[0],
        return_tensors="pt",
        videos_kwargs={**VIDEO_KWARGS["videos_kwargs"], "fps": video_kwargs["fps"][0], "do_sample_frames": False},
    )
    for key in ("input_ids", "input_features", "pixel_values_videos", "video_grid_thw"):
        assert torch.equal(got[key], expected[key]), key
    # 2 s at 4 fps sampled at 2 fps: 4 frames, 2 temporal grids of 1 s, the sound between them by time
    assert got["video_grid_thw"][0, 0] == 2 and torch.allclose(got["video_second_per_grid"], torch.tensor([1.0]))


def test_use_audio_in_video_refusals_name_the_row(workdir, tmp_path):
    media = workdir["llamafactory"] / "mllm_demo_data"
    rows = [
        # LLaMA-Factory's video demo: silent videos, no paired audio
        json.loads((workdir["llamafactory"] / "mllm_video_demo.json").read_text())[0],
        # sharegpt (from/value): an <audio> before its <video> breaks LLaMA-Factory's pairing
        {
            "conversations": [{"from": "human", "value": "<audio><video>Hm?"}, {"from": "gpt", "value": "x"}],
            "videos": ["mllm_demo_data/4.mp4"],
            "audios": ["mllm_demo_data/4.mp3"],
        },
        {
            "conversations": [{"from": "human", "value": "<video><audio>Hm?"}, {"from": "gpt", "value": "x"}],
            "videos": ["mllm_demo_data/4.mp4"],
            "audios": ["mllm_demo_data/4.mp3"],
        },
    ]
    for index, row in enumerate(rows[1:], start=1):
        path = workdir["llamafactory"] / f"refusals{index}.json"
        path.write_text(json.dumps([row]))
    report = DatasetReport(name="silent")
    (workdir["llamafactory"] / "silent.json").write_text(json.dumps(rows[:1]))
    with pytest.raises(ValueError, match="No trainable row left"):
        load_conversation_dataset(str(workdir["llamafactory"] / "silent.json"), use_audio_in_video=True, report=report)
    assert report.first_messages["video_without_audio"] == (
        f"row 0: the video {str(media / '1.mp4')!r} has no sound track, which --use_audio_in_video needs; give a "
        "video with its sound, or pair an audio with it (<video><audio> and 'audios', LLaMA-Factory's convention)."
    )
    report = DatasetReport(name="pairing")
    with pytest.raises(ValueError, match="No trainable row left"):
        load_conversation_dataset(
            str(workdir["llamafactory"] / "refusals1.json"), use_audio_in_video=True, report=report
        )
    assert report.refused == {"video_audio_pairing": [0]}
    assert (
        "row 0: with --use_audio_in_video, LLaMA-Factory's convention pairs each <video> with the next <audio>"
        in (report.first_messages["video_audio_pairing"])
    )
    paired = load_conversation_dataset(str(workdir["llamafactory"] / "refusals2.json"), use_audio_in_video=True)
    assert len(paired) == 1


def test_ms_swift_documented_rows_and_frame_lists(workdir, processor, thinker):
    path = workdir["swift"] / "custom_dataset_sft.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    report = DatasetReport(name="ms-swift")
    dataset = load_conversation_dataset(str(path), report=report)
    assert report.dataset_format == "tagged" and report.num_refused == 0 and len(dataset) == 4
    collator = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS)
    for row, example in zip(rows, dataset):
        seen = encoder_calls(thinker, collator([example]))
        assert seen["audio_clips"] == len(row.get("audios", []))
        assert seen["vision_items"] == len(row.get("images", [])) + len(row.get("videos", []))

    # ms-swift's documented frame lists, as given in its docs
    videos = json.loads(
        '{"videos": [["/xxx/x.png", "/xxx/y.png"], ["/xxx/a.png", "/xxx/b.png", "/xxx/c.png"]]}'.replace(
            "/xxx/", f"{workdir['swift']}/"
        )
    )["videos"]
    frames_row = {
        "messages": [
            {"role": "user", "content": "<video><video>What changes?"},
            {"role": "assistant", "content": "The color."},
        ],
        "videos": videos,
    }
    frames_path = workdir["swift"] / "frames.jsonl"
    frames_path.write_text(json.dumps(frames_row))
    example = load_conversation_dataset(str(frames_path))[0]
    assert [part["video"] for part in example["conversations"][0]["content"][:2]] == videos
    for fps in (2.0, 4.0):
        batch = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS, video_fps=fps)([example])
        # 2 frames, and 3 padded to 4 as qwen-omni-utils pads them: 1 and 2 temporal grids, `--video_fps` apart
        assert batch["video_grid_thw"][:, 0].tolist() == [1, 2]
        assert torch.allclose(batch["video_second_per_grid"], torch.tensor([2 / fps, 2 / fps]))
        assert encoder_calls(thinker, batch)["vision_items"] == 2
    # With use_audio_in_video: ms-swift takes the sound of the video file; frame lists have none and are refused
    report = DatasetReport(name="ms-swift audio in video")
    kept = load_conversation_dataset(str(path), use_audio_in_video=True, report=report)
    assert report.num_refused == 0 and len(kept) == 4
    batch = Qwen3OmniSFTCollator(processor, processor_kwargs=VIDEO_KWARGS, use_audio_in_video=True)([kept[3]])
    assert encoder_calls(thinker, batch) == {"audio_clips": 1, "vision_items": 2, "audio_calls": 1, "vision_calls": 2}
    report = DatasetReport(name="frames audio in video")
    with pytest.raises(ValueError, match="No trainable row left"):
        load_conversation_dataset(str(frames_path), use_audio_in_video=True, report=report)
    assert "a video given as 2 frame images has no sound track" in report.first_messages["video_without_audio"]
