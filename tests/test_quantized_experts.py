"""4-bit fused experts (qwen3_omni/quantized_experts.py), their offload, and the routed expert LoRA over them with
lora_dropout, on tiny random Qwen3-Omni text models (Thinker and Talker MoE blocks)."""

import os
import sys
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch.nn.utils import parametrize
from transformers import Qwen3OmniMoeTextConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
    Qwen3OmniMoeTalkerTextSparseMoeBlock,
)

from qwen_omni.qwen3_omni import build_lora_config, load_thinker, merge_adapter, tiny_checkpoints
from qwen_omni.qwen3_omni.expert_offload import ExpertOffloader
from qwen_omni.qwen3_omni.peft_lora import apply_peft_lora
from qwen_omni.qwen3_omni.quantized_experts import (
    ExpertQuantizationConfig,
    nf4_parametrization,
    nf4_storage_bytes,
    quantize_experts,
    quantized_expert_bytes,
)
from qwen_omni.qwen3_omni.routed_lora import apply_routed_lora, register_routed_lora


HIDDEN, EXPERT_INTERMEDIATE, NUM_EXPERTS = 64, 32, 8
TARGET_PARAMETERS = ["mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
INPUT_IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def tiny_text_model(num_layers=2, experts_implementation="eager"):
    return tiny_checkpoints.tiny_moe_text_model(
        HIDDEN, EXPERT_INTERMEDIATE, 16, num_layers, NUM_EXPERTS, experts_implementation
    )


def dequantized_twin(quantized, twin):
    """`twin` (the same model built unquantized) with the 4-bit experts of `quantized` dequantized into its experts.
    (Not a deepcopy: torch's parametrize gives each module a class of its own, which a deepcopy shares.)"""
    pairs = zip(
        [m for m in quantized.modules() if nf4_parametrization(m, "gate_up_proj") is not None],
        [m for m in twin.modules() if hasattr(m, "gate_up_proj") and not parametrize.is_parametrized(m)],
        strict=True,
    )
    with torch.no_grad():
        for quantized_experts, experts in pairs:
            for name in ("gate_up_proj", "down_proj"):
                getattr(experts, name).copy_(getattr(quantized_experts, name))
    return twin


def lora_config(num_layers=2, **overrides):
    # full names: PEFT matches a parametrized (4-bit) tensor only by its module's full name
    targets = [f"layers.{layer}.{name}" for layer in range(num_layers) for name in TARGET_PARAMETERS]
    kwargs = dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], target_parameters=targets, init_lora_weights=False
    )
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


@pytest.mark.parametrize("double_quant", [False, True])
def test_expert_tensors_are_stored_in_4_bits(double_quant):
    model = tiny_text_model()
    original = model.layers[0].mlp.experts.gate_up_proj.detach().clone()
    config = ExpertQuantizationConfig(double_quant=double_quant)
    bf16_bytes = sum(
        getattr(layer.mlp.experts, name).numel() * 2
        for layer in model.layers
        for name in ("gate_up_proj", "down_proj")
    )
    assert quantize_experts(model, config) == 4
    assert quantize_experts(model, config) == 0
    expected = sum(
        nf4_storage_bytes(NUM_EXPERTS * 2 * EXPERT_INTERMEDIATE * HIDDEN, config)
        + nf4_storage_bytes(NUM_EXPERTS * HIDDEN * EXPERT_INTERMEDIATE, config)
        for _ in model.layers
    )
    assert quantized_expert_bytes(model) == expected
    # 4 bits per value plus the block scales (32 bits per 64 values, or 8 plus a 1 KiB code book when double-quantized)
    assert expected < 0.3 * bf16_bytes
    experts = model.layers[0].mlp.experts
    # quantized expert by expert, yet exactly bitsandbytes' quantization of the whole tensor (blocks never cross experts)
    import bitsandbytes.functional as bnb_functional

    codes, state = bnb_functional.quantize_4bit(
        original, blocksize=64, compress_statistics=double_quant, quant_type="nf4"
    )
    assert torch.equal(experts.parametrizations.gate_up_proj.original.reshape(-1), codes.reshape(-1))
    torch.testing.assert_close(experts.gate_up_proj, bnb_functional.dequantize_4bit(codes, state), atol=0, rtol=0)
    codes = experts.parametrizations.gate_up_proj.original
    assert codes.dtype == torch.uint8 and codes.numel() == NUM_EXPERTS * 2 * EXPERT_INTERMEDIATE * HIDDEN // 2
    assert not any(p.dtype.is_floating_point for n, p in experts.named_parameters())
    assert experts.gate_up_proj.shape == (NUM_EXPERTS, 2 * EXPERT_INTERMEDIATE, HIDDEN)


