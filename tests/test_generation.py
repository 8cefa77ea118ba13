"""Generation internals of the Omni model: the incremental span state, the fast audio head under every standard
`generate` argument, the length check against the model's positions, the state-streaming SNAC decoder and long
text. Tiny models built here; no network."""

import numpy as np
import pytest
import torch
from transformers.generation import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.testing_utils import CaptureLogger

from qwen_omni import generation_omni
from qwen_omni.generation_omni import OmniConstrainedLogitsProcessor, OmniSpanState, audio_block_scores
from qwen_omni.modeling_snac import OmniAudioStreamer, SNACStreamingDecoder
from qwen_omni.omni import speech
from qwen_omni.omni.speech import generate_speech

from omni_testing import tiny_processor


@pytest.fixture(scope="module")
def omni(omni_dir):
    from qwen_omni import OmniForCausalLM, OmniProcessor

    return OmniForCausalLM.from_pretrained(omni_dir).eval(), OmniProcessor.from_pretrained(omni_dir)


def _random_audio_ids(layout, frames, seed=0):
    codes = torch.randint(
        0, layout.codebook_size, (frames * layout.tokens_per_frame,), generator=torch.Generator().manual_seed(seed)
    )
    return [layout.block_start(i % layout.tokens_per_frame) + int(c) for i, c in enumerate(codes)]


def test_span_state_advanced_per_token_equals_a_rebuild(omni):
    model, processor = omni
    config = model.config
    audio = _random_audio_ids(config.token_layout, 2)
    # rows in every state: TTS prompt then speech then audio-end; ASR prompt then a transcript; a voice prompt
    rows = [
        processor.tts_prompt_ids("hello there.") + audio + [config.audio_end_token_id, config.eos_token_id],
        processor.asr_prompt_ids(audio[:7])
        + processor.tokenizer("the fox.")["input_ids"]
        + [config.text_end_token_id],
        processor.tts_prompt_ids("hi.")
        + audio[:9]
        + [config.audio_end_token_id, config.audio_start_token_id]
        + audio[:3],
    ]
    length = min(len(row) for row in rows)
    ids = torch.tensor([row[:length] for row in rows])
    start = 6
    state = OmniSpanState(config, ids[:, :start])
    for step in range(start, length):
        state.advance(ids[:, step])
        rebuilt = OmniSpanState(config, ids[:, : step + 1])
        for name in ("in_audio", "audio_length", "in_text", "frame_position", "at_frame_boundary"):
            assert torch.equal(getattr(state, name), getattr(rebuilt, name)), (name, step)
        assert state.length == step + 1


