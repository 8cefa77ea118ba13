"""The Omni foundation: token layout, feature extractor and audio tokenizer through the processor, model loss,
processor formats, init_model, remote code."""

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_omni import OmniConfig, OmniForCausalLM, OmniProcessor, SNACTokenLayout
from qwen_omni.omni.trainer import OmniTrainer
from qwen_omni.processing_omni import load_audio_tokenizer

from omni_testing import REPO_ROOT, run_without_qwen_omni, tiny_processor


# ---------------------------------------------------------------- token layout
def random_codes(layout: SNACTokenLayout, batch: int, frames: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    codes = [
        torch.randint(0, layout.codebook_size, (batch, frames * per_frame), generator=generator)
        for per_frame in layout.codes_per_frame
    ]
    codes[0][:, 0] = 0
    codes[-1][:, -1] = layout.codebook_size - 1
    return codes


@pytest.mark.parametrize("vq_strides,tokens_per_frame", [([4, 2, 1], 7), ([8, 4, 2, 1], 15)])
def test_codes_ids_codes_round_trip_is_exact(vq_strides, tokens_per_frame):
    layout = SNACTokenLayout(vq_strides, codebook_size=4096, audio_token_offset=1000)
    assert layout.tokens_per_frame == tokens_per_frame
    codes = random_codes(layout, batch=3, frames=5)
    ids = layout.codes_to_ids(codes)
    assert ids.shape == (3, 5 * tokens_per_frame)
    assert layout.is_audio(ids).all()
    back = layout.ids_to_codes(ids)
    for original, restored in zip(codes, back):
        assert torch.equal(original, restored)
    # each position owns its block
    positions = layout.frame_position(ids).view(3, 5, tokens_per_frame)
    assert torch.equal(positions, torch.arange(tokens_per_frame).expand(3, 5, -1))
    # unbatched input works the same way
    assert torch.equal(layout.codes_to_ids([c[0] for c in codes]), ids[0])


def test_24khz_layout_is_the_orpheus_layout():
    layout = SNACTokenLayout([4, 2, 1], codebook_size=4096, audio_token_offset=128266)
    codes = random_codes(layout, batch=1, frames=6, seed=3)
    c0, c1, c2 = (c[0].tolist() for c in codes)
    orpheus = []
    for i in range(6):  # Orpheus' redistribute_codes inverse, written out as Orpheus' users do
        orpheus += [
            c0[i] + 128266,
            c1[2 * i] + 128266 + 4096,
            c2[4 * i] + 128266 + 2 * 4096,
            c2[4 * i + 1] + 128266 + 3 * 4096,
            c1[2 * i + 1] + 128266 + 4 * 4096,
            c2[4 * i + 2] + 128266 + 5 * 4096,
            c2[4 * i + 3] + 128266 + 6 * 4096,
        ]
    assert layout.codes_to_ids(codes)[0].tolist() == orpheus


def test_layout_rejects_bad_codes_and_ids():
    layout = SNACTokenLayout([4, 2, 1], codebook_size=16, audio_token_offset=10)
    with pytest.raises(ValueError, match="outside"):
        layout.codes_to_ids([torch.tensor([[16]]), torch.zeros(1, 2), torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="whole number of frames"):
        layout.ids_to_codes(torch.arange(10, 18))
    ids = layout.codes_to_ids(random_codes(layout, 1, 2))
    ids[0, 3] = ids[0, 4]  # an id of position 4 at position 3
    with pytest.raises(ValueError, match="position 3"):
        layout.ids_to_codes(ids)
    with pytest.raises(ValueError, match="code tree"):
        SNACTokenLayout([4, 3, 1], 16, 0)


def test_config_validates_vocabulary_and_round_trips(tmp_path):
    with pytest.raises(Exception, match="cannot hold the audio tokens"):
        OmniConfig(vocab_size=100, audio_token_offset=90, codebook_size=32)
    config = OmniConfig(
        vocab_size=640,
        audio_token_offset=100,
        codebook_size=32,
        vq_strides=[8, 4, 2, 1],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        audio_loss_weight=0.5,
    )
    config.save_pretrained(tmp_path)
    loaded = OmniConfig.from_pretrained(tmp_path)
    assert loaded.token_layout == config.token_layout
    assert loaded.token_layout.tokens_per_frame == 15
    assert loaded.audio_loss_weight == 0.5


# ---------------------------------------------------------------- feature extractor and audio tokenizer
@pytest.fixture(scope="module")
def fe24(snac_24khz_dir):
    """A processor around the 24 kHz codec: its feature extractor, audio tokenizer and token layout."""
    return tiny_processor(snac_24khz_dir)


def num_frames(processor, num_samples: int) -> int:
    return max(1, math.ceil(num_samples / processor.audio_tokenizer.config.samples_per_frame))


def speech_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (
        0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
    ).astype(np.float32)


def test_feature_extractor_loads_snac_layout_and_encodes(fe24, snac_24khz_dir):
    import snac

    assert fe24.sampling_rate == 24000 and fe24.audio_tokenizer.config.samples_per_frame == 2048
    audio = speech_like(1.0, 24000)
    codes = fe24.encode_audio(audio, sampling_rate=24000)
    frames = num_frames(fe24, audio.size)
    assert frames == 12
    ids = fe24.audio_to_ids(audio, sampling_rate=24000)[0]
    assert ids.numel() == frames * 7
    # the same codes as calling snac directly on the zero-padded clip
    codec = snac.SNAC.from_pretrained(str(snac_24khz_dir))
    padded = torch.zeros(1, 1, frames * 2048)
    padded[0, 0, : audio.size] = torch.from_numpy(audio)
    with torch.inference_mode():
        direct = codec.encode(padded)
    for mine, theirs in zip(codes[0], direct):
        assert torch.equal(mine, theirs[0])
    # ids -> codes -> ids through the layout is exact
    assert torch.equal(fe24.token_layout.codes_to_ids(fe24.token_layout.ids_to_codes(ids)), ids)
    waveform = fe24.ids_to_audio(ids)
    assert waveform.dtype == np.float32 and waveform.shape == (frames * 2048,)
    assert np.array_equal(waveform, fe24.ids_to_audio(ids)), "decoding must be deterministic"
    # the feature extractor alone is the waveform front end: mono float32, padded, no codec
    inputs = fe24.feature_extractor([audio, audio[:1000]], sampling_rate=24000)
    assert inputs["input_values"].shape == (2, 1, audio.size) and inputs["padding_mask"].sum(-1).tolist() == [
        audio.size,
        1000,
    ]


def test_feature_extractor_resamples_downmixes_and_batches(fe24):
    mono = speech_like(0.5, 16000, seed=1)
    stereo_channels_last = np.stack([mono, mono], axis=1)
    base = fe24.audio_to_ids(mono, sampling_rate=16000)[0]
    assert fe24.audio_to_ids([stereo_channels_last], sampling_rate=16000)[0].equal(base)
    assert fe24.audio_to_ids([torch.from_numpy(stereo_channels_last.T)], sampling_rate=16000)[0].equal(base)
    # a batch of equal-length clips gives each clip's own codes
    other = speech_like(0.5, 16000, seed=2)
    batch = fe24.audio_to_ids(np.stack([mono, other]), sampling_rate=16000)
    assert [ids.numel() for ids in batch] == [base.numel()] * 2
    assert batch[0].equal(base)
    assert batch[1].equal(fe24.audio_to_ids(other, sampling_rate=16000)[0])


def test_feature_extractor_save_and_reload(fe24, tmp_path):
    fe24.save_pretrained(tmp_path)
    assert (tmp_path / "audio_tokenizer" / "model.safetensors").exists()
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert "codec_config" not in saved["feature_extractor"] and "audio_tokenizer" not in saved
    reloaded = OmniProcessor.from_pretrained(tmp_path)
    audio = speech_like(0.7, 24000, seed=4)
    assert reloaded.token_layout == fe24.token_layout
    assert reloaded.audio_to_ids(audio, sampling_rate=24000)[0].equal(fe24.audio_to_ids(audio, sampling_rate=24000)[0])
    assert np.array_equal(
        reloaded.ids_to_audio(fe24.audio_to_ids(audio, sampling_rate=24000)[0]),
        fe24.ids_to_audio(fe24.audio_to_ids(audio, sampling_rate=24000)[0]),
    )


def test_four_codebook_codec_round_trip(snac_32khz_dir):
    fe = tiny_processor(snac_32khz_dir)
    assert fe.token_layout.tokens_per_frame == 15
    audio = speech_like(0.9, 32000)
    original_codes = fe.encode_audio(audio, sampling_rate=32000)[0]
    ids = fe.audio_to_ids(audio, sampling_rate=32000)[0]
    assert ids.numel() == num_frames(fe, audio.size) * 15
    codes = fe.token_layout.ids_to_codes(ids)
    for original, restored in zip(original_codes, codes):
        assert torch.equal(original, restored)
    # frames not filling a whole attention window still decode to exactly frames * samples_per_frame
    assert fe.ids_to_audio(ids).shape == (num_frames(fe, audio.size) * fe.audio_tokenizer.config.samples_per_frame,)


def test_streaming_window_decode_matches_full_decode(fe24):
    """Decoder noise is locked to absolute position: a window decoded with its offset equals the full decode there."""
    ids = fe24.audio_to_ids(speech_like(1.0, 24000), sampling_rate=24000)[0]
    codes = fe24.token_layout.ids_to_codes(ids)
    with torch.inference_mode():
        full = fe24.audio_tokenizer.decode(codes).audio_values
    # frames 5..7 with 3 frames of context on each side: the decoder's receptive field fits inside
    start, stop, context, spf = 5, 7, 3, fe24.audio_tokenizer.config.samples_per_frame
    with torch.inference_mode():
        window = fe24.audio_tokenizer.decode(
            [
                c[(start - context) * n : (stop + context) * n]
                for c, n in zip(codes, fe24.token_layout.codes_per_frame)
            ],
            frame_offset=start - context,
        ).audio_values
    inner = window[context * spf : (context + stop - start) * spf]
    torch.testing.assert_close(inner, full[start * spf : stop * spf], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "audio,kwargs,message",
    [
        (np.zeros(100, np.float32), {}, "sampling_rate` must be a positive number"),
        (np.zeros(100, np.float32), {"sampling_rate": 0}, "positive number, got 0"),
        (np.zeros(0, np.float32), {"sampling_rate": 24000}, "empty"),
        (np.array([0.0, np.nan], np.float32), {"sampling_rate": 24000}, "NaN"),
        (np.zeros((2, 2, 2, 2), np.float32), {"sampling_rate": 24000}, "got shape"),
        (np.zeros((48000, 2), np.float32), {"sampling_rate": 24000}, r"pass `\[audio\]`"),
        ([np.zeros((20, 30), np.float32)], {"sampling_rate": 24000}, "neither mono"),
    ],
)
def test_feature_extractor_bad_audio(fe24, audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fe24.feature_extractor(audio, **kwargs)
    with pytest.raises(ValueError, match=message):
        fe24.audio_to_ids(audio, **kwargs)


def test_feature_extractor_rejects_too_long_audio(snac_24khz_dir):
    fe = tiny_processor(snac_24khz_dir, max_duration_seconds=1.0)
    with pytest.raises(ValueError, match=r"lasts 2.0 s, longer than max_duration_seconds=1.0"):
        fe.audio_to_ids(np.zeros(48000, np.float32), sampling_rate=24000)


def test_decode_drops_and_counts_invalid_frames(fe24, caplog):
    ids = fe24.audio_to_ids(speech_like(0.5, 24000), sampling_rate=24000)[0]  # 6 frames
    corrupted = ids.clone()
    corrupted[7 + 2] = 5  # a text id inside frame 1
    sequence = torch.cat([corrupted, ids[:3]])  # and a partial frame at the end
    with caplog.at_level(logging.WARNING):
        kept = fe24.valid_frames(sequence)
    assert "dropped 1 frames" in caplog.text and "3 trailing tokens" in caplog.text
    assert torch.equal(kept, torch.cat([ids[:7], ids[14:]]))
    assert fe24.ids_to_audio(sequence).shape == (5 * fe24.audio_tokenizer.config.samples_per_frame,)
    with pytest.raises(ValueError, match="not a whole number of frames"):
        fe24.ids_to_audio(sequence, strict=True)


def test_missing_codec_weights_is_a_clear_error(fe24, tmp_path):
    fe24.save_pretrained(tmp_path / "current")
    shutil.rmtree(tmp_path / "current" / "audio_tokenizer")
    with pytest.raises(OSError, match="no codec weights .*: no audio_tokenizer/ folder"):
        OmniProcessor.from_pretrained(tmp_path / "current")
    # a first-release checkpoint (codec settings in the feature extractor) without its weights file
    first_release = Path(__file__).parent / "fixtures" / "omni_checkpoint_v0"
    shutil.copytree(first_release, tmp_path / "v0", ignore=shutil.ignore_patterns("snac_codec.safetensors"))
    with pytest.raises(OSError, match="no codec weights"):
        OmniProcessor.from_pretrained(tmp_path / "v0")
    with pytest.raises(OSError, match="no such folder"):
        load_audio_tokenizer(tmp_path / "nowhere")


# ---------------------------------------------------------------- model loss
def tiny_model(audio_loss_weight=2.0, text_loss_weight=0.5) -> OmniForCausalLM:
    config = OmniConfig(
        vocab_size=100 + 7 * 8,
        audio_token_offset=100,
        codebook_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        audio_end_token_id=7,
        text_loss_weight=text_loss_weight,
        audio_loss_weight=audio_loss_weight,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return OmniForCausalLM(config).eval()


def test_weighted_loss_equals_hand_computation():
    model = tiny_model()
    input_ids = torch.tensor([[5, 6, 100, 108, 7, 9, 0, 0], [11, 12, 13, 101, 110, 120, 7, 3]])
    attention_mask = (torch.arange(8) < torch.tensor([[6], [8]])).long()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[1, 1] = -100  # an ignored target
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    log_probs = torch.log_softmax(out.logits.float(), dim=-1)
    total, weight_sum, text, audio = 0.0, 0.0, [], []
    for b in range(2):
        for t in range(7):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            nll = -float(log_probs[b, t, target])
            is_audio = target >= 100 or target == 7
            weight = 2.0 if is_audio else 0.5
            total += weight * nll
            weight_sum += weight
            (audio if is_audio else text).append(nll)
    assert out.loss.item() == pytest.approx(total / weight_sum, rel=1e-5)
    assert out.text_loss.item() == pytest.approx(np.mean(text), rel=1e-5)
    assert out.audio_loss.item() == pytest.approx(np.mean(audio), rel=1e-5)
    assert float(model.loss_weights(labels).sum()) == pytest.approx(weight_sum)


def test_weighted_loss_is_exact_under_gradient_accumulation(tmp_path):
    """Two accumulated micro-batches of different sizes give the gradient of the whole batch."""
    from torch.utils.data import Dataset
    from transformers import TrainingArguments

    model = tiny_model()
    rows = [torch.tensor([5, 100, 108, 7, 9]), torch.tensor([11, 12, 101, 110, 120, 7, 3, 4, 5])]

    class Rows(Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {"input_ids": rows[i], "labels": rows[i]}

    def full_batch_gradient():
        model.zero_grad()
        padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)
        labels = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=-100)
        model(input_ids=padded, labels=labels).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    expected = full_batch_gradient()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=0.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        lr_scheduler_type="constant",
        max_grad_norm=None,
    )
    trainer = OmniTrainer(
        model=model,
        args=args,
        train_dataset=Rows(),
        data_collator=lambda batch: {k: torch.stack([b[k] for b in batch]) for k in batch[0]},
    )
    model.zero_grad()
    batches, num_items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, torch.device("cpu"))
    assert float(num_items) == pytest.approx(float(sum(model.loss_weights(b["labels"]).sum() for b in batches)))
    model.train()
    for batch in batches:
        trainer.compute_loss(model, batch, num_items_in_batch=num_items).backward()
    model.eval()
    for got, want in zip([p.grad for p in model.parameters()], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_qwen3_state_dict_loads_unchanged(qwen3_lm_dir):
    from transformers import AutoModelForCausalLM

    qwen3 = AutoModelForCausalLM.from_pretrained(qwen3_lm_dir)
    fields = {k: v for k, v in qwen3.config.to_dict().items() if k in OmniConfig.__dataclass_fields__}
    # a one-id "audio block" at the end of Qwen3's vocabulary keeps every shape equal
    config = OmniConfig(**fields, audio_token_offset=qwen3.config.vocab_size - 1, codebook_size=1, vq_strides=[1])
    omni = OmniForCausalLM(config).eval()
    omni.load_state_dict(qwen3.state_dict(), strict=True)
    ids = torch.tensor([[3, 9, 27, 81]])
    with torch.no_grad():
        torch.testing.assert_close(omni(ids).logits, qwen3.eval()(ids).logits)


# ---------------------------------------------------------------- processor formats
def test_processor_formats_and_bad_text(omni_dir):
    processor = OmniProcessor.from_pretrained(omni_dir)
    tok = processor.tokenizer
    prompt = processor(text="hello there", speaker="tara")
    ids = prompt["input_ids"][0].tolist()
    assert ids[:2] == [processor.tts_token_id, processor.text_start_token_id]
    assert ids[-2:] == [processor.text_end_token_id, processor.audio_start_token_id]
    assert tok.decode(ids[2:-2]) == "tara: hello there"
    batch = processor(text=["hi", "a longer sentence to speak"])
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding for generate

    audio = speech_like(0.4, 24000)
    train = processor(text=["hello there"], audio=[audio], sampling_rate=24000, task="asr")
    seq = train["input_ids"][0].tolist()
    n_audio = num_frames(processor, audio.size) * 7
    assert seq[:2] == [processor.asr_token_id, processor.audio_start_token_id]
    assert seq[2 + n_audio : 4 + n_audio] == [processor.audio_end_token_id, processor.text_start_token_id]
    assert seq[-1] == processor.text_end_token_id and train["labels"][0].tolist() == seq
    assert processor.decode_text(seq, skip_special_tokens=True) == "hello there"
    assert (
        processor.decode(seq, skip_special_tokens=True) == "hello there"
    )  # a speech-to-text output is its transcript
    waveform = processor.decode_audio(seq)
    assert (
        isinstance(waveform, np.ndarray)
        and waveform.size == n_audio // 7 * processor.audio_tokenizer.config.samples_per_frame
    )

    with pytest.raises(ValueError, match="special-token string"):
        processor(text="<|audio_start|><|audio_end|>")
    # the special tokens are read once per tokenizer size (reading them took 25-200 ms a prompt): one added later is
    # refused too
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["[BEEP]"]})
    with pytest.raises(ValueError, match=r"special-token string\(s\) \['\[BEEP\]'\]"):
        processor(text="say [BEEP] now")
    with pytest.raises(ValueError, match="empty"):
        processor(text="   ")
    with pytest.raises(ValueError, match="2 texts for 1 audio"):
        processor(text=["a", "b"], audio=[audio], sampling_rate=24000)
    # an option the processor does not have is refused by name, not dropped
    with pytest.raises(TypeError, match="unexpected keyword argument 'padding'"):
        processor(text="hi", padding="max_length")


