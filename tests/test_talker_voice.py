"""Talker voice fine-tuning of a tiny random Qwen3-Omni (Thinker, Talker, code predictor, code2wav) with a tiny random
Mimi: teacher forcing equals `generate`, the voice is learned, data, merge and bad input."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoProcessor, Qwen3OmniMoeForConditionalGeneration

from qwen_omni.qwen3_omni import tiny_checkpoints
from qwen_omni.qwen3_omni.talker_voice import (
    build_talker_sequence,
    conversation_ids,
    talker_voice_forward,
    thinker_outputs,
)


TEXTS = ["the quick brown fox", "a red square on white", "the lazy dog barks twice"]
FRAMES_PER_CLIP = 6


def give_trained_scales(model):
    """At the 0.02 init of a random tiny model, the Talker's text projection outputs ~1e-4 and its heads' logits stay
    within +-0.3 of each other (the hidden state is RMS-normalised), so neither the text nor any training shows in
    the codes. Give them the scales of a trained model: text comparable to the codec embeddings, heads whose logits
    can separate, and the 1024 special codec ids (which `generate` suppresses) small."""
    talker_config = model.config.talker_config
    with torch.no_grad():
        for projection in (model.talker.text_projection, model.talker.hidden_projection):
            for linear in (projection.linear_fc1, projection.linear_fc2):
                linear.weight.normal_(0.0, 1.0 / linear.in_features**0.5)
        model.thinker.get_input_embeddings().weight.normal_(0.0, 1.0)
        for head in [model.talker.codec_head, *model.talker.code_predictor.lm_head]:
            head.weight.normal_(0.0, 0.5)
        special = torch.ones(talker_config.text_config.vocab_size, dtype=torch.bool)
        special[: talker_config.code_predictor_config.vocab_size] = False
        special[talker_config.codec_eos_token_id] = False
        model.talker.codec_head.weight[special] *= 0.04


# Sentences the tiny base learns its three voices on: in none of TEXTS, OUTSIDE_TEXTS and PRESERVE_TEXTS.
VOICE_TEXTS = [
    "one two three",
    "open the door please",
    "it is cold outside today",
    "where is my blue pen",
    "the sun sets in the west",
    "a cat sleeps on the mat",
    "we went home early",
    "turn off the light",
    "music plays softly",
    "the river runs fast and deep",
    "bring me some water",
    "good night and sleep well",
]


def give_distinct_voices(model, processor, steps=150):
    """A random tiny Talker ignores its speaker id (Ethan's and Chelsie's first logits differ by ~1e-4 and their greedy
    codes are identical), so "the other voices are kept" would mean nothing on it. Train its Talker (in full, teacher
    forced) so that each existing speaker speaks a voice of its own, as the real Talker does: a speaker-specific cycle of
    three 16-codebook frames, one frame per token of the text, then codec_eos."""
    from qwen_omni.qwen3_omni.talker_voice.examples import (
        TalkerVoiceExample,
        cache_thinker_outputs,
        talker_voice_examples_forward,
    )

    talker_config = model.config.talker_config
    examples = []
    for index, codec_id in enumerate(sorted(talker_config.speaker_id.values())):
        generator = torch.Generator().manual_seed(1000 + index)
        cycle = torch.randint(0, talker_config.code_predictor_config.vocab_size, (3, 16), generator=generator)
        for text in VOICE_TEXTS:
            prompt_ids, answer_ids = conversation_ids(processor, text, None, "Read this aloud: {text}")
            examples.append(
                TalkerVoiceExample(
                    torch.tensor(prompt_ids),
                    torch.tensor(prompt_ids + answer_ids),
                    cycle[torch.arange(len(answer_ids)) % 3],
                    speaker_codec_id=codec_id,
                )
            )
    cache_thinker_outputs(model, examples)
    parameters = [parameter for name, parameter in model.named_parameters() if name.startswith("talker.")]
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        loss = talker_voice_examples_forward(model, examples, speaker_codec_id=-1).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return loss.item()


def write_clips(folder, texts=TEXTS, rate=16000, seed=0):
    """A metadata folder (metadata.jsonl + wav files) of noise clips of FRAMES_PER_CLIP Mimi frames at `rate`."""
    import numpy as np
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = FRAMES_PER_CLIP * rate // 300  # the tiny Mimi: 300 frames a second
    with open(os.path.join(folder, "metadata.jsonl"), "w") as handle:
        for index, text in enumerate(texts):
            waveform = (0.3 * rng.standard_normal(samples)).astype("float32")
            sf.write(os.path.join(folder, f"clip{index}.wav"), waveform, rate)
            handle.write(json.dumps({"audio": f"clip{index}.wav", "text": text}) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny Qwen3-Omni whose Talker has three distinct voices. Its Talker is 2 layers of 64 (the other tests' tiny
    Talker: 1 layer of 16): in 16 dimensions the three voices and a fourth learned from noise clips share every
    direction, and whether a new voice keeps the others was down to the run (0.02-1.0 per speaker; docs/qwen3_omni.md)."""
    root = tmp_path_factory.mktemp("talker_voice")
    config = tiny_checkpoints.build_config(
        tiny_checkpoints.build_tokenizer(), talker_hidden_size=64, talker_num_hidden_layers=2
    )
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base", config=config)
    model = load_model(base)
    give_trained_scales(model)
    assert give_distinct_voices(model, AutoProcessor.from_pretrained(base)) < 0.1
    model.save_pretrained(base)
    return {
        "root": root,
        "base": base,
        "mimi": tiny_checkpoints.save_tiny_mimi(root / "mimi"),
        "data": write_clips(root / "data"),
    }


@pytest.fixture(scope="module")
def processor(workdir):
    return AutoProcessor.from_pretrained(workdir["base"])


def load_model(path):
    return Qwen3OmniMoeForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()


class ForcedHead:
    """A forward hook that records a head's raw logits at the last position and forces the next token to the
    given ids in turn (greedy decoding then picks them), so `generate` walks along a fixed sequence."""

    def __init__(self, module, targets):
        self.targets, self.recorded = list(targets), []
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.recorded.append(output[:, -1].detach().clone())
        forced = torch.full_like(output[:, -1], -1e4)
        forced[:, self.targets[len(self.recorded) - 1]] = 1e4
        output = output.clone()
        output[:, -1] = forced
        return output


