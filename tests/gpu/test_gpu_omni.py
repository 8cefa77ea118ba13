"""GPU tier, Omni: flash-attention 2 against SDPA (training loss and greedy speech ids), a bf16 training step through
`OmniTrainer`, and text-to-speech speed at the design document's shape and at a 0.6B-class shape, as multiples of
real time (24 kHz SNAC speech is 82 tokens/s). See tests/gpu/conftest.py for how the tier runs on CPU."""

import importlib.util
import time

import pytest
import torch
from datasets import Dataset
from gpu_testing import REPO_ROOT, cuda_device, require_package
from transformers import TrainerCallback, TrainingArguments

from qwen_omni import OmniConfig, OmniForCausalLM
from qwen_omni.omni.build import SPEECH_GENERATION_DEFAULTS
from qwen_omni.omni.trainer import OmniTrainer


pytestmark = pytest.mark.gpu

_spec = importlib.util.spec_from_file_location("bench_generation", REPO_ROOT / "bench" / "bench_generation.py")
bench_generation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_generation)

REAL_TIME_TOKENS_PER_S = bench_generation.REAL_TIME_TOKENS_PER_S  # 24000 / 2048 * 7 = 82.03
NEW_TOKENS = 140  # 20 frames
# logits closer than this count as a tie that bf16 rounding may break either way
BF16_LOGIT_TIE = 0.125


def qwen3_0_6b_class_config() -> OmniConfig:
    """Qwen3-0.6B's decoder (28 layers, width 1024, 16 query / 8 key-value heads of 128) over Qwen3's 151,669 text
    ids plus 7 x 4096 SNAC ids, as `build_omni_from_text_model` makes of Qwen/Qwen3-0.6B."""
    text_vocab = 151669
    special = {
        name: text_vocab + i
        for i, name in enumerate(
            [
                "pad_token_id",
                "tts_token_id",
                "asr_token_id",
                "text_start_token_id",
                "text_end_token_id",
                "audio_start_token_id",
                "audio_end_token_id",
            ]
        )
    }
    offset = text_vocab + 8
    return OmniConfig(
        vocab_size=-(-(offset + 7 * 4096) // 64) * 64,
        audio_token_offset=offset,
        codebook_size=4096,
        vq_strides=[4, 2, 1],
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        eos_token_id=151645,
        **special,
    )


def speech_batch(config: OmniConfig, rows: int = 2, frames: int = 20) -> torch.Tensor:
    """TTS prompts followed by `frames` frames of valid random audio ids (each id in its position's block)."""
    prompt = bench_generation.seed_prompt(config).expand(rows, -1)
    generator = torch.Generator().manual_seed(0)
    codes = [
        torch.randint(0, config.codebook_size, (rows, frames * stride), generator=generator) for stride in (1, 2, 4)
    ]
    audio = config.token_layout.codes_to_ids(codes)
    return torch.cat([prompt, torch.as_tensor(audio)], dim=1)


def audio_prefix(config: OmniConfig, ids: torch.Tensor) -> torch.Tensor:
    """The whole frames of audio ids at the start of `ids` (1-D), checked by the layout (each id in its block)."""
    is_audio = config.token_layout.is_audio(ids)
    length = int(is_audio.long().cumprod(0).sum())
    frames = length // config.token_layout.tokens_per_frame
    prefix = ids[: frames * config.token_layout.tokens_per_frame]
    config.token_layout.ids_to_codes(prefix)  # raises if an id is outside its position's block
    return prefix


def test_flash_attention_2_and_sdpa_give_the_same_loss_and_greedy_speech_ids(record_figure):
    model = bench_generation.build_seed_model()
    config = model.config
    batch = speech_batch(config)
    prompt = bench_generation.seed_prompt(config)
    assert batch.shape == (2, prompt.shape[1] + 140)
    device = cuda_device("flash_attention_2 runs on CUDA only")
    require_package("flash_attn", "flash_attention_2")
    model = model.to(device, torch.bfloat16)
    batch, prompt = batch.to(device), prompt.to(device)

    def loss_and_greedy(implementation):
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            loss = model(input_ids=batch, labels=batch).loss.float().item()
            ids = model.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None)
        return loss, ids[0, prompt.shape[1] :]

    sdpa_loss, sdpa_ids = loss_and_greedy("sdpa")
    fa2_loss, fa2_ids = loss_and_greedy("flash_attention_2")
    record_figure("sdpa_loss", sdpa_loss)
    record_figure("flash_attention_2_loss", fa2_loss)
    assert abs(fa2_loss - sdpa_loss) <= 1e-2 * abs(sdpa_loss), (fa2_loss, sdpa_loss)
    assert len(audio_prefix(config, sdpa_ids)) > 0
    differing = (fa2_ids != sdpa_ids).nonzero()
    first = int(differing[0]) if len(differing) else len(sdpa_ids)
    record_figure("greedy_ids_equal_before_divergence", first, "tokens")
    if first < len(sdpa_ids):
        # a divergence is allowed only where SDPA's own logits tie the two choices within bf16 rounding
        model.set_attn_implementation("sdpa")
        with torch.no_grad():
            logits = model(input_ids=torch.cat([prompt[0], sdpa_ids[:first]])[None]).logits[0, -1].float()
        gap = abs(logits[sdpa_ids[first]] - logits[fa2_ids[first]]).item()
        record_figure("logit_gap_at_divergence", gap)
        assert gap < BF16_LOGIT_TIE, f"greedy ids differ at {first} with a logit gap of {gap:.3f} (not a bf16 tie)"


