"""Text to speech and speech to text with the Omni model: learned round trips, valid-by-construction generation, the
fast audio head, streaming, the pipeline, the CLI and bad input. Tiny models built here; no network."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from transformers.generation import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.testing_utils import CaptureLogger

from qwen_omni import generation_omni
from qwen_omni.generation_omni import OmniConstrainedLogitsProcessor, OmniSpanState, audio_block_scores
from qwen_omni.modeling_snac import OmniAudioStreamer
from qwen_omni.omni.build import build_omni_from_scratch
from qwen_omni.omni.speech import crossfade_join, split_sentences

from omni_testing import CORPUS_TEXT, run_without_qwen_omni, tiny_bpe_tokenizer, tiny_processor


def _random_omni(codec_dir, seed=0):
    model, processor = build_omni_from_scratch(
        tiny_bpe_tokenizer(),
        codec_dir,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        seed=seed,
    )
    return model.eval(), processor


def _check_structure(sequences, prompt_length, config):
    """Every generated audio span: ids in their position's block, audio-end only at frame boundaries."""
    layout = config.token_layout
    audio_tokens = 0
    for row in sequences[:, prompt_length:]:
        ids = row.tolist()
        count = 0
        for token in ids:
            if token == config.audio_end_token_id:
                assert count > 0 and count % layout.tokens_per_frame == 0, f"audio-end after {count} audio tokens"
                break
            if token == config.pad_token_id:
                break
            position = count % layout.tokens_per_frame
            assert layout.block_start(position) <= token < layout.block_start(position) + layout.codebook_size, (
                f"id {token} at frame position {position}"
            )
            count += 1
        audio_tokens += count
        whole = count - count % layout.tokens_per_frame
        layout.ids_to_codes(torch.tensor(ids[:whole]))  # raises on any invalid id
    return audio_tokens