def forced_generate(model, processor, prompt_ids, answer_ids, codes, speaker):
    """`model.generate` with the Thinker forced to say `answer_ids` and the Talker and code predictor forced along
    `codes`; returns (talker logits per step, code predictor logits (T, G - 1, V), waveform)."""
    talker_config = model.config.talker_config
    num_frames, num_groups = codes.shape
    thinker = ForcedHead(model.thinker.lm_head, answer_ids)
    talker = ForcedHead(model.talker.codec_head, codes[:, 0].tolist() + [talker_config.codec_eos_token_id])
    predictor = [
        ForcedHead(model.talker.code_predictor.lm_head[j - 1], codes[:, j].tolist()) for j in range(1, num_groups)
    ]
    try:
        _, wav = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            speaker=speaker,
            thinker_max_new_tokens=len(answer_ids) + 4,
            thinker_eos_token_id=answer_ids[-1],
            talker_do_sample=False,
            talker_repetition_penalty=1.0,
            talker_max_new_tokens=num_frames + 4,
        )
    finally:
        for head in [thinker, talker, *predictor]:
            head.handle.remove()
    assert len(thinker.recorded) == len(answer_ids)
    predictor_logits = torch.stack([torch.cat(head.recorded) for head in predictor], dim=1)
    return torch.cat(talker.recorded), predictor_logits, wav


def teacher_forced(model, processor, text, codes, speaker_id, prompt=None):
    prompt_ids, answer_ids = conversation_ids(processor, text, prompt, "Read this aloud: {text}")
    sequence = torch.tensor([prompt_ids + answer_ids])
    embed, hidden = thinker_outputs(model, sequence)
    clip = build_talker_sequence(model, torch.tensor([prompt_ids]), sequence, embed, hidden, speaker_id, codes)
    return prompt_ids, answer_ids, clip


@pytest.mark.parametrize("num_frames", [3, 9])
def test_teacher_forcing_equals_generate(workdir, processor, num_frames):
    """The training forward's Talker logits at every codec step and the code predictor's logits for codebooks 1-15
    equal the ones `generate` computes when it is forced along the same codes (3 frames: fewer frames than text
    tokens; 9: the text runs out, then tts_eos and tts_pad steps)."""
    model = load_model(workdir["base"])
    torch.manual_seed(num_frames)
    codes = torch.randint(0, tiny_checkpoints.TINY_CODEBOOK_SIZE, (num_frames, tiny_checkpoints.TINY_NUM_CODEBOOKS))
    speaker_id = model.config.talker_config.speaker_id["ethan"]
    prompt_ids, answer_ids, clip = teacher_forced(model, processor, "the quick brown fox", codes, speaker_id)
    assert len(answer_ids) - 1 > 3  # transcript tokens: more than 3 frames, fewer than 9 steps of text
    with torch.no_grad():
        output = talker_voice_forward(model, [clip])
    training_logits = output.talker_logits[0, clip.labels != -100]

    talker_logits, predictor_logits, wav = forced_generate(model, processor, prompt_ids, answer_ids, codes, "Ethan")
    vocab_size = model.config.talker_config.text_config.vocab_size
    assert talker_logits.shape == training_logits.shape == (num_frames + 1, vocab_size)
    torch.testing.assert_close(training_logits, talker_logits, atol=1e-4, rtol=0)
    expected_shape = (num_frames, 15, tiny_checkpoints.TINY_CODEBOOK_SIZE)
    assert predictor_logits.shape == output.code_predictor_logits.shape == expected_shape
    torch.testing.assert_close(output.code_predictor_logits, predictor_logits, atol=1e-4, rtol=0)
    # the waveform generate returns is code2wav of exactly these codes
    expected_wav = model.code2wav.chunked_decode(codes.T[None], chunk_size=300, left_context_size=25)
    torch.testing.assert_close(wav, expected_wav.float())


def test_teacher_forcing_detects_drift(workdir, processor):
    """The comparison above is sharp: dropping the trailing text (one thing generate adds per step) breaks it."""
    model = load_model(workdir["base"])
    torch.manual_seed(0)
    codes = torch.randint(0, tiny_checkpoints.TINY_CODEBOOK_SIZE, (4, tiny_checkpoints.TINY_NUM_CODEBOOKS))
    speaker_id = model.config.talker_config.speaker_id["ethan"]
    prompt_ids, answer_ids, clip = teacher_forced(model, processor, "the quick brown fox", codes, speaker_id)
    from qwen_omni.qwen3_omni.talker_voice import codec_frame_embeds

    prompt_length = len(clip.labels) - len(codes)
    with torch.no_grad():
        clip.inputs_embeds[prompt_length:] = codec_frame_embeds(model.talker, codes)
        output = talker_voice_forward(model, [clip])
    talker_logits, _, _ = forced_generate(model, processor, prompt_ids, answer_ids, codes, "Ethan")
    assert (output.talker_logits[0, clip.labels != -100][1:] - talker_logits[1:]).abs().max() > 1e-2
    # and the untouched prefix still matches
    torch.testing.assert_close(output.talker_logits[0, clip.labels != -100][0], talker_logits[0], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------- training
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
}


