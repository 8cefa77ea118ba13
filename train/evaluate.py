"""Evaluate a fine-tune against its base: one command for both model families, chosen by the checkpoint's config.

Qwen3-Omni (a `qwen3_omni_moe` / `qwen3_omni_moe_thinker` checkpoint; see `qwen3_omni/evaluation.py`):

    python train/evaluate.py --model_name_or_path Qwen/Qwen3-Omni-30B-A3B-Instruct --adapter out/sft \
        --dataset_name openslr/librispeech_asr --dataset_config clean --split test --output_dir out/eval

writes OUTPUT_DIR/eval_results.json (base, fine-tune, difference, per-task counts, model-index), predictions.jsonl,
comparison.png, and for a model with a Talker the voice's intelligibility and speaker similarity (speech/*.wav).
`--load_in_4bit`, `--dtype` and the other loading flags are train/sft.py's.

Omni (a checkpoint whose config has `model_type == "omni"`; see `omni/evaluation.py`):

    python train/evaluate.py --model out/nova/merged --dataset data/voice_clips --output_dir out/nova/eval

writes OUTPUT_DIR/eval_results.json (ASR WER/CER, intelligibility of the model's own speech, codec mel distance and
SI-SDR, per-modality loss / token accuracy / perplexity), training_curves.png and spectrograms.png.
`--model_name_or_path` / `--dataset_name` are accepted for `--model` / `--dataset`.
"""

import logging
import sys

from transformers import HfArgumentParser

from qwen_omni.common.launching import checkpoint_model_type
from qwen_omni.omni.evaluation import EvaluateArguments, evaluate_model
from qwen_omni.qwen3_omni.arguments import Qwen3OmniEvaluateArguments, Qwen3OmniModelConfig
from qwen_omni.qwen3_omni.evaluation import evaluate_qwen3_omni


def main(args: EvaluateArguments) -> dict:
    """The Omni evaluation."""
    return evaluate_model(args.model, args.dataset, args.report_dir(), **args.evaluation_kwargs())


def main_qwen3_omni(args: Qwen3OmniEvaluateArguments, model_args: Qwen3OmniModelConfig) -> dict:
    """The Qwen3-Omni evaluation."""
    return evaluate_qwen3_omni(
        model_args.model_name_or_path, args.dataset_name, args.output_dir, **args.evaluation_kwargs(model_args)
    )


def run(argv: list[str]) -> dict:
    # the library's progress lines (rows read, answers read back from the cache) at INFO
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("qwen_omni").setLevel(logging.INFO)
    if checkpoint_model_type(argv, model_flags=("--model_name_or_path", "--model")) == "omni":
        (arguments,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(
            args=EvaluateArguments.rename_flags(argv)
        )
        return main(arguments)
    parser = HfArgumentParser((Qwen3OmniEvaluateArguments, Qwen3OmniModelConfig))
    return main_qwen3_omni(*parser.parse_args_into_dataclasses(args=argv))


if __name__ == "__main__":
    run(sys.argv[1:])
