"""The shared floor under both wings (`omni/`, `qwen3_omni/`): audio I/O, clip tables and skip reasons, codec-cache
keys, Hub publishing, launching, LoRA arguments and the expert-LoRA dispatch, the loss and metric rules. It imports
the root remote code and nothing above it; the wings import it and never each other.
"""
