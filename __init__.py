# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""qwen-omni: a Qwen3 language model that speaks and listens through SNAC audio tokens.

Importing the package registers the Omni classes with transformers' Auto classes, so local checkpoints load with
`AutoModelForCausalLM` / `AutoProcessor` even without `trust_remote_code`.
"""

from .configuration_omni import OmniConfig
from .configuration_snac import SNACConfig, SNACTokenLayout
from .feature_extraction_omni import SNACFeatureExtractor
from .modeling_omni import OmniCausalLMOutputWithPast, OmniForCausalLM
from .modeling_snac import SNACAudioTokenizer
from .processing_omni import OmniProcessor


__all__ = [
    "OmniCausalLMOutputWithPast",
    "OmniConfig",
    "OmniForCausalLM",
    "OmniProcessor",
    "SNACAudioTokenizer",
    "SNACConfig",
    "SNACFeatureExtractor",
    "SNACTokenLayout",
]
