"""What users run on top of the wings: the `qwen-omni` console script (`cli`) and the OpenAI-compatible server
(`openai`), modelled on vLLM's `vllm/entrypoints`."""