def run_script(name, *args, check=True):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train", name), *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def train_flags(workdir, output_dir, *extra):
    return [
        "--model_name_or_path",
        workdir["base"],
        "--dataset_name",
        workdir["data"],
        "--codec_name_or_path",
        workdir["mimi"],
        "--output_dir",
        output_dir,
        "--use_cpu",
        "--dtype",
        "float32",
        "--per_device_train_batch_size",
        3,
        "--lora_r",
        16,
        "--lora_alpha",
        32,
        "--learning_rate",
        1e-2,
        "--lr_scheduler_type",
        "constant",
        "--gradient_checkpointing",
        "false",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--seed",
        0,
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(workdir):
    """`train/talker_voice_sft.py --speaker_name nova --preserve_speakers none` (400 steps on the 3 clips: the voice
    alone, see trained_with_preservation), then `train/merge.py`."""
    output_dir = workdir["root"] / "nova"
    run_script(
        "talker_voice_sft.py",
        # the tiny code predictor has one layer: its MLP is adapted too, to memorise 15 codebooks exactly
        *train_flags(
            workdir,
            output_dir,
            "--speaker_name",
            "nova",
            "--init_speaker",
            "Ethan",
            "--max_steps",
            400,
            "--lora_target_code_predictor_mlp",
            "true",
            "--preserve_speakers",
            "none",
            "--logging_steps",
            50,
            "--report_to",
            "tensorboard",
        ),
    )
    merged = workdir["root"] / "nova_merged"
    run_script("merge.py", "--adapter", output_dir, "--output_dir", merged)
    return {"adapter": output_dir, "merged": str(merged)}


def generate_codes(model, processor, text, speaker, **generate_kwargs):
    """Greedy `generate(speaker=...)` with the (tiny, random) Thinker forced to say `text`: the Talker's 16-codebook
    codes `(T, 16)` and the waveform."""
    prompt_ids, answer_ids = conversation_ids(processor, text, None, "Read this aloud: {text}")
    thinker = ForcedHead(model.thinker.lm_head, answer_ids)
    talker_results, talker_generate = [], model.talker.generate

    def recording_generate(*args, **kwargs):
        talker_results.append(talker_generate(*args, **kwargs))
        return talker_results[-1]

    model.talker.generate = recording_generate
    wav = None
    try:
        _, wav = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            speaker=speaker,
            thinker_max_new_tokens=len(answer_ids) + 4,
            thinker_eos_token_id=answer_ids[-1],
            talker_do_sample=False,
            talker_max_new_tokens=4 * FRAMES_PER_CLIP,
            **generate_kwargs,
        )
    except RuntimeError as error:
        # transformers 5.23's generate cannot stack zero frames when the Talker says codec_eos first: no speech
        if "non-empty TensorList" not in str(error) or not talker_results:
            raise
        return torch.empty((0, tiny_checkpoints.TINY_NUM_CODEBOOKS), dtype=torch.long), wav
    finally:
        del model.talker.generate
        thinker.handle.remove()
    # the codes generate hands to code2wav, gathered as it does
    hidden_states = talker_results[0].hidden_states
    codes = torch.stack([hid[-1] for hid in hidden_states if hid[-1] is not None], dim=1)[0]
    return codes, wav


def test_it_learns_the_voice(workdir, trained, processor):
    """After training, greedy generation with speaker="nova" on the merged checkpoint speaks a training clip's exact
    16-codebook Mimi codes from its transcript, and code2wav turns them into the matching waveform; the base Talker
    speaking as Ethan (whose row nova's started from) does not."""
    from qwen_omni.common.clips import read_clips
    from qwen_omni.qwen3_omni.talker_voice.data import MimiCodec, encode_clips

    merged = load_model(trained["merged"])
    assert merged.config.talker_config.speaker_id["nova"] not in {
        code for name, code in merged.config.talker_config.speaker_id.items() if name != "nova"
    }
    clips = read_clips(workdir["data"], speaker="nova", speaker_column=None)
    codec = MimiCodec.from_pretrained(workdir["mimi"], merged.config)
    encoded, summary = encode_clips(clips, codec, trained["adapter"] / "mimi_codes")
    assert summary.num_reused == len(TEXTS) and summary.num_encoded == 0  # the training run's cache
    reproduced = []
    for clip in encoded:
        codes, wav = generate_codes(merged, processor, clip.text, "nova")
        if torch.equal(codes, clip.codes):
            reproduced.append(clip.text)
            expected = merged.code2wav.chunked_decode(clip.codes.T[None], chunk_size=300, left_context_size=25)
            assert wav.shape == expected.shape
            assert wav.shape[-1] == FRAMES_PER_CLIP * merged.code2wav.total_upsample - 25
            torch.testing.assert_close(wav, expected.float())
    assert reproduced, "no training clip was reproduced exactly"
    base = load_model(workdir["base"])
    for clip in encoded:
        assert not torch.equal(generate_codes(base, processor, clip.text, "ethan")[0], clip.codes)


# Sentences in neither the voice data (TEXTS), the base's voices (VOICE_TEXTS) nor the preservation texts
# (PRESERVE_TEXTS). Twelve, so that the fraction measures the speakers rather than one sentence: a sentence whose codes
# leave the base's at one frame keeps them left for the rest of it (with 4 sentences one such frame was 0.7).
OUTSIDE_TEXTS = [
    "what do you see",
    "describe the sound in detail",
    "two plus two is four",
    "a steady tone then silence",
    "the light turns green",
    "who left the gate open",
    "fresh fish at the market",
    "my sister lives far away",
    "seven small birds",
    "the engine will not start",
    "keep the change",
    "rain on the roof all night",
]


@pytest.fixture(scope="module")
def trained_with_preservation(workdir):
    """The `trained` run keeping the existing speakers with the recipe's defaults (`--preserve_speakers all`,
    cross-entropy on the base's codes at weight 1, 3 clips x 3 kept speakers = 9 preserved examples a step) and
    `train/configs/talker_voice.yaml`'s cosine schedule, 800 steps."""
    output_dir = workdir["root"] / "nova_preserving"
    run_script(
        "talker_voice_sft.py",
        *train_flags(
            workdir,
            output_dir,
            "--speaker_name",
            "nova",
            "--init_speaker",
            "Ethan",
            "--max_steps",
            800,
            "--lora_target_code_predictor_mlp",
            "true",
            "--lr_scheduler_type",
            "cosine",
        ),
    )
    merged = workdir["root"] / "nova_preserving_merged"
    run_script("merge.py", "--adapter", output_dir, "--output_dir", merged)
    return {"adapter": output_dir, "merged": str(merged)}


def same_code_fraction(model, base, processor, speaker, texts):
    """Fraction of (frame, codebook) positions where `model`'s greedy codes for `speaker` equal `base`'s, over
    `texts` (a frame only one of them speaks counts as different)."""
    same = total = 0
    for text in texts:
        codes = generate_codes(model, processor, text, speaker, talker_repetition_penalty=1.0)[0]
        reference = generate_codes(base, processor, text, speaker, talker_repetition_penalty=1.0)[0]
        frames = min(len(codes), len(reference))
        same += (codes[:frames] == reference[:frames]).sum().item()
        total += max(len(codes), len(reference)) * codes.shape[1]
    return same / total


def spoken_clips(model, processor, encoded, speakers):
    """Per speaker, how many of the clips' exact codes greedy generate speaks from their transcripts."""
    return {
        speaker: sum(
            torch.equal(generate_codes(model, processor, clip.text, speaker)[0], clip.codes) for clip in encoded
        )
        for speaker in speakers
    }


def nova_clips(workdir, config, adapter):
    from qwen_omni.common.clips import read_clips
    from qwen_omni.qwen3_omni.talker_voice.data import MimiCodec, encode_clips

    clips = read_clips(workdir["data"], speaker="nova", speaker_column=None)
    codec = MimiCodec.from_pretrained(workdir["mimi"], config)
    return encode_clips(clips, codec, adapter / "mimi_codes")[0]