@pytest.mark.parametrize("experts_implementation", ["eager", "grouped_mm"])
def test_routed_forward_over_4bit_experts_equals_the_dequantized_bf16_forward(experts_implementation):
    model = tiny_text_model(experts_implementation=experts_implementation)
    quantize_experts(model)
    reference = dequantized_twin(model, tiny_text_model(experts_implementation=experts_implementation))
    routed = get_peft_model(model, lora_config())
    apply_routed_lora(routed)
    expected = get_peft_model(reference, lora_config())
    expected.load_state_dict(routed.state_dict(), strict=False)
    got_hidden = routed(input_ids=INPUT_IDS).last_hidden_state
    want_hidden = expected(input_ids=INPUT_IDS).last_hidden_state
    torch.testing.assert_close(got_hidden, want_hidden, atol=1e-5, rtol=1e-5)
    # the plain experts forward (no LoRA) on 4-bit experts is the dequantized one too
    with routed.disable_adapter(), expected.disable_adapter():
        torch.testing.assert_close(
            routed(input_ids=INPUT_IDS).last_hidden_state,
            expected(input_ids=INPUT_IDS).last_hidden_state,
            atol=1e-5,
            rtol=1e-5,
        )


def test_talker_moe_block_experts_quantize_too():
    config = Qwen3OmniMoeTextConfig(
        hidden_size=64,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        shared_expert_intermediate_size=32,
    )
    config._experts_implementation = "eager"

    def talker_block():
        torch.manual_seed(0)
        block = Qwen3OmniMoeTalkerTextSparseMoeBlock(config)
        for parameter in block.parameters():
            torch.nn.init.normal_(parameter, std=0.2)
        return block

    block = talker_block()
    assert quantize_experts(block) == 2
    reference = dequantized_twin(block, talker_block())
    model = get_peft_model(
        block,
        LoraConfig(r=2, target_parameters=["experts.gate_up_proj", "experts.down_proj"], init_lora_weights=False),
    )
    apply_routed_lora(model)
    expected = get_peft_model(
        reference, LoraConfig(r=2, target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    )
    expected.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(model(x), expected(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("apply_lora_impl", [apply_routed_lora, apply_peft_lora], ids=["routed", "peft"])
def test_lora_trains_on_4bit_experts_and_only_lora_gets_gradients(apply_lora_impl):
    model = tiny_text_model()
    quantize_experts(model)
    head = torch.nn.Linear(HIDDEN, 64)
    head.requires_grad_(False)
    model = get_peft_model(model, lora_config(init_lora_weights=True))
    assert apply_lora_impl(model) == 3 * 2  # router, gate_up_proj and down_proj of 2 layers
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    inputs, labels = INPUT_IDS[:, :-1], INPUT_IDS[:, 1:]
    losses = []
    for _ in range(12):
        logits = head(model(input_ids=inputs).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), labels.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
        assert with_grad and all(".lora_A." in name or ".lora_B." in name for name in with_grad)
        assert any(".experts.lora_" in name or "experts.base_layer.lora_" in name for name in with_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("apply_lora_impl", [apply_routed_lora, apply_peft_lora], ids=["routed", "peft"])
def test_lora_over_4bit_experts_stored_from_fp32_trains_under_bf16_autocast(apply_lora_impl):
    # what `Trainer` does with --bf16 on an fp32 model (and FSDP2's bf16 parameter policy does with the activations):
    # the forward runs in bf16, the custom backward outside autocast
    model = tiny_text_model()
    quantize_experts(model)
    model = get_peft_model(model, lora_config(init_lora_weights=True))
    apply_lora_impl(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model(input_ids=INPUT_IDS).last_hidden_state
    hidden.float().pow(2).mean().backward()
    expert_grads = [p.grad for name, p in model.named_parameters() if ".experts." in name and ".lora_B." in name]
    assert expert_grads and all(
        grad is not None and grad.dtype == torch.float32 and grad.abs().sum() > 0 for grad in expert_grads
    )


def test_peft_wrapper_on_4bit_experts_equals_peft_on_the_dequantized_experts_at_every_forward():
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    quantized = tiny_text_model()
    quantize_experts(quantized)
    twin = dequantized_twin(quantized, tiny_text_model())
    on_4bit = get_peft_model(quantized, lora_config())
    assert apply_peft_lora(on_4bit) == 3 * 2
    on_bf16 = get_peft_model(twin, lora_config())
    # the expert wrappers are nested as on the plain base, so the adapter's keys are the same on both
    result = set_peft_model_state_dict(on_bf16, get_peft_model_state_dict(on_4bit))
    assert not result.unexpected_keys
    experts = on_4bit.base_model.model.layers[0].mlp.experts.get_base_layer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT 0.21 warns "Could not find any LoRA parametrization" and keeps it
        with torch.no_grad():
            outputs = [on_4bit(input_ids=INPUT_IDS).last_hidden_state for _ in range(3)]
            expected = on_bf16(input_ids=INPUT_IDS).last_hidden_state
    # the LoRA parametrization is gone after each forward; only the 4-bit one is left
    assert [type(p).__name__ for p in experts.parametrizations["gate_up_proj"]] == ["NF4Experts"]
    for output in outputs:  # no update piling up from one forward to the next
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    routed = get_peft_model(dequantized_twin(quantized, tiny_text_model()), lora_config())
    set_peft_model_state_dict(routed, get_peft_model_state_dict(on_4bit))
    apply_routed_lora(routed)
    with torch.no_grad():
        torch.testing.assert_close(routed(input_ids=INPUT_IDS).last_hidden_state, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("apply_lora_impl", [apply_routed_lora, apply_peft_lora], ids=["routed", "peft"])
def test_merging_into_4bit_experts_is_refused_instead_of_dropping_the_update(apply_lora_impl):
    quantized = tiny_text_model()
    quantize_experts(quantized)
    model = get_peft_model(quantized, lora_config())
    apply_lora_impl(model)
    with pytest.raises(
        ValueError,
        match=r"Cannot merge LoRA into \w+Experts\.(gate_up|down)_proj: it is stored in 4 bits.*train/merge\.py",
    ):
        model.merge_and_unload()


def test_lora_dropout_on_routed_experts():
    model = tiny_text_model()
    config = lora_config(lora_dropout=0.1, target_modules=[])
    routed = get_peft_model(model, register_routed_lora(config, model))
    wrapper = routed.base_model.model.layers[0].mlp.experts
    assert isinstance(wrapper.lora_dropout["default"], torch.nn.Dropout)
    routed.train()
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outputs.append(routed(input_ids=INPUT_IDS).last_hidden_state)
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4
    torch.manual_seed(0)
    torch.testing.assert_close(routed(input_ids=INPUT_IDS).last_hidden_state, outputs[0])  # same seed, same mask

    # eval mode: no dropout, the same function as PEFT's own wrapper (which cannot be built with dropout)
    peft_model = get_peft_model(tiny_text_model(), lora_config(target_modules=[]))
    peft_model.load_state_dict(routed.state_dict())
    routed.eval()
    peft_model.eval()
    torch.testing.assert_close(
        routed(input_ids=INPUT_IDS).last_hidden_state,
        peft_model(input_ids=INPUT_IDS).last_hidden_state,
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="does not work with lora_dropout"):
        get_peft_model(tiny_text_model(), lora_config(lora_dropout=0.1, target_modules=[]))


def test_offload_prefetches_one_layer_ahead_on_a_fake_device():
    model = tiny_text_model(num_layers=4)
    quantize_experts(model)
    copies = []

    def fake_copy(tensor):  # a "device" that is host memory, so the forward still runs; each copy is a new tensor
        copies.append(tensor)
        return tensor.clone()

    peft_model = get_peft_model(model, lora_config(num_layers=4))
    apply_routed_lora(peft_model)
    expected = get_peft_model(dequantized_twin(model, tiny_text_model(num_layers=4)), lora_config(num_layers=4))
    expected.load_state_dict(peft_model.state_dict(), strict=False)
    offloader = ExpertOffloader(model, device="cpu", copy_to_device=fake_copy)
    peft_model.base_model.model.gradient_checkpointing_enable({"use_reentrant": False})
    peft_model.train()
    hidden = peft_model(input_ids=INPUT_IDS).last_hidden_state
    hidden.sum().backward()
    # forward 0..3 (each use starts the next layer's copy), then the checkpointed backward recomputes 3..0
    assert offloader.transfers == [0, 1, 2, 3, 1, 0]
    assert offloader.misses == 1  # only the very first layer was not copied ahead
    assert len(copies) == len(offloader.transfers) * len(offloader.host[0])
    expected.eval()
    peft_model.eval()
    torch.testing.assert_close(hidden, expected(input_ids=INPUT_IDS).last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoints.save_tiny_checkpoint(tmp_path_factory.mktemp("q4") / "base")


def test_load_in_4bit_on_cpu_quantizes_experts_while_loading(checkpoint):
    import bitsandbytes as bnb

    thinker = load_thinker(checkpoint, load_in_4bit=True)
    bf16 = load_thinker(checkpoint)
    layers = thinker.model.language_model.layers
    assert isinstance(layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    for index, layer in enumerate(layers):
        for name in ("gate_up_proj", "down_proj"):
            quantization = nf4_parametrization(layer.mlp.experts, name)
            assert quantization is not None and quantization.config.double_quant
            original = getattr(bf16.model.language_model.layers[index].mlp.experts, name)
            assert (getattr(layer.mlp.experts, name) - original).abs().max() < 0.2 * original.abs().max()
    only_experts = load_thinker(checkpoint, quantize_experts=True)
    assert isinstance(only_experts.model.language_model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert nf4_parametrization(only_experts.model.language_model.layers[0].mlp.experts, "down_proj") is not None
    with pytest.raises(ValueError, match="offload_experts=True .* needs quantize_experts"):
        load_thinker(checkpoint, offload_experts=True)
    assert load_thinker(checkpoint, quantize_experts=True, offload_experts=True) is not None  # CPU: accepted, no-op


def test_load_in_4bit_quantizes_the_towers_unless_told_not_to_and_tower_lora_trains_on_them(checkpoint, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoProcessor

    from qwen_omni.qwen3_omni import Qwen3OmniSFTCollator

    media = tiny_checkpoints.write_media(tmp_path)
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": media["audio"]},
                {"type": "image", "image": media["image"]},
                {"type": "text", "text": "What is this?"},
            ],
        },
        {"role": "assistant", "content": "A tone and a red square."},
    ]
    batch = Qwen3OmniSFTCollator(AutoProcessor.from_pretrained(checkpoint))([{"conversations": conversation}])
    base = load_thinker(checkpoint, dtype="float32")
    quantized = load_thinker(checkpoint, load_in_4bit=True, dtype="float32")
    towers_kept = load_thinker(checkpoint, load_in_4bit=True, quantize_towers=False, dtype="float32")

    def linear_kinds(model, prefix):
        return {
            type(module).__name__
            for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, torch.nn.Linear)
        }

    for prefix in ("model.audio_tower.", "model.visual."):
        assert linear_kinds(quantized, prefix) == {"Linear4bit"}
        assert linear_kinds(towers_kept, prefix) == {"Linear"}
    assert linear_kinds(towers_kept, "model.language_model.") == {"Linear4bit"}
    assert type(quantized.lm_head) is type(towers_kept.lm_head) is torch.nn.Linear

    def tower_features(model):
        with torch.no_grad():
            audio = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
            image = model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        return [output.pooler_output if hasattr(output, "pooler_output") else output for output in (audio, image)]

    # the 4-bit towers compute from the NF4 weights: close to the fp32 towers, not equal; kept towers are exact
    for exact, kept, quantized_output in zip(
        tower_features(base), tower_features(towers_kept), tower_features(quantized)
    ):
        exact, kept, quantized_output = (
            torch.cat(list(t)) if isinstance(t, (list, tuple)) else t for t in (exact, kept, quantized_output)
        )
        assert torch.equal(kept, exact)
        error = (quantized_output - exact).norm() / exact.norm()
        assert 0 < error < 0.25, error

    model = get_peft_model(quantized, build_lora_config(quantized, r=4, lora_alpha=8, towers=["audio", "vision"]))
    model(
        **{
            key: value
            for key, value in batch.items()
            if key
            in (
                "input_ids",
                "attention_mask",
                "labels",
                "input_features",
                "feature_attention_mask",
                "pixel_values",
                "image_grid_thw",
            )
        }
    ).loss.backward()
    # lora_B starts at zero, so it is the factor with a gradient at the first step
    tower_lora = {
        name: p.grad
        for name, p in model.named_parameters()
        if "lora_B" in name and (".audio_tower." in name or ".visual." in name)
    }
    assert tower_lora and all(grad is not None and grad.abs().sum() > 0 for grad in tower_lora.values())
    assert isinstance(
        model.base_model.model.model.audio_tower.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit
    )


def test_no_full_precision_expert_tensor_is_ever_assigned_while_loading(checkpoint):
    # registered inside the loading context, this hook runs after the quantizing one: it sees what the model keeps
    arrivals = []

    def spy(module, name, param):
        if name in ("gate_up_proj", "down_proj") and param is not None and param.device.type != "meta":
            arrivals.append((param.dtype, param.numel()))

    from qwen_omni.qwen3_omni.quantized_experts import quantize_experts_on_load

    with quantize_experts_on_load() as quantized_modules:
        handle = torch.nn.modules.module.register_module_parameter_registration_hook(spy)
        try:
            from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

            thinker = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(checkpoint)
        finally:
            handle.remove()
    # each of the 2 layers x 2 tensors arrived as 4-bit codes (8 experts of 32 x 32 / 16 x 32 values, 2 per byte): the
    # full-precision tensor was dropped as soon as it was built, one at a time, never kept by the model
    assert sorted((dtype, numel) for dtype, numel in arrivals) == sorted(
        [(torch.uint8, 8 * 32 * 32 // 2), (torch.uint8, 8 * 32 * 16 // 2)] * 2
    )
    assert len(quantized_modules) == 2
    assert all(nf4_parametrization(layer.mlp.experts, "gate_up_proj") for layer in thinker.model.language_model.layers)


def test_adapter_trained_on_4bit_experts_merges_onto_the_bf16_base(checkpoint, tmp_path):
    torch.manual_seed(0)
    thinker = load_thinker(checkpoint, quantize_experts=True)
    config = build_lora_config(thinker, r=4, lora_alpha=8, lora_dropout=0.1)
    model = get_peft_model(thinker, config)
    apply_routed_lora(model)  # as Qwen3OmniSFTTrainer does; it also nests the expert wrappers as on a bf16 base
    with torch.no_grad():  # an adapter the size of a briefly trained one (B starts at zero)
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0.0, 0.02)
    model.save_pretrained(tmp_path / "adapter")
    merged_dir = merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"), base_model_name_or_path=checkpoint)

    from transformers import Qwen3OmniMoeForConditionalGeneration

    merged = Qwen3OmniMoeForConditionalGeneration.from_pretrained(merged_dir).thinker.eval()
    bf16_base = load_thinker(checkpoint).eval()
    q4_base = load_thinker(checkpoint, quantize_experts=True).eval()
    on_bf16 = PeftModel.from_pretrained(
        load_thinker(checkpoint), str(tmp_path / "adapter"), config=_no_dropout(tmp_path / "adapter")
    ).eval()
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged_logits, adapted_bf16 = merged(input_ids=ids).logits, on_bf16(input_ids=ids).logits
        qlora_logits = model.eval()(input_ids=ids).logits
        quantization_error = (q4_base(input_ids=ids).logits - bf16_base(input_ids=ids).logits).abs().max()
        adapter_effect = (adapted_bf16 - bf16_base(input_ids=ids).logits).abs().max()
    # merged onto the bf16 base: exactly bf16 base + adapter (never the dequantized 4-bit weights)
    torch.testing.assert_close(merged_logits, adapted_bf16, atol=1e-4, rtol=1e-4)
    assert adapter_effect > 10 * 1e-4
    # The 4-bit model with the adapter differs from it only by the experts' 4-bit rounding: the adapter's update is the
    # same on both bases, so the gap is the base's quantization error (here 1.7e-3 on the logits) as it propagates
    # through the adapted model. Tolerance 2x that error: an adapter of this size (it moves the logits by ~0.25, 100x
    # the error) gives 1.4-1.6x over seeds 0-3; a much larger random one flips top-k routing near ties, where any
    # weight perturbation shows in full (5-20x at B ~ N(0, 0.1)).
    assert quantization_error > 1e-3
    assert (merged_logits - qlora_logits).abs().max() <= 2 * quantization_error

    # the usage code of the adapter's model card (train/push_to_hub.py), run as a Hub user would: PEFT alone, and the
    # dropout the adapter was trained with (which PEFT's parameter wrapper refuses at load) set to 0
    from qwen_omni.common.hub import build_model_card

    from omni_testing import usage_code

    code = usage_code(str(build_model_card(tmp_path / "adapter", "someone/thinker-lora")))
    namespace = {}
    exec(code.replace("someone/thinker-lora", str(tmp_path / "adapter")).replace("BASE_MODEL", checkpoint), namespace)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"].eval()(input_ids=ids).logits, adapted_bf16)


def _no_dropout(adapter_dir):
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.lora_dropout = 0.0
    return config


@pytest.mark.slow
def test_sft_script_trains_the_seed_recipe_on_4bit_experts_and_merges(checkpoint, tmp_path):
    import json
    import subprocess

    from safetensors.torch import load_file
    from script_testing import seed_recipe_run

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    out, argv = seed_recipe_run(checkpoint, tmp_path, "float32")
    result = subprocess.run(
        [sys.executable, os.path.join(repo, "train", "sft.py"), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    losses = [
        float(value) for value in __import__("re").findall(r"'loss': '([0-9.]+)'", result.stdout + result.stderr)
    ]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.2, losses
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_dropout"] == 0.1 and config["target_modules"] == [] and len(config["target_parameters"]) == 6
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(".mlp.gate." in name or ".mlp.experts." in name for name in weights)

    merged = tmp_path / "merged"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(repo, "train", "merge.py"),
            "--adapter",
            str(out),
            "--output_dir",
            str(merged),
            "--base_model",
            checkpoint,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (merged / "model.safetensors").exists()
