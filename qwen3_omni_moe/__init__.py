"""LoRA fine-tuning of Qwen3-Omni's Thinker (attention, MoE router and fused experts) with TRL.

One concern per module:

- `modeling`: load the Thinker out of a full or thinker-only checkpoint, pick the experts implementation, 4-bit base.
- `lora`: the PEFT `LoraConfig` for the text model's attention, router and experts.
- `data`: the conversation dataset (`{"conversations": [...]}` or TRL `messages`) and its media.
- `collator`: the processor-based collator (media loading, chat template, assistant-only labels, loss weights).
- `trainer`: the `SFTTrainer` subclass whose loss honours per-sample weights under gradient accumulation.
- `merge`: fold an adapter into the base and write a full checkpoint.
"""

from .collator import Qwen3OmniSFTCollator
from .data import ModalityLossWeights, load_conversation_dataset
from .lora import build_lora_config
from .merge import merge_adapter
from .modeling import load_thinker, resolve_experts_implementation
from .trainer import Qwen3OmniSFTTrainer


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
