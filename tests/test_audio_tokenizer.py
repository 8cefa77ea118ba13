"""SNACAudioTokenizer (modeling_snac.py): the SNAC codec as a transformers audio tokenizer, and its torch-free config
and token layout (configuration_snac.py)."""

import subprocess
import sys

import pytest
import snac
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModelForAudioTokenization
from transformers.modeling_utils import PreTrainedAudioTokenizerBase

from qwen_omni.configuration_snac import SNACConfig
from qwen_omni.modeling_snac import SNACAudioTokenizer

from omni_testing import REPO_ROOT, TINY_SNAC_24KHZ


CODECS = ["snac_24khz_dir", "snac_32khz_dir"]


@pytest.fixture(params=CODECS)
def codec_dir(request):
    return request.getfixturevalue(request.param)


def test_loads_snac_layout_checkpoint_with_snacs_own_weights(codec_dir):
    audio_tokenizer = SNACAudioTokenizer.from_pretrained(codec_dir)
    assert isinstance(audio_tokenizer, PreTrainedAudioTokenizerBase) and not audio_tokenizer.training
    reference = snac.SNAC.from_pretrained(str(codec_dir)).state_dict()
    loaded = audio_tokenizer.state_dict()
    assert loaded.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)


def test_codes_equal_calling_snac_directly(codec_dir):
    audio_tokenizer = SNACAudioTokenizer.from_pretrained(codec_dir)
    codec = snac.SNAC.from_pretrained(str(codec_dir))
    config = audio_tokenizer.config
    torch.manual_seed(0)
    waveforms = 0.3 * torch.randn(2, 1, 3 * config.samples_per_frame * config.frames_per_window + 123)
    padding_mask = torch.ones(2, waveforms.shape[-1], dtype=torch.long)
    padding_mask[1, config.samples_per_frame + 1 :] = 0  # the second row holds 1 frame and 1 sample: 2 frames
    with torch.inference_mode():
        output = audio_tokenizer.encode(waveforms, padding_mask=padding_mask)
        expected = codec.encode(waveforms)
    frames = -(-waveforms.shape[-1] // config.samples_per_frame)
    assert output.num_frames.tolist() == [frames, 2]
    layout = audio_tokenizer.token_layout
    for code, expected_code, per_frame in zip(output.audio_codes, expected, layout.codes_per_frame):
        # snac pads to whole attention windows; the tokenizer keeps the frames that cover the samples
        torch.testing.assert_close(code, expected_code[:, : frames * per_frame], rtol=0, atol=0)
    # a 2-D batch of mono waveforms reads like (batch, 1, samples)
    with torch.inference_mode():
        flat = audio_tokenizer.encode(waveforms[:, 0]).audio_codes
    assert all(torch.equal(a, b) for a, b in zip(flat, output.audio_codes))
    with pytest.raises(ValueError, match=r"mono waveforms of shape \(batch, 1, samples\)"):
        audio_tokenizer.encode(torch.zeros(1, 2, 100))


def test_decode_equals_snac_without_noise_and_is_deterministic_with_it(tmp_path):
    config = {**TINY_SNAC_24KHZ, "noise": False}
    torch.manual_seed(0)
    codec = snac.SNAC(**config).eval()
    audio_tokenizer = SNACAudioTokenizer(SNACConfig(**config))
    audio_tokenizer.load_state_dict(codec.state_dict())
    codes = [torch.randint(0, 32, (2, 5 * n)) for n in audio_tokenizer.token_layout.codes_per_frame]
    with torch.inference_mode():
        decoded = audio_tokenizer.decode(codes).audio_values
        expected = codec.decode(codes)[:, 0]
    assert decoded.shape == (2, 5 * audio_tokenizer.config.samples_per_frame)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)

    # with SNAC's decoder noise: locked to the frame position, so the same codes decode to the same waveform
    noisy = SNACAudioTokenizer(SNACConfig(**TINY_SNAC_24KHZ)).eval()
    with torch.inference_mode():
        first, second = noisy.decode(codes).audio_values, noisy.decode(codes).audio_values
        unbatched = noisy.decode([code[1] for code in codes]).audio_values
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(unbatched, first[1], rtol=0, atol=1e-6)  # batched convolutions round differently


