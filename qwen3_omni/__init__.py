"""The Qwen3-Omni wing: LoRA fine-tuning of Qwen3-Omni-30B-A3B with TRL: the Thinker (attention, MoE router and fused
experts) on conversations with audio, image and video, and the Talker for a new voice.

One concern per module:

- `arguments`: the Thinker recipes' argument dataclasses (TRL's `SFTConfig` / `ModelConfig` plus the recipe's own).
- `loading`: load the Thinker out of a full or thinker-only checkpoint, pick the experts implementation, 4-bit base.
- `quantized_experts`: NF4 storage of the fused expert tensors (bitsandbytes, per-expert blocks), quantized on load.
- `expert_offload`: frozen 4-bit experts in pinned host memory, prefetched one layer ahead of use.
- `memory_estimate`: weights / adapter / gradients / optimizer bytes on the meta device (`--estimate_memory`).
- `lora_targets`: the PEFT `LoraConfig` for the text model's attention, router and experts.
- `peft_lora`: PEFT's own router / expert LoRA wrapper, made safe on 4-bit experts (`--moe_lora_impl peft`).
- `routed_lora`: the router / expert LoRA forward run on the routed tokens only (PEFT's adapter files), with dropout.
- `expert_lora`: the one choice between the two (`--moe_lora_impl routed | peft`).
- `conversations`: conversation files in the native, LLaMA-Factory (sharegpt, OpenAI) and ms-swift forms, checked
  row by row against their media, with a report of what was refused.
- `sft_data`: the recipe's train / eval conversations with their refusal reports written to the output folder.
- `collator`: the processor-based collator (media loading, chat template, assistant-only labels, loss weights).
- `sft_trainer`: the `SFTTrainer` subclass whose loss honours per-sample weights under gradient accumulation.
- `adapter_merge`: fold an adapter (Thinker, or Talker with its new speaker) into the bf16 base, a full checkpoint.
- `talker_voice/`: the Talker's new voice, one concern per module (arguments, loading, the speaker registry, LoRA,
  the teacher-forced forward, Mimi codes of the clips, examples, keeping the existing speakers, the trainer).
- `evaluation`: the base and a fine-tune judged on the same rows (text metrics, the Talker's voice).
- `tiny_checkpoints`: tiny random Qwen3-Omni checkpoints, processors and Mimi codecs for tests and benchmarks.
"""

from .adapter_merge import merge_adapter
from .collator import Qwen3OmniSFTCollator
from .conversations import ModalityLossWeights, load_conversation_dataset
from .loading import load_thinker, resolve_experts_implementation
from .lora_targets import build_lora_config
from .sft_trainer import Qwen3OmniSFTTrainer


__all__ = [
    "ModalityLossWeights",
    "Qwen3OmniSFTCollator",
    "Qwen3OmniSFTTrainer",
    "build_lora_config",
    "load_conversation_dataset",
    "load_thinker",
    "merge_adapter",
    "resolve_experts_implementation",
]