def test_fast_head_applies_additive_processors_exactly(omni):
    """min_new_tokens, no_repeat_ngram_size and suppress_tokens on the block give the full head's distribution."""
    model, processor = omni
    config = model.config
    layout = config.token_layout
    prompt = processor.tts_prompt_ids("hello there.")
    audio = _random_audio_ids(layout, 3)
    audio[7:10] = audio[0:3]  # a repeated trigram start: no_repeat_ngram_size=3 bans a code of the block
    input_ids = processor.pad([prompt + audio[:7], prompt + audio[:9]], padding_side="left")["input_ids"]
    hidden = torch.randn(2, config.hidden_size, generator=torch.Generator().manual_seed(0))
    suppressed = [layout.block_start(0) + 5, layout.block_start(2) + 7, config.audio_end_token_id]
    processors = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(1.3),
            NoRepeatNGramLogitsProcessor(2),
            MinNewTokensLengthLogitsProcessor(
                input_ids.shape[1] - 2, 5, [config.audio_end_token_id, config.eos_token_id]
            ),
            SuppressTokensLogitsProcessor(suppressed),
            OmniConstrainedLogitsProcessor(config),
            TemperatureLogitsWarper(0.7),
            TopKLogitsWarper(50),
            TopPLogitsWarper(0.95),
        ]
    )
    full = processors(input_ids, model.lm_head(hidden).float()).softmax(-1)
    block, candidates = audio_block_scores(model, hidden, input_ids, OmniSpanState(config, input_ids), processors)
    expected = torch.zeros_like(full).scatter_add_(1, candidates, block.softmax(-1))
    torch.testing.assert_close(expected, full, atol=1e-6, rtol=1e-5)
    assert full[:, suppressed].sum() == 0 and (full > 0).sum(-1).min() > 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_new_tokens": 21},
        {"repetition_penalty": 1.3},
        {"no_repeat_ngram_size": 2},
        {"suppress_tokens": "block"},
        {"min_new_tokens": 21, "repetition_penalty": 1.1, "no_repeat_ngram_size": 3, "suppress_tokens": "block"},
    ],
    ids=["min_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "suppress_tokens", "all"],
)
def test_fast_head_serves_standard_generate_arguments(omni, kwargs):
    """Greedy tokens equal the constrained full-head path, and the full head is computed only for the prompt."""
    model, processor = omni
    config = model.config
    if kwargs.get("suppress_tokens") == "block":
        kwargs = {
            **kwargs,
            "suppress_tokens": list(range(config.token_layout.block_start(0), config.token_layout.block_start(0) + 8)),
        }
    inputs = processor(text="hello there.", return_tensors="pt")
    head_calls = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: head_calls.append(args[0].shape))
    try:
        fast = model.generate(**inputs, do_sample=False, max_new_tokens=28, **kwargs)
        fast_head_calls, head_calls[:] = len(head_calls), []
        full = model.generate(**inputs, do_sample=False, max_new_tokens=28, fast_audio_head=False, **kwargs)
    finally:
        hook.remove()
    assert torch.equal(fast, full)
    assert fast_head_calls == 1 and len(head_calls) == full.shape[1] - inputs["input_ids"].shape[1]
    generated = fast[0, inputs["input_ids"].shape[1] :]
    if "min_new_tokens" in kwargs:
        assert generated.shape[0] >= kwargs["min_new_tokens"]
    if "suppress_tokens" in kwargs:
        assert not torch.isin(generated, torch.tensor(kwargs["suppress_tokens"])).any()


def test_fast_head_compiles_the_decoding_step_as_transformers_does(omni):
    """With a static cache and a `compile_config` that allows this device, the fast head decodes through the
    compiled base model (transformers' rule), prefill eager: the same greedy tokens as the eager loop, one graph
    for every decoding step; without them nothing is compiled."""
    from transformers import CompileConfig

    model, processor = omni
    inputs = processor(text="hello there.", return_tensors="pt")
    graphs, calls = [], []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)

        def run(*args):
            calls.append(1)
            return graph_module.forward(*args)

        return run

    compile_config = CompileConfig(backend=counting_backend, mode=None)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only, unless told
    eager = model.generate(**inputs, do_sample=False, max_new_tokens=21, cache_implementation="static")
    assert not graphs
    compiled = model.generate(
        **inputs, do_sample=False, max_new_tokens=21, cache_implementation="static", compile_config=compile_config
    )
    assert torch.equal(compiled, eager)
    assert len(graphs) == 1 and len(calls) == compiled.shape[1] - inputs["input_ids"].shape[1] - 1