def test_window_decoded_at_its_frame_offset_matches_the_full_decode(snac_24khz_dir):
    audio_tokenizer = SNACAudioTokenizer.from_pretrained(snac_24khz_dir)
    layout, spf = audio_tokenizer.token_layout, audio_tokenizer.config.samples_per_frame
    torch.manual_seed(1)
    codes = [torch.randint(0, 32, (12 * n,)) for n in layout.codes_per_frame]
    # frames 5..7 with 3 frames of context on each side: the decoder's receptive field fits inside
    start, stop, context = 5, 7, 3
    with torch.inference_mode():
        full = audio_tokenizer.decode(codes).audio_values
        window = audio_tokenizer.decode(
            [c[(start - context) * n : (stop + context) * n] for c, n in zip(codes, layout.codes_per_frame)],
            frame_offset=start - context,
        ).audio_values
        unlocked = audio_tokenizer.decode(
            [c[(start - context) * n : (stop + context) * n] for c, n in zip(codes, layout.codes_per_frame)]
        ).audio_values
    inner = slice(context * spf, (context + stop - start) * spf)
    torch.testing.assert_close(window[inner], full[start * spf : stop * spf], atol=1e-5, rtol=0)
    # the offset matters: decoded as if it started the stream, the window gets other noise
    assert not torch.allclose(unlocked[inner], full[start * spf : stop * spf], atol=1e-5, rtol=0)


def test_save_pretrained_round_trip_through_transformers(snac_24khz_dir, tmp_path):
    audio_tokenizer = SNACAudioTokenizer.from_pretrained(snac_24khz_dir)
    audio_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = SNACAudioTokenizer.from_pretrained(tmp_path)
    auto = AutoModelForAudioTokenization.from_pretrained(tmp_path)
    assert type(auto).__name__ == "SNACAudioTokenizer" and isinstance(auto, PreTrainedAudioTokenizerBase)
    assert reloaded.config.snac_kwargs == audio_tokenizer.config.snac_kwargs == {"latent_dim": None, **TINY_SNAC_24KHZ}
    for model in (reloaded, auto):
        for name, tensor in audio_tokenizer.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    waveform = 0.3 * torch.randn(1, 1, 3000)
    with torch.inference_mode():
        codes = audio_tokenizer.encode(waveform).audio_codes
        reloaded_codes = reloaded.encode(waveform).audio_codes
        decoded, reloaded_decoded = audio_tokenizer.decode(codes), reloaded.decode(codes)
    assert all(torch.equal(a, b) for a, b in zip(codes, reloaded_codes))
    torch.testing.assert_close(decoded.audio_values, reloaded_decoded.audio_values, rtol=0, atol=0)


def test_config_defaults_are_the_24khz_codec_and_refuse_a_broken_code_tree():
    config = SNACConfig()
    assert config.vq_strides == [4, 2, 1] and config.sampling_rate == 24000 and config.hop_length == 512
    assert config.token_layout(128266).tokens_per_frame == 7 and config.frames_per_window == 1
    assert SNACConfig(**TINY_SNAC_24KHZ).snac_kwargs == {"latent_dim": None, **TINY_SNAC_24KHZ}
    with pytest.raises(StrictDataclassClassValidationError, match=r"vq_strides=\[4, 3, 1\] do not form a code tree"):
        SNACConfig(vq_strides=[4, 3, 1])


def test_config_and_layout_import_without_torch():
    code = (
        "import importlib.util, sys\n"
        "sys.modules['torch'] = None\n"
        f"spec = importlib.util.spec_from_file_location('configuration_snac', {str(REPO_ROOT / 'configuration_snac.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['configuration_snac'] = module\n"
        "spec.loader.exec_module(module)\n"
        "layout = module.SNACConfig().token_layout(100)\n"
        "print(layout.tokens_per_frame, layout.is_audio(99), layout.is_audio(100), layout.frame_position(100 + 3 * 4096))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7", "False", "True", "3"]


def test_processor_saves_the_codec_in_its_subfolder_and_loads_it_from_any_folder(snac_24khz_dir, tmp_path):
    from qwen_omni import OmniProcessor

    from omni_testing import tiny_processor

    processor = tiny_processor(snac_24khz_dir)
    processor.save_pretrained(tmp_path / "checkpoint" / "processor")
    saved = tmp_path / "checkpoint" / "processor"
    assert (saved / "audio_tokenizer" / "config.json").is_file() and (
        saved / "audio_tokenizer" / "model.safetensors"
    ).is_file()
    assert not (saved / "snac_codec.safetensors").exists()
    # as `from_pretrained(repo_id, subfolder=...)` finds it on the Hub: the codec is looked up inside that subfolder
    for loaded in (
        OmniProcessor.from_pretrained(saved),
        OmniProcessor.from_pretrained(tmp_path / "checkpoint", subfolder="processor"),
    ):
        assert (
            type(loaded.audio_tokenizer).__name__ == "SNACAudioTokenizer"
            and loaded.token_layout == processor.token_layout
        )
        for name, tensor in processor.audio_tokenizer.state_dict().items():
            torch.testing.assert_close(loaded.audio_tokenizer.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    # a bf16 `dtype` for the model (as pipelines pass it to every component) leaves the codec in float32
    assert OmniProcessor.from_pretrained(saved, dtype=torch.bfloat16).audio_tokenizer.dtype == torch.float32