# ---------------------------------------------------------------------------------------------- learned round trip
@pytest.fixture(scope="module")
def trained(snac_24khz_dir):
    """A tiny Omni model trained here on four (text, audio) pairs, both directions."""
    model, processor = _random_omni(snac_24khz_dir, seed=1)
    rate = processor.sampling_rate
    # noise of different seeds: the tiny random codec maps them to clearly different codes
    clips = [(0.5 * np.random.default_rng(k).standard_normal(rate // 4)).astype(np.float32) for k in range(4)]
    texts = CORPUS_TEXT[:4]
    audio_ids = processor.audio_to_ids(clips, sampling_rate=rate)
    assert len({tuple(ids.tolist()) for ids in audio_ids}) == 4, "the four clips must have different tokens"
    tts = processor(text=texts, audio=clips, sampling_rate=rate, task="tts")
    asr = processor(text=texts, audio=clips, sampling_rate=rate, task="asr")
    batch = processor.pad(
        [s[m.bool()].tolist() for s, m in zip(tts["input_ids"], tts["attention_mask"])]
        + [s[m.bool()].tolist() for s, m in zip(asr["input_ids"], asr["attention_mask"])],
        with_labels=True,
    )
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, processor, texts, clips, audio_ids, loss.item()


def test_trained_model_speaks_the_learned_audio_tokens(trained):
    model, processor, texts, _, audio_ids, loss = trained
    assert loss < 0.05
    inputs = processor(text=texts, return_tensors="pt")  # one left-padded batch
    sequences = model.generate(**inputs, do_sample=False, max_new_tokens=40)
    generated = sequences[:, inputs["input_ids"].shape[1] :]
    for row, expected in zip(generated, audio_ids):
        n = expected.numel()
        assert row[:n].tolist() == expected.tolist()
        assert int(row[n]) == model.config.audio_end_token_id
    waveforms = processor.batch_decode(sequences)
    for waveform, expected in zip(waveforms, audio_ids):
        np.testing.assert_array_equal(waveform, processor.ids_to_audio(expected))
    # the fast audio head gives exactly the tokens of the constrained full-head path
    full_head = model.generate(**inputs, do_sample=False, max_new_tokens=40, fast_audio_head=False)
    assert torch.equal(sequences, full_head)


def test_trained_model_transcribes_the_learned_text(trained):
    model, processor, texts, clips, _, _ = trained
    inputs = processor.apply_transcription_request(clips, sampling_rate=processor.sampling_rate)
    sequences = model.generate(**inputs, do_sample=False, max_new_tokens=30)
    assert processor.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True) == texts
    # the whole sequence decodes to its transcript too
    assert processor.batch_decode(sequences, skip_special_tokens=True) == texts


# ---------------------------------------------------------------------------------------------- valid by construction
@pytest.mark.parametrize("codec", ["snac_24khz_dir", "snac_32khz_dir"])
@pytest.mark.parametrize("fast_audio_head", [True, False])
def test_random_weights_sampling_gives_only_valid_audio_tokens(codec, fast_audio_head, request):
    model, processor = _random_omni(request.getfixturevalue(codec))
    inputs = processor(text=["hello there.", "the quick brown fox jumps."], return_tensors="pt")
    torch.manual_seed(0)
    sequences = model.generate(
        **inputs,
        do_sample=True,
        temperature=1.5,
        top_p=1.0,
        max_new_tokens=8 * model.config.token_layout.tokens_per_frame,
        fast_audio_head=fast_audio_head,
    )
    assert _check_structure(sequences, inputs["input_ids"].shape[1], model.config) > 0
    # unconstrained, the same random model does emit invalid ids: the constraint is what makes them valid
    torch.manual_seed(0)
    free = model.generate(**inputs, do_sample=True, temperature=1.5, top_p=1.0, max_new_tokens=30, constrained=False)
    with pytest.raises(AssertionError):
        _check_structure(free, inputs["input_ids"].shape[1], model.config)


def test_constrained_processor_masks_each_row_by_its_state(omni_dir):
    from qwen_omni import OmniForCausalLM, OmniProcessor

    config = OmniForCausalLM.config_class.from_pretrained(omni_dir)
    processor = OmniProcessor.from_pretrained(omni_dir)
    layout = config.token_layout
    audio = [layout.block_start(p % layout.tokens_per_frame) + 3 for p in range(9)]
    rows = [
        processor.tts_prompt_ids("hello there."),  # audio just opened: block 0, no audio-end
        processor.tts_prompt_ids("hello there.") + audio[:7],  # one whole frame: block 0 or audio-end
        processor.tts_prompt_ids("hello there.") + audio[:9],  # mid-frame: block 2
        processor.asr_prompt_ids(audio[:7]),  # transcript: text only
    ]
    batch = processor.pad(rows, padding_side="left")["input_ids"]
    mask = OmniConstrainedLogitsProcessor(config).allowed_mask(batch, config.vocab_size)
    vocab = torch.arange(config.vocab_size)
    block = lambda p: (vocab >= layout.block_start(p)) & (vocab < layout.block_start(p) + layout.codebook_size)  # noqa: E731
    end = vocab == config.audio_end_token_id
    assert torch.equal(mask[0], block(0))
    assert torch.equal(mask[1], block(0) | end)
    assert torch.equal(mask[2], block(2))
    assert not mask[3, layout.audio_token_offset :].any() and mask[3, config.text_end_token_id]
    assert not mask[3, [config.audio_start_token_id, config.audio_end_token_id, config.tts_token_id]].any()
    assert mask[3, : layout.audio_token_offset].sum() > 100


def test_fast_audio_head_scores_the_same_distribution(omni_dir):
    """Sampling through the block head draws from exactly the distribution of the full-head constrained path."""
    from qwen_omni import OmniForCausalLM, OmniProcessor

    model = OmniForCausalLM.from_pretrained(omni_dir).eval()
    processor = OmniProcessor.from_pretrained(omni_dir)
    layout = model.config.token_layout
    prompt = processor.tts_prompt_ids("hello there.")
    torch.manual_seed(0)
    codes = torch.randint(0, layout.codebook_size, (3 * layout.tokens_per_frame,))
    audio = [layout.block_start(i % layout.tokens_per_frame) + int(c) for i, c in enumerate(codes)]
    # one row at a frame boundary (audio-end allowed), one mid-frame
    input_ids = processor.pad([prompt + audio[:7], prompt + audio[:16]], padding_side="left")["input_ids"]
    hidden = torch.randn(2, model.config.hidden_size)
    processors = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(1.3),
            OmniConstrainedLogitsProcessor(model.config),
            TemperatureLogitsWarper(0.7),
            TopKLogitsWarper(20),
            TopPLogitsWarper(0.9),
        ]
    )
    full = processors(input_ids, model.lm_head(hidden).float()).softmax(-1)
    block, candidates = audio_block_scores(
        model, hidden, input_ids, OmniSpanState(model.config, input_ids), processors
    )
    block = block.softmax(-1)
    expected = torch.zeros_like(full).scatter_add_(1, candidates, block)
    torch.testing.assert_close(expected, full, atol=1e-6, rtol=1e-5)
    assert (full > 0).sum(-1).min() > 1


