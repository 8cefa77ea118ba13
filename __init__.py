# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""qwen-omni: a Qwen3 language model that speaks and listens through SNAC audio tokens.

`import qwen_omni` loads only the torch-free configurations (and registers them with `AutoConfig`); the model, codec
and processor are imported on first use (`from qwen_omni import OmniForCausalLM`), and importing them registers them
with transformers' Auto classes, so local checkpoints then load with `AutoModelForCausalLM` / `AutoProcessor` even
without `trust_remote_code` ([`register_auto_classes`] does all of it at once). The Qwen3-Omni wing
(`qwen_omni.qwen3_omni`) thus never loads an Omni model file.
"""

import importlib
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig

from .configuration_omni import OmniConfig
from .configuration_snac import SNACConfig, SNACTokenLayout


if TYPE_CHECKING:
    from .feature_extraction_omni import SNACFeatureExtractor
    from .modeling_omni import OmniCausalLMOutputWithPast, OmniForCausalLM
    from .modeling_snac import SNACAudioTokenizer
    from .processing_omni import OmniProcessor

AutoConfig.register(OmniConfig.model_type, OmniConfig, exist_ok=True)
AutoConfig.register(SNACConfig.model_type, SNACConfig, exist_ok=True)

# public name -> the module that defines it (imported on first access)
_LAZY_ATTRIBUTES = {
    "OmniCausalLMOutputWithPast": "modeling_omni",
    "OmniForCausalLM": "modeling_omni",
    "SNACAudioTokenizer": "modeling_snac",
    "SNACFeatureExtractor": "feature_extraction_omni",
    "OmniProcessor": "processing_omni",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__), name)
    globals()[name] = value
    return value


def register_auto_classes() -> None:
    """Register the Omni model, codec, feature extractor and processor with transformers' Auto classes."""
    for module in sorted(set(_LAZY_ATTRIBUTES.values())):
        importlib.import_module(f".{module}", __name__)


__all__ = [
    "OmniCausalLMOutputWithPast",
    "OmniConfig",
    "OmniForCausalLM",
    "OmniProcessor",
    "SNACAudioTokenizer",
    "SNACConfig",
    "SNACFeatureExtractor",
    "SNACTokenLayout",
    "register_auto_classes",
]