def test_other_decoding_modes_keep_the_constraint(omni):
    """Requests the fast head cannot serve (per-step scores, beam search) run transformers' loops with the
    constraint rebuilding the span state from the ids: same greedy tokens, valid audio."""
    model, processor = omni
    layout = model.config.token_layout
    inputs = processor(text="hello there.", return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    fast = model.generate(**inputs, do_sample=False, max_new_tokens=14)
    with_scores = model.generate(
        **inputs, do_sample=False, max_new_tokens=14, return_dict_in_generate=True, output_scores=True
    )
    assert torch.equal(with_scores.sequences, fast)
    assert len(with_scores.scores) == fast.shape[1] - prompt_length
    assert with_scores.scores[0].shape[-1] == model.config.vocab_size
    beams = model.generate(**inputs, do_sample=False, num_beams=2, max_new_tokens=14)
    for position, token in enumerate(beams[0, prompt_length:].tolist()):
        if token == model.config.audio_end_token_id:
            assert position % layout.tokens_per_frame == 0 and position > 0
            break
        assert layout.block_start(position % 7) <= token < layout.block_start(position % 7) + layout.codebook_size


def test_sampling_with_min_new_tokens_keeps_structure_and_length(omni):
    model, processor = omni
    config = model.config
    inputs = processor(text=["hello there.", "the quick brown fox."], return_tensors="pt")
    torch.manual_seed(0)
    sequences = model.generate(
        **inputs,
        do_sample=True,
        temperature=1.5,
        min_new_tokens=35,
        max_new_tokens=42,
        repetition_penalty=1.1,
        top_k=50,
    )
    generated = sequences[:, inputs["input_ids"].shape[1] :]
    layout = config.token_layout
    assert generated.shape[1] >= 35
    for row in generated[:, :35].tolist():
        assert all(
            layout.block_start(i % 7) <= t < layout.block_start(i % 7) + layout.codebook_size
            for i, t in enumerate(row)
        )


def test_length_beyond_the_model_positions_is_refused_or_lowered(omni):
    model, processor = omni
    inputs = processor(text="hello there.", return_tensors="pt")
    positions = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"exceeds the model's {positions} positions.*max_new_tokens <= "):
        model.generate(**inputs, max_new_tokens=positions)
    # a checkpoint default that does not fit is lowered, with a warning that says so
    default = model.generation_config.max_new_tokens
    model.generation_config.max_new_tokens = positions + 10
    try:
        with CaptureLogger(generation_omni.logger) as captured:
            model.generate(**inputs, do_sample=False, max_duration=0.1)
    finally:
        model.generation_config.max_new_tokens = default
    assert f"generating at most {positions - inputs['input_ids'].shape[1]} new tokens" in captured.out