def test_the_new_voice_joins_the_existing_speakers(workdir, trained, trained_with_preservation, processor):
    """With preservation (the default) the merged nova speaks a training clip's exact codes and no existing speaker
    speaks any of nova's clips; without it (`--preserve_speakers none`) Ethan, whose row nova's started from, speaks
    every one of nova's clips (the collapse of issue 19; what becomes of the others is measured in
    test_existing_speakers_keep_speaking_as_the_base). The record of what was kept is in the adapter and in the
    merge."""
    from qwen_omni.qwen3_omni.talker_voice import read_voice_preservation

    base = load_model(workdir["base"])
    ids = dict(base.config.talker_config.speaker_id)
    encoded = nova_clips(workdir, base.config, trained["adapter"])
    preserved = spoken_clips(load_model(trained_with_preservation["merged"]), processor, encoded, [*ids, "nova"])
    alone = spoken_clips(load_model(trained["merged"]), processor, encoded, [*ids, "nova"])
    assert preserved["nova"] >= 1 and not any(preserved[speaker] for speaker in ids), preserved
    assert alone["nova"] >= 1 and alone["ethan"] == len(encoded), alone

    for folder in (trained_with_preservation["adapter"], trained_with_preservation["merged"]):
        record = read_voice_preservation(folder)
        assert record["speaker_name"] == "nova" and record["preserved_speakers"] == ids
        assert record["replaced_speakers"] == [] and record["preserve_weight"] == 1.0
        assert record["preserve_batch_size"] == 3 * len(ids)
        assert record["num_preserve_examples"] == len(ids) * (len(TEXTS) + record["num_preserve_texts"])
    record = read_voice_preservation(trained["merged"])
    assert record["preserved_speakers"] == {} and record["replaced_speakers"] == sorted(ids)


def test_existing_speakers_keep_speaking_as_the_base(workdir, trained, trained_with_preservation, processor):
    """Issue 19's measure: on sentences outside the voice data and the preservation texts, every preserved speaker's
    greedy codes equal the base's at >= 0.9 of (frame, codebook) positions; without preservation they do not."""
    base = load_model(workdir["base"])
    speakers = sorted(base.config.talker_config.speaker_id)
    alone = load_model(trained["merged"])
    assert all(same_code_fraction(alone, base, processor, speaker, OUTSIDE_TEXTS) < 0.5 for speaker in speakers)
    merged = load_model(trained_with_preservation["merged"])
    fractions = {speaker: same_code_fraction(merged, base, processor, speaker, OUTSIDE_TEXTS) for speaker in speakers}
    assert all(fraction >= 0.9 for fraction in fractions.values()), fractions


def test_preserved_codes_are_what_generate_speaks_for_each_speaker(trained_with_preservation, processor):
    """`talker_greedy_codes` speaks a conversation for every kept speaker in one batch: each row is exactly what
    `generate(speaker=...)` hands to code2wav for that speaker alone, also when the rows end at different frames (on
    the voice's transcripts nova ends after its clips' 6 frames, the base's speakers after 7 or 8)."""
    from qwen_omni.qwen3_omni.talker_voice import TalkerVoiceExample, talker_greedy_codes

    merged = load_model(trained_with_preservation["merged"])
    speakers = merged.config.talker_config.speaker_id
    lengths = []
    for text in TEXTS:
        prompt_ids, answer_ids = conversation_ids(processor, text, None, "Read this aloud: {text}")
        conversation = TalkerVoiceExample(
            torch.tensor(prompt_ids), torch.tensor(prompt_ids + answer_ids), codes=torch.empty(0, dtype=torch.long)
        )
        # generate_codes' limit: at most 4 * FRAMES_PER_CLIP Talker tokens, so one frame fewer
        spoken = talker_greedy_codes(merged, conversation, list(speakers.values()), 4 * FRAMES_PER_CLIP - 1)
        for speaker, (codes, next_code) in zip(speakers, spoken):
            expected = generate_codes(merged, processor, text, speaker, talker_repetition_penalty=1.0)[0]
            assert torch.equal(codes, expected), (text, speaker)
            assert next_code is None  # every speaker ended its speech (codec_eos) within the limit
        lengths.append({speaker: len(codes) for speaker, (codes, _) in zip(speakers, spoken)})
    assert any(len(set(row.values())) > 1 for row in lengths), lengths


