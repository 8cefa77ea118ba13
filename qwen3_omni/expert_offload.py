# Copyright 2025 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Frozen 4-bit experts in (pinned) host memory, copied to the accelerator one MoE layer ahead of use.

The 4-bit experts of Qwen3-Omni-30B-A3B are ~15 GB of the ~17 GB a QLoRA Thinker keeps on the GPU, and they are
frozen: they can live in host memory and cross the bus as they are needed. [`ExpertOffloader`] keeps, per MoE layer,
the packed codes and block scales of `gate_up_proj` / `down_proj` in pinned host memory; a forward pre-hook on each
experts module makes that layer's copy current (waiting for it if it was prefetched) and starts the copy of the layer
it predicts comes next on a side stream, so the transfer overlaps the layer's compute. Device copies of other layers
are dropped (tensors the autograd graph still holds stay alive until its backward, so train with gradient
checkpointing: then a layer's graph is rebuilt, and its experts fetched again, during the backward).

The predicted order follows the direction of use: up the stack during a forward, and down it during the backward's
recomputation under gradient checkpointing (`0, 1, ..., L-1` then `L-1, ..., 0`). A wrong guess costs a synchronous
copy, never a wrong result.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from transformers.utils import logging

from .quantized_experts import EXPERT_PARAMETER_NAMES, is_fused_experts, nf4_parametrization


logger = logging.get_logger(__name__)


def _quantized_tensor_slots(experts: nn.Module) -> list[tuple[dict, str]]:
    """(owner dict, key) of every tensor of the module's 4-bit experts: codes (a parameter) and block scales (buffers)."""
    slots = []
    for name in EXPERT_PARAMETER_NAMES:
        parametrization_list = experts.parametrizations[name]
        slots.append((parametrization_list._parameters, "original"))
        quantization = nf4_parametrization(experts, name)
        slots.extend((quantization._buffers, key) for key in quantization._buffers)
    return slots


def _get(slot: tuple[dict, str]) -> torch.Tensor:
    owner, key = slot
    return owner[key].data if isinstance(owner[key], nn.Parameter) else owner[key]


def _put(slot: tuple[dict, str], tensor: torch.Tensor) -> None:
    owner, key = slot
    if isinstance(owner[key], nn.Parameter):
        owner[key].data = tensor
    else:
        owner[key] = tensor


class ExpertOffloader:
    """Keep the 4-bit experts of `model` in host memory and stream them to `device` one layer ahead of use.

    Args:
        model (`nn.Module`): a model whose fused experts are stored in 4 bits (`quantized_experts.quantize_experts`).
        device (`torch.device`): where the experts are computed.
        copy_to_device (`Callable[[torch.Tensor], torch.Tensor]`, *optional*): how a host tensor reaches `device`;
            defaults to a non-blocking `.to(device)` on a side CUDA stream. Tests pass a fake device's copy.

    Attributes:
        transfers (`list[int]`): layer indices in the order their copies were started.
        misses (`int`): uses that found their layer not copied ahead (a synchronous copy).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        copy_to_device: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.experts = [
            module
            for module in model.modules()
            if is_fused_experts(module) and nf4_parametrization(module, EXPERT_PARAMETER_NAMES[0]) is not None
        ]
        if not self.experts:
            raise ValueError("offload_experts needs fused experts stored in 4 bits; this model has none.")
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if copy_to_device is None and self.device.type == "cuda" else None
        self.copy_to_device = copy_to_device or partial(torch.Tensor.to, device=self.device, non_blocking=True)
        self.slots = [_quantized_tensor_slots(module) for module in self.experts]
        pin = self.device.type == "cuda" and copy_to_device is None
        self.host = [
            [(_get(slot).cpu().pin_memory() if pin else _get(slot).cpu()) for slot in slots] for slots in self.slots
        ]
        for slots, tensors in zip(self.slots, self.host):
            for slot, tensor in zip(slots, tensors):
                _put(slot, tensor)
        self.resident: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}
        self.transfers: list[int] = []
        self.misses = 0
        self._previous: int | None = None
        self._direction = 1
        # The hook sits on the MoE block that owns the experts: the routed LoRA wrapper computes the experts without
        # calling the experts module itself
        index_of = {id(module): index for index, module in enumerate(self.experts)}
        for block in model.modules():
            experts = getattr(block, "experts", None)
            experts = experts.get_base_layer() if hasattr(experts, "get_base_layer") else experts
            index = index_of.get(id(experts))
            if index is not None:
                block.register_forward_pre_hook(partial(self._before_forward, index))
        logger.info(f"Offloading the 4-bit experts of {len(self.experts)} MoE layers to host memory.")

    def _start_copy(self, index: int) -> None:
        self.transfers.append(index)
        if self.stream is None:
            self.resident[index] = ([self.copy_to_device(tensor) for tensor in self.host[index]], None)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            copies = [self.copy_to_device(tensor) for tensor in self.host[index]]
            event = torch.cuda.Event()
            event.record(self.stream)
        self.resident[index] = (copies, event)

    def _next_index(self, index: int) -> int | None:
        for step in (self._direction, -self._direction):
            if 0 <= index + step < len(self.experts):
                return index + step
        return None

    def _before_forward(self, index: int, module: nn.Module, args) -> None:
        if self._previous is not None and index != self._previous:
            self._direction = 1 if index > self._previous else -1
        self._previous = index
        if index not in self.resident:
            self.misses += 1
            self._start_copy(index)
        copies, event = self.resident[index]
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in copies:
                tensor.record_stream(current)
        for slot, tensor in zip(self.slots[index], copies):
            _put(slot, tensor)
        upcoming = self._next_index(index)
        for other in [other for other in self.resident if other not in (index, upcoming)]:
            del self.resident[other]
            for slot, tensor in zip(self.slots[other], self.host[other]):
                _put(slot, tensor)
        if upcoming is not None and upcoming not in self.resident:
            self._start_copy(upcoming)
