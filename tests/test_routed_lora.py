"""Routed-token LoRA (qwen3_omni_moe/routed_lora.py) against PEFT 0.21's own `lora.ParamWrapper`, on a tiny random
Qwen3-Omni thinker text model: equal outputs and LoRA gradients (fp32), identical adapter state dicts that load
either way, equal merges, rank patterns, disabled adapters, the PEFT fallback, and no `W + dW` expert stack."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import layer as peft_lora_layer
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel

from qwen_omni.qwen3_omni import routed_lora, tiny_checkpoints
from qwen_omni.qwen3_omni.routed_lora import apply_routed_lora


NUM_LAYERS, NUM_EXPERTS, HIDDEN, EXPERT_INTERMEDIATE = 2, 8, 32, 16
TARGET_PARAMETERS = ["mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def tiny_text_model(experts_implementation: str) -> Qwen3OmniMoeThinkerTextModel:
    return tiny_checkpoints.tiny_moe_text_model(
        HIDDEN, EXPERT_INTERMEDIATE, 8, NUM_LAYERS, NUM_EXPERTS, experts_implementation
    )


def lora_config(**overrides) -> LoraConfig:
    kwargs = dict(
        r=3,  # not a multiple of 4: exercises the rank padding of the grouped_mm path
        lora_alpha=6,
        target_modules=["q_proj", "v_proj"],
        target_parameters=TARGET_PARAMETERS,
        init_lora_weights=False,  # random A and B: the adapter changes every output
    )
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def peft_and_routed(experts_implementation: str, **config_overrides):
    peft_model = get_peft_model(tiny_text_model(experts_implementation), lora_config(**config_overrides))
    routed_model = copy.deepcopy(peft_model)
    assert apply_routed_lora(routed_model) == 3 * NUM_LAYERS  # router, gate_up_proj, down_proj per layer
    assert apply_routed_lora(routed_model) == 0
    return peft_model, routed_model


INPUT_IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))


def forward_backward(model):
    model.zero_grad(set_to_none=True)
    hidden = model(input_ids=INPUT_IDS).last_hidden_state
    (hidden * torch.linspace(-1, 1, hidden.numel()).view_as(hidden)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return hidden.detach(), grads


@pytest.mark.parametrize("experts_implementation", ["eager", "grouped_mm"])
def test_outputs_and_lora_gradients_equal_peft(experts_implementation):
    peft_model, routed_model = peft_and_routed(experts_implementation)
    experts = routed_model.base_model.model.layers[0].mlp.experts
    assert type(experts) is routed_lora.ParamWrapper and experts.parameter_name == "down_proj"
    assert type(experts.base_layer) is routed_lora.ParamWrapper and experts.base_layer.parameter_name == "gate_up_proj"
    assert type(routed_model.base_model.model.layers[0].mlp.gate) is routed_lora.ParamWrapper

    peft_hidden, peft_grads = forward_backward(peft_model)
    routed_hidden, routed_grads = forward_backward(routed_model)
    with peft_model.disable_adapter():
        base_hidden = peft_model(input_ids=INPUT_IDS).last_hidden_state
    assert (peft_hidden - base_hidden).abs().max() > 1e-2  # the adapter matters, so equality below means something
    torch.testing.assert_close(routed_hidden, peft_hidden, rtol=1e-5, atol=1e-5)
    assert routed_grads.keys() == peft_grads.keys()
    assert any("experts.lora_A" in name for name in routed_grads)
    assert any("gate.lora_B" in name for name in routed_grads)
    assert all("lora_" in name for name in routed_grads)  # the base stays frozen
    for name in peft_grads:
        torch.testing.assert_close(routed_grads[name], peft_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def saved_expert_stacks(model) -> int:
    """How many non-parameter storages as large as a whole expert stack autograd saves (e.g. `W + dW`, or slices of
    it); every activation of this tiny model is far smaller."""
    stack_bytes = NUM_EXPERTS * HIDDEN * EXPERT_INTERMEDIATE * 4
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    stacks = set()

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.nbytes() >= stack_bytes and storage.data_ptr() not in parameter_storages:
            stacks.add(storage.data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=INPUT_IDS).last_hidden_state.sum().backward()
    return len(stacks)


@pytest.mark.parametrize("experts_implementation", ["eager", "grouped_mm"])
def test_no_expert_weight_stack_is_materialised(experts_implementation):
    peft_model, routed_model = peft_and_routed(experts_implementation)
    assert saved_expert_stacks(peft_model) > 0  # PEFT's wrapper saves W + dW for backward
    assert saved_expert_stacks(routed_model) == 0
    experts = routed_model.base_model.model.layers[0].mlp.experts.get_base_layer()
    assert experts.gate_up_proj.grad is None and not hasattr(experts, "parametrizations")


def test_adapter_keys_identical_and_load_either_way(tmp_path):
    peft_model, routed_model = peft_and_routed("grouped_mm")
    peft_state = get_peft_model_state_dict(peft_model)
    routed_state = get_peft_model_state_dict(routed_model)
    assert {k: v.shape for k, v in routed_state.items()} == {k: v.shape for k, v in peft_state.items()}
    assert "base_model.model.layers.0.mlp.experts.base_layer.lora_A.weight" in routed_state  # gate_up_proj
    assert routed_state["base_model.model.layers.0.mlp.experts.lora_B.weight"].shape == (HIDDEN, 3 * NUM_EXPERTS)
    expected, _ = forward_backward(peft_model)

    routed_model.save_pretrained(tmp_path / "routed")
    loaded = PeftModel.from_pretrained(tiny_text_model("grouped_mm"), tmp_path / "routed")
    assert not any(type(m) is routed_lora.ParamWrapper for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=INPUT_IDS).last_hidden_state, expected, rtol=1e-5, atol=1e-5)

    peft_model.save_pretrained(tmp_path / "peft")
    loaded = PeftModel.from_pretrained(tiny_text_model("eager"), tmp_path / "peft", is_trainable=True)
    assert apply_routed_lora(loaded) == 3 * NUM_LAYERS
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=INPUT_IDS).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_merge_and_unload_equals_routed_adapter():
    peft_model, routed_model = peft_and_routed("grouped_mm")
    with torch.no_grad():
        expected = routed_model(input_ids=INPUT_IDS).last_hidden_state
        merged = routed_model.merge_and_unload()
        assert not any(isinstance(m, peft_lora_layer.LoraLayer) for m in merged.modules())
        torch.testing.assert_close(merged(input_ids=INPUT_IDS).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
        peft_merged = peft_model.merge_and_unload()
        for (name, merged_param), peft_param in zip(merged.named_parameters(), peft_merged.parameters()):
            torch.testing.assert_close(merged_param, peft_param, msg=name)


def test_expert_rank_pattern_and_disabled_adapter():
    # for `target_parameters` PEFT matches the patterns against the parameter's name, not the module's
    rank_pattern = {"mlp.experts.gate_up_proj": 4, "mlp.experts.down_proj": 2}
    alpha_pattern = {"mlp.gate.weight": 2}
    peft_model, routed_model = peft_and_routed("eager", rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    experts = routed_model.base_model.model.layers[1].mlp.experts
    assert experts.lora_A["default"].weight.shape == (2 * NUM_EXPERTS, EXPERT_INTERMEDIATE)
    assert experts.base_layer.lora_B["default"].weight.shape == (2 * EXPERT_INTERMEDIATE, 4 * NUM_EXPERTS)
    gate = routed_model.base_model.model.layers[1].mlp.gate
    assert gate.lora_A["default"].weight.shape == (3, HIDDEN) and gate.scaling["default"] == 2 / 3
    peft_hidden, peft_grads = forward_backward(peft_model)
    routed_hidden, routed_grads = forward_backward(routed_model)
    torch.testing.assert_close(routed_hidden, peft_hidden, rtol=1e-5, atol=1e-5)
    for name in peft_grads:
        torch.testing.assert_close(routed_grads[name], peft_grads[name], rtol=1e-5, atol=1e-5, msg=name)

    with torch.no_grad(), routed_model.disable_adapter():
        disabled = routed_model(input_ids=INPUT_IDS).last_hidden_state
        plain = tiny_text_model("eager")(input_ids=INPUT_IDS).last_hidden_state
    torch.testing.assert_close(disabled, plain)


def test_two_active_adapters_sum_as_in_peft():
    models = peft_and_routed("grouped_mm")
    for model in models:
        torch.manual_seed(2)
        model.add_adapter("second", lora_config(r=2))
        model.base_model.set_adapter(["default", "second"])
    assert apply_routed_lora(models[1]) == 0  # PEFT added the adapter to the existing (converted) wrappers
    (peft_hidden, peft_grads), (routed_hidden, routed_grads) = map(forward_backward, models)
    assert any(".second." in name for name in routed_grads)
    torch.testing.assert_close(routed_hidden, peft_hidden, rtol=1e-5, atol=1e-5)
    for name in peft_grads:
        torch.testing.assert_close(routed_grads[name], peft_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_unsupported_experts_implementation_falls_back_to_peft(caplog):
    peft_model, routed_model = peft_and_routed("batched_mm")
    with torch.no_grad():
        expected = peft_model(input_ids=INPUT_IDS).last_hidden_state
        got = routed_model(input_ids=INPUT_IDS).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="experts_implementation in .*'batched_mm'"):
        routed_lora.routed_lora_experts_forward(
            routed_model.base_model.model.layers[0].mlp.experts.get_base_layer(),
            torch.zeros(1, HIDDEN),
            torch.zeros(1, 2, dtype=torch.long),
            torch.ones(1, 2),
            lora={"gate_up_proj": [], "down_proj": []},
        )