def test_the_same_seed_gives_the_same_adapter(workdir, tmp_path):
    """PEFT draws the LoRA factors' initial values: the recipe seeds (`--seed`) before the adapter is built, so two
    runs of the same command give the same adapter (they differed by ~0.4 after 3 steps when it seeded only in the
    Trainer)."""
    from safetensors.torch import load_file

    adapters = []
    for run in ("first", "second"):
        flags = ("--speaker_name", "nova", "--max_steps", 1, "--preserve_speakers", "none", "--report_to", "none")
        run_script("talker_voice_sft.py", *train_flags(workdir, tmp_path / run, *flags))
        adapters.append(load_file(tmp_path / run / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    for name, tensor in adapters[0].items():
        assert torch.equal(tensor, adapters[1][name]), name


def test_tensorboard_logs_both_losses(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [
        root for root, _, files in os.walk(trained["adapter"] / "runs") if any("tfevents" in name for name in files)
    ]
    events = EventAccumulator(run)
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/talker_loss", "train/code_predictor_loss", "train/loss"} <= set(tags), tags
    talker, predictor, total = (
        events.Scalars(f"train/{key}") for key in ("talker_loss", "code_predictor_loss", "loss")
    )
    assert len(talker) == len(predictor) == 8
    assert talker[-1].value < talker[0].value and predictor[-1].value < predictor[0].value
    assert total[0].value == pytest.approx(talker[0].value + predictor[0].value, abs=2e-3)


@pytest.mark.slow
def test_voice_trains_on_a_4bit_base_and_merges_onto_the_checkpoint(workdir, trained):
    """`--load_in_4bit`: the Thinker's and Talker's experts in NF4 and the Linear layers in 4 bits; the voice trains
    (both losses fall), and the adapter has the keys and shapes of the one trained on the checkpoint's weights, so
    `train/merge.py` folds it into the checkpoint (never into the 4-bit weights)."""
    from safetensors.torch import load_file

    output_dir = workdir["root"] / "nova_4bit"
    result = run_script(
        "talker_voice_sft.py",
        *train_flags(
            workdir,
            output_dir,
            "--speaker_name",
            "nova",
            "--init_speaker",
            "Ethan",
            "--max_steps",
            30,
            "--lora_target_code_predictor_mlp",
            "true",
            "--logging_steps",
            10,
            "--load_in_4bit",
        ),
    )
    logged = [json.loads(line.replace("'", '"')) for line in re.findall(r"\{'loss'.*?\}", result.stdout)]
    assert len(logged) == 3, result.stdout[-2000:]
    for key in ("talker_loss", "code_predictor_loss"):
        assert float(logged[-1][key]) < float(logged[0][key]), logged
    adapter = load_file(output_dir / "adapter_model.safetensors")
    reference = load_file(trained["adapter"] / "adapter_model.safetensors")
    assert {key: value.shape for key, value in adapter.items()} == {
        key: value.shape for key, value in reference.items()
    }
    merged = workdir["root"] / "nova_4bit_merged"
    run_script("merge.py", "--adapter", output_dir, "--output_dir", merged)
    model, info = Qwen3OmniMoeForConditionalGeneration.from_pretrained(merged, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (
        model.config.talker_config.speaker_id["nova"]
        == json.loads((output_dir / "talker_voice_config.json").read_text())["speaker_codec_id"]
    )


def test_only_lora_and_speaker_row_change(workdir, trained, processor):
    """The adapter holds Talker tensors only; the merged checkpoint reloads with no missing or unexpected key, in the
    Hub's per-expert layout; its Thinker and code2wav are bit-identical to the base (same Thinker logits), and of the
    Talker only LoRA-targeted weights and the new speaker's codec-embedding row changed."""
    from safetensors.torch import load_file

    adapter = load_file(trained["adapter"] / "adapter_model.safetensors")
    assert adapter and all(".talker." in key for key in adapter), [k for k in adapter if ".talker." not in k]
    assert any("codec_embedding.token_adapter.trainable_tokens_delta" in key for key in adapter)
    voice = json.loads((trained["adapter"] / "talker_voice_config.json").read_text())
    speakers = json.loads((workdir["root"] / "base" / "config.json").read_text())["talker_config"]["speaker_id"]
    assert voice == {
        "speaker_name": "nova",
        "speaker_codec_id": max(speakers.values()) + 1,
        "init_codec_id": speakers["ethan"],
    }

    merged_model, info = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        trained["merged"], output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert merged_model.config.talker_config.speaker_id == {**speakers, "nova": voice["speaker_codec_id"]}
    base_tensors = load_file(os.path.join(workdir["base"], "model.safetensors"))
    merged_tensors = load_file(os.path.join(trained["merged"], "model.safetensors"))
    assert base_tensors.keys() == merged_tensors.keys()
    assert "talker.model.layers.0.mlp.experts.0.gate_proj.weight" in merged_tensors  # the Hub's per-expert names
    changed = {key for key in base_tensors if not torch.equal(base_tensors[key], merged_tensors[key])}
    assert not any(key.startswith(("thinker.", "code2wav.")) for key in changed)
    lora_targets = (
        ".self_attn.q_proj.",
        ".self_attn.k_proj.",
        ".self_attn.v_proj.",
        ".self_attn.o_proj.",
        ".mlp.gate.weight",
        ".mlp.experts.",
        "code_predictor.model.layers.0.mlp.",
    )
    embedding = "talker.model.codec_embedding.weight"
    assert all(any(target in key for target in lora_targets) or key == embedding for key in changed), changed
    assert any(".mlp.experts." in key for key in changed) and any("code_predictor" in key for key in changed)
    rows_changed = (base_tensors[embedding] != merged_tensors[embedding]).any(-1)
    assert torch.nonzero(rows_changed).flatten().tolist() == [voice["speaker_codec_id"]]

    base_model = load_model(workdir["base"])
    prompt_ids, answer_ids = conversation_ids(processor, "the quick brown fox", None, "Read this aloud: {text}")
    with torch.no_grad():
        sequence = torch.tensor([prompt_ids + answer_ids])
        base_logits = base_model.thinker(input_ids=sequence).logits
        assert torch.equal(base_logits, merged_model.eval().thinker(input_ids=sequence).logits)


# ---------------------------------------------------------------------------------------------------- data
def test_codes_equal_mimi_encode_and_cache_is_reused(workdir, tmp_path):
    """The data step's codes are `MimiModel.encode(resampled clip, num_quantizers=16)`; unusable clips are skipped,
    counted by reason and named; a second run reads everything from the cache."""
    import numpy as np
    import soundfile as sf
    import torchaudio.functional
    from transformers import MimiModel

    from qwen_omni.common.clips import read_clips
    from qwen_omni.qwen3_omni.talker_voice.data import MimiCodec, encode_clips

    folder = tmp_path / "clips"
    write_clips(folder, texts=["the quick brown fox"])
    rng = np.random.default_rng(1)
    sf.write(folder / "silent.wav", np.zeros(800, dtype=np.float32), 16000)
    sf.write(folder / "short.wav", (0.3 * rng.standard_normal(20)).astype(np.float32), 16000)  # < 80 samples at 24 kHz
    sf.write(folder / "long.wav", (0.3 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file")
    with open(folder / "metadata.jsonl", "a") as handle:
        for name in ("silent", "short", "long", "broken"):
            handle.write(json.dumps({"audio": f"{name}.wav", "text": f"a {name} clip"}) + "\n")
    model = load_model(workdir["base"])
    clips = read_clips(folder, speaker="nova", speaker_column=None)
    codec = MimiCodec.from_pretrained(workdir["mimi"], model.config)
    encoded, summary = encode_clips(clips, codec, tmp_path / "cache", max_duration=2.0)

    assert [clip.text for clip in encoded] == ["the quick brown fox"]
    assert (summary.num_clips, summary.num_kept, summary.num_skipped) == (5, 1, 4)
    assert summary.skipped_by_reason == {
        "silent": 1,
        "shorter than one codec frame": 1,
        "longer than the limit": 1,
        "unreadable audio": 1,
    }
    assert sorted(os.path.basename(entry["audio"]) for entry in summary.skipped) == [
        "broken.wav",
        "long.wav",
        "short.wav",
        "silent.wav",
    ]
    assert json.loads((tmp_path / "cache" / "summary.json").read_text())["num_skipped"] == 4

    waveform, rate = sf.read(folder / "clip0.wav", dtype="float32")
    resampled = torchaudio.functional.resample(torch.from_numpy(waveform), rate, 24000)
    mimi = MimiModel.from_pretrained(workdir["mimi"]).eval()
    with torch.no_grad():
        direct = mimi.encode(resampled.reshape(1, 1, -1), num_quantizers=16).audio_codes[0].T
    assert encoded[0].codes.shape == (FRAMES_PER_CLIP, 16)
    assert torch.equal(encoded[0].codes, direct)

    again, summary = encode_clips(clips, codec, tmp_path / "cache", max_duration=2.0)
    assert (summary.num_encoded, summary.num_reused, summary.num_skipped) == (0, 4, 4)  # broken.wav: no key to cache
    assert torch.equal(again[0].codes, encoded[0].codes)
    # another setting is another cache: nothing is reused
    _, summary = encode_clips(clips, codec, tmp_path / "cache", max_duration=5.0)
    assert summary.num_reused == 0 and summary.skipped_by_reason.get("longer than the limit") is None


def test_mixed_rates_and_missing_transcripts_are_refused(workdir, tmp_path):
    import numpy as np
    import soundfile as sf

    from qwen_omni.common.clips import read_clips
    from qwen_omni.qwen3_omni.talker_voice.data import MimiCodec, encode_clips

    folder = write_clips(tmp_path / "mixed", texts=["the quick brown fox", "the lazy dog"])
    waveform = (0.3 * np.random.default_rng(0).standard_normal(480)).astype(np.float32)
    sf.write(os.path.join(folder, "clip1.wav"), waveform, 24000)
    codec = MimiCodec.from_pretrained(workdir["mimi"], load_model(workdir["base"]).config)
    clips = read_clips(folder, speaker="nova", speaker_column=None)
    with pytest.raises(ValueError, match="several sampling rates.*(16000 Hz.*24000 Hz|24000 Hz.*16000 Hz)"):
        encode_clips(clips, codec, tmp_path / "cache")
    encoded, _ = encode_clips(clips, codec, tmp_path / "cache", allow_mixed_sampling_rates=True)
    assert [clip.codes.shape[0] for clip in encoded] == [FRAMES_PER_CLIP, FRAMES_PER_CLIP]

    with open(os.path.join(folder, "metadata.jsonl"), "a") as handle:
        handle.write(json.dumps({"audio": "clip0.wav", "text": "  "}) + "\n")
    with pytest.raises(ValueError, match="1 of 3 clips .* have no transcript"):
        read_clips(folder, speaker="nova", speaker_column=None)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"codebook_size": 64}, r"codebook size 64 != the Talker's 32"),
        ({"num_quantizers": 8, "num_semantic_quantizers": 1}, r"8 codebooks < the Talker's num_code_groups=16"),
        ({"upsampling_ratios": [5, 4, 4]}, r"frame rate 150 Hz \(160 samples at 24000 Hz\) != the Talker's 300 Hz"),
        ({"sampling_rate": 16000}, r"frame rate 200 Hz .* != the Talker's 300 Hz"),
    ],
)
def test_codec_must_match_the_talker(workdir, tmp_path, override, message):
    from qwen_omni.qwen3_omni.talker_voice.data import MimiCodec

    path = tiny_checkpoints.save_tiny_mimi(tmp_path / "other_mimi", **override)
    with pytest.raises(ValueError, match=message + r".*does not match|does not match.*" + message):
        MimiCodec.from_pretrained(path, load_model(workdir["base"]).config)


def test_speaker_options(workdir):
    from qwen_omni.qwen3_omni.talker_voice import resolve_speaker

    config = load_model(workdir["base"]).config
    speakers = config.talker_config.speaker_id
    assert resolve_speaker(config, "Nova", "Chelsie") == ("nova", max(speakers.values()) + 1, speakers["chelsie"])
    assert resolve_speaker(config, adapt_speaker="Ethan") == ("ethan", speakers["ethan"], None)
    with pytest.raises(ValueError, match="'Ethan' already exists .* --adapt_speaker Ethan"):
        resolve_speaker(config, "Ethan")
    with pytest.raises(ValueError, match="exactly one of --speaker_name"):
        resolve_speaker(config, "nova", adapt_speaker="Ethan")
    with pytest.raises(ValueError, match="--adapt_speaker 'Nova' is not a speaker"):
        resolve_speaker(config, adapt_speaker="Nova")
    with pytest.raises(ValueError, match="--init_speaker 'Bob' is not a speaker"):
        resolve_speaker(config, "nova", "Bob")


def test_speaker_names_are_keyed_once_as_generate_looks_them_up(workdir, tmp_path):
    """`generate(speaker=NAME)` looks up `NAME.lower()` without stripping: every name the recipe takes is keyed so
    (`--speaker_name NOVA` is `nova`), and one with surrounding whitespace is refused before any work instead of
    becoming a second voice `" ethan"` beside `ethan`; the preserved speakers resolve the same way."""
    from qwen_omni.qwen3_omni.talker_voice import (
        read_talker_voice_config,
        resolve_preserved_speakers,
        resolve_speaker,
        speaker_key,
    )

    config = load_model(workdir["base"]).config
    speakers = dict(config.talker_config.speaker_id)
    assert speaker_key("NoVa") == "nova" and resolve_speaker(config, "NOVA")[0] == "nova"
    whitespace = r"is empty or starts or ends with whitespace: generate\(speaker=...\) looks a speaker up by"
    with pytest.raises(
        ValueError,
        match=rf"--speaker_name ' Ethan' {whitespace}.*beside 'ethan'.*"
        r"Pass --speaker_name 'Ethan'",
    ):
        resolve_speaker(config, " Ethan")
    with pytest.raises(ValueError, match=rf"--adapt_speaker 'Ethan\\t' {whitespace}"):
        resolve_speaker(config, adapt_speaker="Ethan\t")
    with pytest.raises(ValueError, match=rf"--init_speaker ' chelsie ' {whitespace}"):
        resolve_speaker(config, "nova", " chelsie ")
    with pytest.raises(ValueError, match=rf"--speaker_name '' {whitespace}"):
        resolve_speaker(config, "")

    assert resolve_preserved_speakers(config, "all", "nova") == speakers
    assert resolve_preserved_speakers(config, "all", "ethan") == {k: v for k, v in speakers.items() if k != "ethan"}
    assert resolve_preserved_speakers(config, "none", "nova") == {}
    assert resolve_preserved_speakers(config, "Chelsie,aiden", "nova") == {
        "chelsie": speakers["chelsie"],
        "aiden": speakers["aiden"],
    }
    with pytest.raises(ValueError, match=r"--preserve_speakers names 'Bob', not a speaker of this Talker"):
        resolve_preserved_speakers(config, "chelsie,Bob", "nova")
    with pytest.raises(ValueError, match=r"--preserve_speakers names 'ethan', the speaker this run trains"):
        resolve_preserved_speakers(config, "Ethan", "ethan")

    # a hand-edited adapter whose name generate could not find is refused at the merge
    (tmp_path / "talker_voice_config.json").write_text(
        json.dumps({"speaker_name": "Nova", "speaker_codec_id": 1, "init_codec_id": None})
    )
    with pytest.raises(ValueError, match=r"speaker_name 'Nova' of .* is not lower-case.*write 'nova'"):
        read_talker_voice_config(tmp_path)

    # the script refuses the name before any work: the base keeps its three speakers, nothing is written
    import importlib.util

    path = os.path.join(REPO, "train", "talker_voice_sft.py")
    spec = importlib.util.spec_from_file_location("talker_voice_sft_names", path)
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    parser = script.TrlParser(
        (script.ScriptArguments, script.Qwen3OmniSFTConfig, script.Qwen3OmniModelConfig, script.TalkerVoiceArguments)
    )
    flags = [str(value) for value in train_flags(workdir, tmp_path / "out", "--speaker_name", " Ethan")]
    with pytest.raises(ValueError, match=r"--speaker_name ' Ethan' is empty or starts or ends with whitespace"):
        script.main(*parser.parse_args_and_config(args=flags))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"--preserve_weight must be > 0, got 0.0.*--preserve_speakers none"):
        parser.parse_args_and_config(args=flags + ["--preserve_weight", "0"])


def test_the_model_card_usage_snippet_gives_the_merged_voice(workdir, trained):
    """The card `--push_to_hub` writes for a Talker voice adapter: its usage code, run as a user would (with the Hub
    ids pointing at the local folders), gives the model `train/merge.py` gives, speaker included."""
    from qwen_omni.common.hub import build_model_card

    from omni_testing import front_matter, usage_code

    card = str(build_model_card(trained["adapter"], "someone/qwen3-omni-nova", datasets=[workdir["data"]]))
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "text-to-speech" and meta["library_name"] == "peft"
    assert "trust_remote_code" not in card and "talker_voice_sft.py" in card
    code = usage_code(card).replace("someone/qwen3-omni-nova", str(trained["adapter"]))
    namespace = {}
    exec(code.replace("BASE_MODEL", workdir["base"]), namespace)
    model = namespace["model"]
    merged = Qwen3OmniMoeForConditionalGeneration.from_pretrained(trained["merged"], dtype=model.dtype)
    assert model.config.talker_config.speaker_id == merged.config.talker_config.speaker_id
    reference = merged.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_voice_trains_as_ddp_on_two_cpu_processes(workdir, trained, tmp_path):
    """`accelerate launch --config_file train/accelerate/cpu_2proc.yaml train/talker_voice_sft.py ... --use_cpu true`:
    two ranks over gloo (world size asserted in the run), each trains on its half of the clips, the loss goes
    through the DDP-wrapped model (so gradients are synchronised), the main process alone encodes the clips and
    writes the adapter, in the single-process run's format."""
    from safetensors.torch import load_file

    output_dir = tmp_path / "ddp"
    flags = train_flags(
        workdir,
        output_dir,
        "--speaker_name",
        "nova",
        "--init_speaker",
        "Ethan",
        "--max_steps",
        4,
        "--lora_target_code_predictor_mlp",
        "true",
        "--per_device_train_batch_size",
        1,
        "--logging_steps",
        1,
        "--use_cpu",
        "true",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--main_process_port",
            "0",
            "--config_file",
            os.path.join(REPO, "train", "accelerate", "cpu_2proc.yaml"),
            os.path.join(REPO, "train", "talker_voice_sft.py"),
            *map(str, flags),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    for rank in (0, 1):
        assert re.search(
            rf"Process rank {rank} of world size 2 \(local rank {rank}\) on cpu(:0)?: DDP over gloo\.", log
        )
        # 3 clips over 2 ranks, one clip per step: 2 batches each per epoch
        assert f"Process rank {rank} of world size 2: 2 batches of 1 rows per epoch, of 3 training rows" in log
    assert len(re.findall(r"'talker_loss'", log)) == 4
    adapter = load_file(output_dir / "adapter_model.safetensors")
    reference = load_file(trained["adapter"] / "adapter_model.safetensors")
    assert {key: value.shape for key, value in adapter.items()} == {
        key: value.shape for key, value in reference.items()
    }
    assert all(value.abs().sum() > 0 for key, value in adapter.items() if ".lora_B." in key)
    assert json.loads((output_dir / "talker_voice_config.json").read_text())["speaker_name"] == "nova"


@pytest.mark.parametrize("flag", ["--load_in_8bit", "--offload_experts"])
def test_quantization_options_the_recipe_cannot_honour_are_refused(workdir, tmp_path, flag):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "talker_voice_sft_script", os.path.join(REPO, "train", "talker_voice_sft.py")
    )
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up
    spec.loader.exec_module(script)
    parser = script.TrlParser(
        (script.ScriptArguments, script.Qwen3OmniSFTConfig, script.Qwen3OmniModelConfig, script.TalkerVoiceArguments)
    )
    flags = [str(value) for value in train_flags(workdir, tmp_path / "out", "--speaker_name", "nova", flag)]
    with pytest.raises(ValueError, match=r"does not take --load_in_8bit or --offload_experts.*--load_in_4bit"):
        script.main(*parser.parse_args_and_config(args=flags))
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_talker_is_refused(workdir, tmp_path):
    processor = tiny_checkpoints.build_processor()
    config = tiny_checkpoints.build_config(processor.tokenizer, enable_audio_output=False)
    Qwen3OmniMoeForConditionalGeneration(config).save_pretrained(tmp_path / "captioner")
    processor.save_pretrained(tmp_path / "captioner")
    result = run_script(
        "talker_voice_sft.py",
        *train_flags(
            {**workdir, "base": tmp_path / "captioner"}, tmp_path / "out", "--speaker_name", "nova", "--max_steps", 1
        ),
        check=False,
    )
    assert result.returncode != 0
    assert "enable_audio_output=False) has no Talker" in result.stderr and "Thinking" in result.stderr
    assert not (tmp_path / "out" / "mimi_codes").exists()


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["bf16_base", "4bit_base"])
def test_routed_and_peft_expert_lora_agree_on_the_talker(workdir, processor, load_in_4bit):
    """apply_routed_lora reaches the Talker's experts and computes what PEFT's wrapper computes (loss, gradients), on
    the checkpoint's weights and on a 4-bit base (the Thinker's and the Talker's experts in NF4)."""
    from peft import get_peft_model

    from qwen_omni.qwen3_omni.peft_lora import apply_peft_lora
    from qwen_omni.qwen3_omni.quantized_experts import nf4_parametrization
    from qwen_omni.qwen3_omni.routed_lora import ParamWrapper as RoutedParamWrapper
    from qwen_omni.qwen3_omni.routed_lora import apply_routed_lora
    from qwen_omni.qwen3_omni.talker_voice import RoutableTalkerExperts, build_talker_lora_config, load_talker_model

    results = []
    for impl in ("routed", "peft"):
        model = load_talker_model(workdir["base"], load_in_4bit=load_in_4bit, dtype=torch.float32).eval()
        model.requires_grad_(False)
        talker_experts = model.talker.model.layers[0].mlp.experts
        assert isinstance(talker_experts, RoutableTalkerExperts)
        for experts in (talker_experts, model.thinker.model.language_model.layers[0].mlp.experts):
            assert (nf4_parametrization(experts, "gate_up_proj") is not None) == load_in_4bit
        torch.manual_seed(0)
        ethan = model.config.talker_config.speaker_id["ethan"]
        peft_model = get_peft_model(model, build_talker_lora_config(model, [ethan], r=4, lora_alpha=8))
        with torch.no_grad():  # non-zero B so that the LoRA terms count
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.1)
        if impl == "routed":
            # router, gate_up_proj, down_proj of each of the Talker's MoE layers
            assert apply_routed_lora(peft_model) == 3 * len(model.talker.model.layers)
            experts = peft_model.get_base_model().talker.model.layers[0].mlp.experts
            assert type(experts) is RoutedParamWrapper
        else:
            apply_peft_lora(peft_model)
        torch.manual_seed(1)
        codes = torch.randint(0, tiny_checkpoints.TINY_CODEBOOK_SIZE, (5, tiny_checkpoints.TINY_NUM_CODEBOOKS))
        base = peft_model.get_base_model()
        _, _, clip = teacher_forced(base, processor, "the lazy dog", codes, ethan)
        output = talker_voice_forward(base, [clip])
        output.loss.backward()
        grads = {
            name: parameter.grad.clone()
            for name, parameter in peft_model.named_parameters()
            if parameter.requires_grad and ".experts." in name
        }
        results.append((output.loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], atol=1e-5, rtol=1e-4)


