"""Talker voice fine-tuning of a tiny random Qwen3-Omni (Thinker, Talker, code predictor, code2wav) with a tiny random
Mimi: teacher forcing equals `generate`, the voice is learned, data, merge and bad input."""

import os
import sys

import pytest
import torch
from transformers import AutoProcessor, Qwen3OmniMoeForConditionalGeneration

from qwen_omni.qwen3_omni.talker_voice import (
    build_talker_sequence,
    conversation_ids,
    talker_voice_forward,
    thinker_outputs,
)


sys.path.insert(0, os.path.dirname(__file__))
import qwen3_omni_tiny  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("talker_voice")
    base = qwen3_omni_tiny.save_tiny_checkpoint(root / "base")
    # At the 0.02 init the Talker's text projection outputs ~1e-4: give the text a weight in the Talker's input
    # comparable to the codec embeddings' (as in the trained model), so that the logits depend on it measurably.
    model = load_model(base)
    with torch.no_grad():
        for projection in (model.talker.text_projection, model.talker.hidden_projection):
            for linear in (projection.linear_fc1, projection.linear_fc2):
                linear.weight.normal_(0.0, 1.0 / linear.in_features**0.5)
        model.thinker.get_input_embeddings().weight.normal_(0.0, 1.0)
    model.save_pretrained(base)
    return {"root": root, "base": base, "mimi": qwen3_omni_tiny.save_tiny_mimi(root / "mimi")}


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
    codes = torch.randint(0, qwen3_omni_tiny.TINY_CODEBOOK_SIZE, (num_frames, qwen3_omni_tiny.TINY_NUM_CODEBOOKS))
    speaker_id = model.config.talker_config.speaker_id["ethan"]
    prompt_ids, answer_ids, clip = teacher_forced(model, processor, "the quick brown fox", codes, speaker_id)
    assert len(answer_ids) - 1 > 3  # transcript tokens: more than 3 frames, fewer than 9 steps of text
    with torch.no_grad():
        output = talker_voice_forward(model, [clip])
    training_logits = output.talker_logits[0, clip.labels != -100]

    talker_logits, predictor_logits, wav = forced_generate(model, processor, prompt_ids, answer_ids, codes, "Ethan")
    assert talker_logits.shape == training_logits.shape == (num_frames + 1, model.config.talker_config.text_config.vocab_size)
    torch.testing.assert_close(training_logits, talker_logits, atol=1e-4, rtol=0)
    assert predictor_logits.shape == output.code_predictor_logits.shape == (num_frames, 15, qwen3_omni_tiny.TINY_CODEBOOK_SIZE)
    torch.testing.assert_close(output.code_predictor_logits, predictor_logits, atol=1e-4, rtol=0)
    # the waveform generate returns is code2wav of exactly these codes
    torch.testing.assert_close(wav, model.code2wav.chunked_decode(codes.T[None], chunk_size=300, left_context_size=25).float())


def test_teacher_forcing_detects_drift(workdir, processor):
    """The comparison above is sharp: dropping the trailing text (one thing generate adds per step) breaks it."""
    model = load_model(workdir["base"])
    torch.manual_seed(0)
    codes = torch.randint(0, qwen3_omni_tiny.TINY_CODEBOOK_SIZE, (4, qwen3_omni_tiny.TINY_NUM_CODEBOOKS))
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