# ---------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("codec", ["snac_24khz_dir", "snac_32khz_dir"])
def test_streamed_audio_matches_the_full_decode(codec, request):
    processor = tiny_processor(request.getfixturevalue(codec))
    layout = processor.token_layout
    torch.manual_seed(0)
    frames = 13
    codes = torch.randint(0, layout.codebook_size, (frames * layout.tokens_per_frame,))
    codes[: layout.tokens_per_frame] = 0  # code 0 is a valid code, first and last frame included
    codes[-layout.tokens_per_frame :] = 0
    ids = torch.tensor([layout.block_start(i % layout.tokens_per_frame) + int(c) for i, c in enumerate(codes)])
    chunks = []
    streamer = OmniAudioStreamer(processor, on_chunk=chunks.append)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt
    first_chunk_after = None
    for index, token in enumerate(ids):
        streamer.put(token.view(1))
        if chunks and first_chunk_after is None:
            first_chunk_after = index + 1
    streamer.put(torch.tensor([7]))  # a non-audio id (audio-end) closes the span
    streamer.end()
    assert list(streamer) == chunks  # the iterator yields the same chunks
    streamed = np.concatenate(chunks)
    full = processor.ids_to_audio(ids)
    assert streamed.shape == full.shape == (frames * processor.audio_tokenizer.config.samples_per_frame,)
    assert np.abs(streamed - full).max() <= 1e-5 * np.abs(full).max()
    # the first chunk comes a few frames after the audio starts
    assert first_chunk_after <= (1 + streamer.right_context) * layout.tokens_per_frame


def test_streamer_with_generate_equals_batch_decode(omni_dir):
    from qwen_omni import OmniForCausalLM, OmniProcessor

    model = OmniForCausalLM.from_pretrained(omni_dir).eval()
    processor = OmniProcessor.from_pretrained(omni_dir)
    inputs = processor(text="hello there, how are you today?", return_tensors="pt")
    streamer = OmniAudioStreamer(processor)
    torch.manual_seed(0)
    sequences = model.generate(**inputs, streamer=streamer, max_duration=0.6, do_sample=True)
    streamed = np.concatenate(list(streamer))
    full = processor.batch_decode(sequences)[0]
    assert streamed.shape == full.shape and full.size > 0
    assert np.abs(streamed - full).max() <= 1e-3 * np.abs(full).max()


# ---------------------------------------------------------------------------------------------- long text, limits
def test_split_sentences_and_crossfade():
    text = "Hello there. How are you today? " + "word " * 60 + "end."
    pieces = split_sentences(text, max_chars=60)
    assert all(len(p) <= 60 for p in pieces) and " ".join(pieces).split() == text.split()
    assert split_sentences("One. Two.", max_chars=200) == ["One. Two."]
    a, b = np.ones(1000, np.float32), -np.ones(800, np.float32)
    joined = crossfade_join([a, b], sampling_rate=10000, crossfade_ms=10)  # 100-sample overlap
    assert joined.shape == (1700,)
    assert joined[0] == 1 and joined[-1] == -1 and np.all(np.diff(joined[900:1000]) < 0)