# ---------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("codec", ["snac_24khz_dir", "snac_32khz_dir"])
@pytest.mark.parametrize("chunk_frames", [1, 3])
def test_streaming_decoder_decodes_each_frame_once_and_equals_the_full_decode(codec, chunk_frames, request):
    processor = tiny_processor(request.getfixturevalue(codec))
    layout = processor.token_layout
    frames = 11
    ids = torch.tensor(_random_audio_ids(layout, frames))
    decoded_frames = []
    quantizer = processor.audio_tokenizer.quantizer
    original = quantizer.from_codes
    quantizer.from_codes = lambda codes: (
        decoded_frames.append(codes[0].shape[-1] // layout.codes_per_frame[0]) or original(codes)
    )
    try:
        chunks = []
        streamer = OmniAudioStreamer(processor, chunk_frames=chunk_frames, on_chunk=chunks.append)
        streamer.put(torch.tensor([[1, 2, 3]]))
        first_chunk_after = None
        for index, token in enumerate(ids):
            streamer.put(token.view(1))
            if chunks and first_chunk_after is None:
                first_chunk_after = index // layout.tokens_per_frame + 1
        streamer.end()
    finally:
        del quantizer.from_codes
    full = processor.ids_to_audio(ids)
    streamed = np.concatenate(chunks)
    assert streamed.shape == full.shape
    assert np.abs(streamed - full).max() <= 1e-5 * np.abs(full).max()
    # each frame through the codec once (plus the full decode's padding to whole attention windows)
    assert (
        sum(decoded_frames)
        == -(-frames // processor.audio_tokenizer.config.frames_per_window)
        * processor.audio_tokenizer.config.frames_per_window
    )
    assert first_chunk_after <= streamer.right_context + chunk_frames
    if codec == "snac_24khz_dir":  # the real 24 kHz codec's decoder (only widths differ): audio after 3 frames
        assert streamer.right_context == 3


def test_windowed_streaming_trades_right_context_for_error(snac_24khz_dir):
    processor = tiny_processor(snac_24khz_dir)
    ids = torch.tensor(_random_audio_ids(processor.token_layout, 12))
    full = processor.ids_to_audio(ids)
    errors = {}
    for right_context in (0, 4):
        chunks = []
        streamer = OmniAudioStreamer(
            processor, right_context_frames=right_context, chunk_frames=2, on_chunk=chunks.append
        )
        streamer.put(torch.tensor([[1]]))
        streamer.put(ids)
        streamer.end()
        streamed = np.concatenate(chunks)
        assert streamed.shape == full.shape
        errors[right_context] = np.sqrt(np.mean((streamed - full) ** 2) / np.mean(full**2))
    assert errors[4] < 1e-5 < errors[0]


@pytest.mark.parametrize("codec", ["snac_24khz_dir", "snac_32khz_dir"])
def test_streams_at_different_points_decode_together_as_alone(codec, request, monkeypatch):
    """`push_rows` with streams that started at different calls, push different pieces and end at different calls:
    streams whose layers hold the same lengths run as one batch, the others apart, and every stream gets what it
    gets alone."""
    from qwen_omni import modeling_snac

    processor = tiny_processor(request.getfixturevalue(codec))
    layout = processor.token_layout
    per_frame = layout.tokens_per_frame
    # (first call, frames per call, frames) of each stream
    plans = [(0, 1, 9), (0, 1, 7), (2, 1, 6), (1, 2, 8)]
    streams = [
        torch.tensor(_random_audio_ids(layout, frames, seed=index)) for index, (_, _, frames) in enumerate(plans)
    ]
    alone = []
    for ids, (_, step, frames) in zip(streams, plans):
        decoder = SNACStreamingDecoder(processor)
        pieces = [
            decoder.push(ids[first * per_frame : (first + step) * per_frame], final=first + step >= frames)
            for first in range(0, frames, step)
        ]
        alone.append(np.concatenate(pieces))
    batches = []  # rows of each batch the decoder ran (its whole layer stack)
    run = modeling_snac._run
    decoders = [SNACStreamingDecoder(processor) for _ in plans]
    monkeypatch.setattr(
        modeling_snac,
        "_run",
        lambda layers, states, x, final: (
            (layers is decoders[0].layers and batches.append(x.shape[0])) or run(layers, states, x, final)
        ),
    )
    together = [[] for _ in plans]
    calls = row_calls = 0
    for call in range(12):
        rows = [
            (index, (call - start) * step)
            for index, (start, step, frames) in enumerate(plans)
            if call >= start and (call - start) * step < frames
        ]
        if not rows:
            continue
        calls, row_calls = calls + 1, row_calls + len(rows)
        out = SNACStreamingDecoder.push_rows(
            [decoders[index] for index, _ in rows],
            [streams[index][first * per_frame : (first + plans[index][1]) * per_frame] for index, first in rows],
            [first + plans[index][1] >= plans[index][2] for index, first in rows],
        )
        for (index, _), samples in zip(rows, out):
            together[index].append(samples)
    for index, expected in enumerate(alone):
        got = np.concatenate(together[index])
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    # streams in the same state ran as one batch, the others apart
    assert sum(batches) == row_calls and calls < len(batches) < row_calls, batches
    if codec == "snac_24khz_dir":  # (with attention, a stream that started later holds another part of a window)
        assert max(batches) >= 3, batches  # the stream that started two calls later joined the first two


def test_streaming_decoder_reports_its_lookahead(snac_24khz_dir):
    processor = tiny_processor(snac_24khz_dir)
    decoder = SNACStreamingDecoder(processor)
    ids = torch.tensor(_random_audio_ids(processor.token_layout, 8))
    tokens_per_frame = processor.token_layout.tokens_per_frame
    out = [decoder.push(ids[i * tokens_per_frame : (i + 1) * tokens_per_frame]).size for i in range(8)]
    # output for frame 0 is final once `lookahead_frames` more frames have come, not before
    first = next(i for i, size in enumerate(out) if size)
    assert first <= decoder.lookahead_frames and sum(out) < 8 * processor.audio_tokenizer.config.samples_per_frame


# ---------------------------------------------------------------------------------------------- long text
def test_generate_speech_batches_and_streams_the_same_pieces(omni):
    model, processor = omni
    config = model.config
    text = "Hello there. How are you today? Fine, thanks."
    kwargs = dict(max_chars=20, do_sample=False, max_duration=0.2, suppress_tokens=[config.audio_end_token_id])
    with CaptureLogger(speech.logger) as captured, CaptureLogger(generation_omni.logger) as generation_log:
        batched = generate_speech(model, processor, text, batch_size=1, **kwargs)
    chunks = []
    with CaptureLogger(speech.logger) as streaming_log:
        streamed = generate_speech(model, processor, text, on_chunk=chunks.append, **kwargs)
    assert "produced no audio" not in captured.out + streaming_log.out
    pieces = speech.split_sentences(text, max_chars=20)
    assert len(pieces) == 3
    frames = int(0.2 * config.codec_sampling_rate // config.samples_per_frame)
    overlap = int(round(processor.sampling_rate * 30 / 1000))
    expected = len(pieces) * frames * config.samples_per_frame - (len(pieces) - 1) * overlap
    assert batched.shape == streamed.shape == (expected,)
    np.testing.assert_allclose(streamed, batched, atol=1e-5 * np.abs(batched).max())
    np.testing.assert_array_equal(np.concatenate(chunks), streamed)
    assert "max_duration=0.2s" in generation_log.out
    both = generate_speech(model, processor, [text, "Bye."], batch_size=4, **kwargs)
    assert len(both) == 2 and both[0].shape == batched.shape and both[1].shape == (frames * config.samples_per_frame,)
    with pytest.raises(ValueError, match="one text at a time"):
        generate_speech(model, processor, [text, "Bye."], on_chunk=chunks.append, **kwargs)


def test_generate_speech_encodes_a_voice_prompt_once_for_every_piece(omni, monkeypatch):
    model, processor = omni
    text = "Hello there. How are you today? Fine, thanks."
    clip = np.random.default_rng(0).standard_normal(12000).astype(np.float32) * 0.1
    kwargs = dict(
        max_chars=20,
        do_sample=False,
        max_duration=0.2,
        voice_prompt_text="a voice",
        suppress_tokens=[model.config.audio_end_token_id],
    )
    encoded = processor.encode_voice_prompt(clip, 24000)
    calls = []
    audio_to_ids = processor.audio_to_ids
    monkeypatch.setattr(processor, "audio_to_ids", lambda *a, **k: calls.append(1) or audio_to_ids(*a, **k))
    from_audio = generate_speech(
        model, processor, text, voice_prompt_audio=clip, voice_prompt_sampling_rate=24000, **kwargs
    )
    assert len(calls) == 1  # three pieces, one encoding of the voice prompt
    np.testing.assert_array_equal(
        generate_speech(model, processor, text, voice_prompt_ids=encoded, **kwargs), from_audio
    )
    assert len(calls) == 1
    # the prompt holds the voice prompt's ids, as the processor builds it from the clip
    assert (
        processor(text="Hi.", voice_prompt_ids=encoded, voice_prompt_text="a voice")["input_ids"].tolist()
        == processor(
            text="Hi.", voice_prompt_audio=clip, voice_prompt_sampling_rate=24000, voice_prompt_text="a voice"
        )["input_ids"].tolist()
    )
    with pytest.raises(ValueError, match="voice_prompt_audio or voice_prompt_ids"):
        processor(
            text="Hi.",
            voice_prompt_audio=clip,
            voice_prompt_sampling_rate=24000,
            voice_prompt_ids=encoded,
            voice_prompt_text="a voice",
        )
