"""The OpenAI-compatible speech server (`qwen-omni serve`): protocol models, the embedded batching engine, the
speech and transcription services and the FastAPI app."""