def test_processor_save_audio(omni_dir, tmp_path):
    import soundfile

    processor = OmniProcessor.from_pretrained(omni_dir)
    processor.save_audio(np.full(2400, 0.25, np.float32), tmp_path / "out.wav")
    data, rate = soundfile.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 24000 and data.shape == (2400,) and np.allclose(data, 0.25, atol=1e-4)


# ---------------------------------------------------------------- init_model and remote code
def test_init_model_from_qwen3_loads_with_remote_code_and_keeps_text_logits(qwen3_lm_dir, snac_24khz_dir, tmp_path):
    out_dir = tmp_path / "omni"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train" / "init_model.py"),
            "--text-model",
            str(qwen3_lm_dir),
            "--codec",
            str(snac_24khz_dir),
            "--output-dir",
            str(out_dir),
            "--audio-loss-weight",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out_dir / "config.json").read_text())
    assert (
        config["model_type"] == "omni"
        and config["auto_map"]["AutoModelForCausalLM"] == "modeling_omni.OmniForCausalLM"
    )
    for code_file in ("configuration_omni.py", "modeling_omni.py", "processing_omni.py", "feature_extraction_omni.py"):
        assert (out_dir / code_file).exists(), code_file

    text_ids = [[5, 17, 42, 99, 7, 150, 3]]
    from transformers import AutoModelForCausalLM

    qwen3 = AutoModelForCausalLM.from_pretrained(qwen3_lm_dir).eval()
    with torch.no_grad():
        reference = qwen3(torch.tensor(text_ids)).logits[0]
    np.save(tmp_path / "reference.npy", reference.numpy())
    code = f"""
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained({str(out_dir)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(out_dir)!r}, trust_remote_code=True)
assert type(model).__name__ == "OmniForCausalLM" and "transformers_modules" in type(model).__module__
assert type(processor.feature_extractor).__name__ == "SNACFeatureExtractor"
assert type(processor.audio_tokenizer).__name__ == "SNACAudioTokenizer" and "transformers_modules" in type(processor.audio_tokenizer).__module__
with torch.no_grad():
    logits = model(torch.tensor({text_ids})).logits[0]
reference = np.load({str(tmp_path / "reference.npy")!r})
text_vocab = reference.shape[-1]
np.testing.assert_allclose(logits[:, :text_vocab].numpy(), reference, rtol=1e-5, atol=1e-5)
assert model.config.audio_token_offset == len(processor.tokenizer) >= text_vocab
assert model.config.audio_loss_weight == 1.5
audio = processor(audio=np.random.default_rng(0).standard_normal(12000).astype("float32") * 0.1, sampling_rate=24000)
assert audio["input_ids"].shape[1] == 4 + 6 * 7
print("REMOTE_OK", logits.shape[-1])
"""
    result = run_without_qwen_omni(code, cwd=tmp_path)
    assert "REMOTE_OK" in result.stdout, result.stderr[-4000:]

    qwen3_rows = qwen3.get_input_embeddings().weight
    omni = OmniForCausalLM.from_pretrained(out_dir)
    assert torch.equal(omni.get_input_embeddings().weight[: qwen3_rows.shape[0]], qwen3_rows)
    new_rows = omni.get_input_embeddings().weight[qwen3_rows.shape[0] :]
    assert torch.isfinite(new_rows).all() and new_rows.std() < 10 * qwen3_rows.std()


def test_init_model_from_scratch_cli(bpe_tokenizer_dir, snac_32khz_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train" / "init_model.py"),
            "--from-scratch",
            "--tokenizer",
            str(bpe_tokenizer_dir),
            "--codec",
            str(snac_32khz_dir),
            "--output-dir",
            str(tmp_path),
            "--hidden-size",
            "32",
            "--num-layers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = OmniConfig.from_pretrained(tmp_path)
    assert config.vq_strides == [8, 4, 2, 1] and config.token_layout.tokens_per_frame == 15
    assert config.vocab_size % 64 == 0 and config.vocab_size >= config.token_layout.vocab_end


def test_init_model_rejects_non_qwen3(tmp_path, snac_24khz_dir):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    from qwen_omni.omni.build import build_omni_from_text_model

    with pytest.raises(ValueError, match="'gpt2' model; init_model builds Omni models from Qwen3-family"):
        build_omni_from_text_model(tmp_path, snac_24khz_dir)