class LossRecorder(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def test_bf16_training_step_runs_under_autocast_and_lowers_the_loss(tmp_path, record_figure):
    model = bench_generation.build_seed_model().train()
    batch = speech_batch(model.config, rows=4)
    dataset = Dataset.from_dict({"input_ids": batch.tolist(), "labels": batch.tolist()})
    device = cuda_device("bf16 autocast on CUDA")
    linear_output_dtypes = set()
    model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda module, args, output: linear_output_dtypes.add(output.dtype)
    )
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        bf16=True,
        max_steps=10,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    recorder = LossRecorder()
    trainer = OmniTrainer(model=model, args=arguments, train_dataset=dataset, callbacks=[recorder])
    start = time.perf_counter()
    trainer.train()
    record_figure("steps_per_second", 10 / (time.perf_counter() - start), "steps/s")
    assert trainer.args.device.type == device.type and next(model.parameters()).device.type == device.type
    assert next(model.parameters()).dtype == torch.float32  # fp32 master weights, bf16 compute
    assert linear_output_dtypes == {torch.bfloat16}
    record_figure("first_loss", recorder.losses[0])
    record_figure("last_loss", recorder.losses[-1])
    assert len(recorder.losses) == 10 and all(torch.isfinite(torch.tensor(recorder.losses)))
    assert recorder.losses[-1] < recorder.losses[0] - 0.5, recorder.losses


@pytest.mark.parametrize("shape", ["design", "qwen3_0.6b_class"])
def test_tts_tokens_per_second_as_a_multiple_of_real_time(shape, record_figure):
    if shape == "design":
        config = bench_generation.build_seed_model().config  # d_model 128, 3 layers: ~10.8M parameters
    else:
        config = qwen3_0_6b_class_config()
    with torch.device("meta"):
        parameters = sum(p.numel() for p in OmniForCausalLM(config).parameters())
    assert (parameters < 20e6) if shape == "design" else (0.4e9 < parameters < 0.9e9), parameters
    prompt = bench_generation.seed_prompt(config)
    device = cuda_device("generation speed is measured on the GPU")
    torch.manual_seed(0)
    with torch.device(device):
        model = OmniForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    prompt = prompt.to(device)
    outputs = []

    def generate():
        with torch.no_grad():
            outputs.append(
                model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=None, **SPEECH_GENERATION_DEFAULTS)
            )

    from gpu_testing import cuda_median_seconds

    seconds = cuda_median_seconds(generate, repeats=3, warmup=1)
    new_tokens = outputs[-1].shape[1] - prompt.shape[1]
    tokens_per_second = new_tokens / seconds
    record_figure("parameters", parameters)
    record_figure("tokens_per_second", round(tokens_per_second, 1), "tokens/s")
    record_figure("real_time_multiple", round(tokens_per_second / REAL_TIME_TOKENS_PER_S, 2), "x")
    assert new_tokens == NEW_TOKENS
    # the constrained decoding held on the GPU: the speech is whole frames of ids in their positions' blocks
    assert len(audio_prefix(config, outputs[-1][0, prompt.shape[1] :].cpu())) >= 7
    if shape == "design":  # the design's claim: speech faster than it plays
        assert tokens_per_second > REAL_TIME_TOKENS_PER_S, tokens_per_second


def test_static_cache_compiles_the_fast_heads_decoding_step_with_the_same_greedy_ids(record_figure):
    """On CUDA a static cache makes transformers compile the decoding step (its rule, which the fast head follows):
    the same greedy speech ids as the eager loop, and the compiled tokens/s against the eager ones."""
    config = bench_generation.build_seed_model().config
    prompt = bench_generation.seed_prompt(config)
    device = cuda_device("the compiled decoding step runs on the GPU")
    torch.manual_seed(0)
    with torch.device(device):
        model = OmniForCausalLM(config).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    prompt = prompt.to(device)
    outputs = {}

    def generate(name: str, **kwargs):
        def run():
            with torch.no_grad():
                outputs[name] = model.generate(
                    prompt, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, **kwargs
                )

        return run

    from gpu_testing import cuda_median_seconds

    eager = cuda_median_seconds(generate("eager"), repeats=3, warmup=1)
    compiled = cuda_median_seconds(generate("compiled", cache_implementation="static"), repeats=3, warmup=1)
    assert hasattr(model, "_compiled_base_model"), "the static cache did not compile the decoding step"
    assert torch.equal(outputs["compiled"], outputs["eager"])
    record_figure("compiled_over_eager_speed", round(eager / compiled, 2), "x")
