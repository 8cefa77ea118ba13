"""The Qwen3-Omni wing: LoRA fine-tuning of Qwen3-Omni's Thinker (attention, MoE router and fused experts) with TRL.

One concern per module:

- `arguments`: the recipes' argument dataclasses (TRL's `SFTConfig` / `ModelConfig` plus the recipe's own).
- `loading`: load the Thinker out of a full or thinker-only checkpoint, pick the experts implementation, 4-bit base.
- `lora_targets`: the PEFT `LoraConfig` for the text model's attention, router and experts.
- `conversations`: the conversation dataset (`{"conversations": [...]}` or TRL `messages`) and its media.
- `collator`: the processor-based collator (media loading, chat template, assistant-only labels, loss weights).
- `sft_trainer`: the `SFTTrainer` subclass whose loss honours per-sample weights under gradient accumulation.
- `adapter_merge`: fold an adapter into the base and write a full checkpoint.
"""

from .collator import Qwen3OmniSFTCollator
from .conversations import ModalityLossWeights, load_conversation_dataset
from .lora_targets import build_lora_config
from .adapter_merge import merge_adapter
from .loading import load_thinker, resolve_experts_implementation
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