def test_duration_limit_returns_audio_so_far_and_says_so(omni_dir):
    from qwen_omni import OmniForCausalLM, OmniProcessor

    model = OmniForCausalLM.from_pretrained(omni_dir).eval()
    processor = OmniProcessor.from_pretrained(omni_dir)
    inputs = processor(text=["hello there.", "the quick brown fox."], return_tensors="pt")
    with CaptureLogger(generation_omni.logger) as captured:
        sequences = model.generate(
            **inputs, max_duration=0.3, do_sample=False, suppress_tokens=[model.config.audio_end_token_id]
        )
    frames = int(0.3 * model.config.codec_sampling_rate // model.config.samples_per_frame)
    assert "max_duration=0.3s" in captured.out and "cut" in captured.out
    generated = sequences[:, inputs["input_ids"].shape[1] :]
    assert generated.shape[1] == frames * model.config.token_layout.tokens_per_frame
    assert [w.shape[0] for w in processor.batch_decode(sequences)] == [
        frames * processor.audio_tokenizer.config.samples_per_frame
    ] * 2


# ---------------------------------------------------------------------------------------------- pipeline and CLI
def test_pipeline_text_to_speech_as_remote_code(omni_dir):
    result = run_without_qwen_omni(
        "from transformers import pipeline\n"
        f"pipe = pipeline('text-to-speech', model={str(omni_dir)!r}, trust_remote_code=True)\n"
        "out = pipe('Hello there.', generate_kwargs={'max_duration': 0.4})\n"
        "audio = out['audio']\n"
        "print('RESULT', type(audio).__name__, audio.dtype, audio.ndim, audio.shape[0] % 2048, audio.shape[0] > 0, out['sampling_rate'])\n",
        cwd=omni_dir.parent,
    )
    assert "RESULT ndarray float32 1 0 True 24000" in result.stdout, result.stderr[-3000:]


def test_cli_speak_and_transcribe(omni_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = shutil.which("qwen-omni") or os.path.join(os.path.dirname(sys.executable), "qwen-omni")
    out = tmp_path / "out.wav"
    speak = subprocess.run(
        [
            script,
            "speak",
            "--model",
            str(omni_dir),
            "--text",
            "Hello there. How are you?",
            "--out",
            str(out),
            "--max-duration",
            "0.3",
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert speak.returncode == 0, speak.stderr[-3000:]
    assert "s of audio written" in speak.stderr and f"to {out}" in speak.stderr
    info = soundfile.info(out)
    assert info.samplerate == 24000 and info.frames > 0

    rate = 16000
    soundfile.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 4) / rate), rate)
    soundfile.write(tmp_path / "b.flac", 0.3 * np.sin(2 * np.pi * 220 * np.arange(rate // 3) / rate), rate)
    transcribe = subprocess.run(
        [
            script,
            "transcribe",
            "--model",
            str(omni_dir),
            str(tmp_path / "a.wav"),
            str(tmp_path / "b.flac"),
            "--max-new-tokens",
            "5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert transcribe.returncode == 0, transcribe.stderr[-3000:]
    lines = transcribe.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors(omni_dir, tmp_path):
    from qwen_omni import OmniProcessor

    processor = OmniProcessor.from_pretrained(omni_dir)
    with pytest.raises(ValueError, match="is empty"):
        processor(text="  ")
    with pytest.raises(ValueError, match="special-token string"):
        processor(text="<|tts|><|audio_end|><|text_start|>")
    with pytest.raises(ValueError, match="sampling_rate"):
        processor.apply_transcription_request(np.zeros(4000, np.float32))
    with pytest.raises(ValueError, match="got shape"):
        processor.apply_transcription_request(np.zeros((1, 1, 1, 4000), np.float32), sampling_rate=24000)
    with pytest.raises(ValueError, match="voice_prompt_text"):
        processor(text="hello", voice_prompt_audio=np.zeros(4000, np.float32), voice_prompt_sampling_rate=24000)
    with pytest.raises(ValueError, match="max_duration"):
        from qwen_omni import OmniForCausalLM

        OmniForCausalLM.from_pretrained(omni_dir).generate(**processor(text="hello there."), max_duration=0)

    no_codec = tmp_path / "no_codec"
    shutil.copytree(omni_dir, no_codec)
    shutil.rmtree(no_codec / "audio_tokenizer")
    with pytest.raises(OSError, match="no codec weights"):
        OmniProcessor.from_pretrained(no_codec)