def test_adapt_speaker_prompts_and_push_to_hub(workdir, tmp_path, monkeypatch):
    """`--adapt_speaker Ethan` trains Ethan's own row (no new speaker); a per-clip prompt column is the user turn;
    `--push_to_hub` checks the repo id before training and uploads the adapter through hub.push_to_hub at the end."""
    import importlib.util

    from huggingface_hub import HfApi
    from safetensors.torch import load_file
    from trl import TrlParser

    path = os.path.join(REPO, "train", "talker_voice_sft.py")
    spec = importlib.util.spec_from_file_location("talker_voice_sft", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    parser = TrlParser(
        (script.ScriptArguments, script.Qwen3OmniSFTConfig, script.Qwen3OmniModelConfig, script.TalkerVoiceArguments)
    )
    data = tmp_path / "data"
    write_clips(data, texts=["the quick brown fox", "the lazy dog"])
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    rows[0]["prompt"] = "Say the fox line."
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    flags = [
        *train_flags(
            {**workdir, "data": data},
            tmp_path / "out",
            "--adapt_speaker",
            "Ethan",
            "--max_steps",
            2,
            "--prompt_column",
            "prompt",
            "--report_to",
            "none",
            "--push_to_hub",
            "true",
        )
    ]

    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw) or "https://hf.co/commit/1")
    with pytest.raises(ValueError, match="owner/name"):
        script.main(*parser.parse_args_and_config([str(f) for f in flags] + ["--hub_model_id", "no-slash"]))
    assert not (tmp_path / "out" / "mimi_codes").exists()  # refused before any work

    flags = [str(flag) for flag in flags] + ["--hub_model_id", "someone/ethan-v2"]
    trainer = script.main(*parser.parse_args_and_config(flags))
    assert not trainer.args.push_to_hub  # the Trainer itself uploads no checkpoint
    uploaded = [(upload["repo_id"], upload["folder_path"]) for upload in uploads]
    assert uploaded == [("someone/ethan-v2", str(tmp_path / "out"))]
    tokenizer = trainer.processing_class.tokenizer
    first, second = (tokenizer.decode(example.prompt_ids) for example in trainer.train_dataset)
    assert "Say the fox line." in first and "Read this aloud: the lazy dog" in second
    speakers = json.loads((workdir["root"] / "base" / "config.json").read_text())["talker_config"]["speaker_id"]
    voice = json.loads((tmp_path / "out" / "talker_voice_config.json").read_text())
    assert voice == {"speaker_name": "ethan", "speaker_codec_id": speakers["ethan"], "init_codec_id": None}
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    delta = [key for key in adapter if "trainable_tokens_delta" in key]
    assert len(delta) == 1

    # --adapt_speaker keeps the other speakers the same way (by default)
    from qwen_omni.qwen3_omni.talker_voice import read_voice_preservation

    preservation = read_voice_preservation(tmp_path / "out")
    assert preservation["speaker_name"] == "ethan" and preservation["replaced_speakers"] == []
    assert preservation["preserved_speakers"] == {name: speakers[name] for name in ("chelsie", "aiden")}
    assert preservation["num_preserve_examples"] == 2 * (2 + preservation["num_preserve_texts"])

    run_script("merge.py", "--adapter", tmp_path / "out", "--output_dir", tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["talker_config"]["speaker_id"] == speakers
    assert read_voice_preservation(tmp_path / "merged") == preservation
    base = load_file(os.path.join(workdir["base"], "model.safetensors"))["talker.model.codec_embedding.weight"]
    merged = load_file(tmp_path / "merged" / "model.safetensors")["talker.model.codec_embedding.weight"]
    assert torch.nonzero((base != merged).any(-1)).flatten().tolist() == [speakers["ethan"]]
