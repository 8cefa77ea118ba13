"""Voice fine-tuning through train/sft.py's contract: LoRA on shipped clips lowers their audio loss, only the adapter
changes, and bad data is refused before training."""

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch

from qwen_omni import OmniForCausalLM, OmniProcessor
from qwen_omni.common.clips import check_sampling_rates, read_clips
from qwen_omni.omni.voice_sft import VoiceSFTArguments, build_voice_dataset, main

from omni_testing import REPO_ROOT, build_tiny_omni


VOICE_CLIPS = REPO_ROOT / "data" / "voice_clips"


def copy_clips(folder, count, edit=None):
    rows = [json.loads(line) for line in (VOICE_CLIPS / "metadata.jsonl").read_text().splitlines()][:count]
    (folder / "audio").mkdir(parents=True)
    for row in rows:
        shutil.copy(VOICE_CLIPS / row["audio"], folder / row["audio"])
    rows = edit(rows) if edit else rows
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def audio_loss(model, processor, clips):
    dataset = build_voice_dataset(clips, processor)
    batch = processor.pad(dataset["input_ids"], with_labels=True)
    batch["labels"] = processor.pad(dataset["labels"], with_labels=True)["input_ids"].masked_fill(
        batch["attention_mask"] == 0, -100
    )
    with torch.no_grad():
        output = model(**batch)
    assert torch.isnan(output.text_loss)  # the prompt carries no loss
    return float(output.audio_loss)


def test_voice_lora_lowers_audio_loss_and_only_trains_the_adapter(tmp_path, snac_24khz_dir):
    from trl import ModelConfig, ScriptArguments, SFTConfig

    base_dir = tmp_path / "base"
    build_tiny_omni(snac_24khz_dir, base_dir)
    clips_dir = copy_clips(tmp_path / "clips", 4)
    out = tmp_path / "out"
    trainer = main(
        ScriptArguments(dataset_name=str(clips_dir)),
        SFTConfig(
            output_dir=str(out),
            max_steps=8,
            learning_rate=5e-3,
            per_device_train_batch_size=4,
            logging_steps=4,
            report_to="none",
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            seed=0,
        ),
        ModelConfig(model_name_or_path=str(base_dir), use_peft=True, lora_r=8, lora_alpha=16),
    )
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= {name.split(".")[-4] for name in trainable}
    assert any("audio_loss" in entry for entry in trainer.state.log_history)
    assert (out / "adapter_model.safetensors").is_file() and (out / "trainer_state.json").is_file()

    processor = OmniProcessor.from_pretrained(base_dir)
    clips = read_clips(clips_dir)
    base = OmniForCausalLM.from_pretrained(base_dir)
    merged = OmniForCausalLM.from_pretrained(out / "merged")
    assert audio_loss(merged, processor, clips) < audio_loss(base, processor, clips) - 0.05
    # only LoRA targets moved: embeddings, norms and head are bit-identical
    base_state, merged_state = base.state_dict(), merged.state_dict()
    for name, tensor in base_state.items():
        targeted = any(
            f".{module}." in name
            for module in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        )
        assert torch.equal(tensor, merged_state[name]) != targeted, name
    assert (out / "merged" / "modeling_omni.py").is_file()


def test_clips_without_transcripts_are_refused(tmp_path):
    def drop_text(rows):
        rows[1]["text"] = "  "
        del rows[2]["text"]
        return rows

    folder = copy_clips(tmp_path / "clips", 3, drop_text)
    with pytest.raises(ValueError, match=r"2 of 3 clips .* have no transcript .*nova_001"):
        read_clips(folder)


def test_clips_without_audio_files_are_refused(tmp_path):
    folder = copy_clips(tmp_path / "clips", 3)
    (folder / "audio" / "nova_002.flac").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 rows .* no existing audio file .*nova_002\.flac.*'audio'"):
        read_clips(folder)


def test_missing_speaker_needs_a_name(tmp_path):
    def drop_speaker(rows):
        return [{k: v for k, v in row.items() if k != "speaker"} for row in rows]

    folder = copy_clips(tmp_path / "clips", 2, drop_speaker)
    with pytest.raises(ValueError, match="no speaker name"):
        read_clips(folder)
    assert {clip.speaker for clip in read_clips(folder, speaker="nova")} == {"nova"}


def test_one_speaker_at_several_sampling_rates_is_refused(tmp_path):
    folder = copy_clips(tmp_path / "clips", 3)
    waveform, rate = soundfile.read(folder / "audio" / "nova_001.flac")
    soundfile.write(folder / "audio" / "nova_001.flac", waveform[::2].astype(np.float32), rate // 2)
    clips = read_clips(folder)
    with pytest.raises(ValueError, match=r"'nova': 2 clips at 24000 Hz .*, 1 clips at 12000 Hz .*nova_001.*sox"):
        check_sampling_rates(clips)
    assert check_sampling_rates(clips, allow_mixed=True) == {"nova": 24000}
    assert VoiceSFTArguments(allow_mixed_sampling_rates=True).allow_mixed_sampling_rates


def test_clips_from_a_datasets_folder_match_the_metadata_folder(tmp_path, omni_dir):
    """A `save_to_disk` folder (Audio column, other column names, no speaker) goes through prepare_data's reader and
    gives the very same training sequences as the metadata folder it was made from."""
    import datasets

    folder = copy_clips(tmp_path / "clips", 3)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    table = datasets.Dataset.from_dict(
        {"clip": [str(folder / r["audio"]) for r in rows], "sentence": [r["text"] for r in rows]}
    )
    table.cast_column("clip", datasets.Audio()).save_to_disk(str(tmp_path / "hf"))
    shutil.rmtree(folder / "audio")  # the datasets folder holds the audio bytes itself
    with pytest.raises(ValueError, match="no speaker name"):
        read_clips(tmp_path / "hf", audio_column="clip", text_column="sentence", speaker_column=None)
    clips = read_clips(tmp_path / "hf", speaker="nova", audio_column="clip", text_column="sentence")
    assert [clip.text for clip in clips] == [r["text"] for r in rows] and isinstance(clips[0].audio, dict)
    assert check_sampling_rates(clips) == {"nova": 24000}

    copy_clips(tmp_path / "again", 3)
    processor = OmniProcessor.from_pretrained(omni_dir)
    expected = build_voice_dataset(read_clips(tmp_path / "again"), processor)
    assert build_voice_dataset(clips, processor)["input_ids"] == expected["input_ids"]
