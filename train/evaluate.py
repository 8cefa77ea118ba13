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

import argparse
import logging
import sys
from dataclasses import dataclass, field

from transformers import AutoConfig, HfArgumentParser

from qwen_omni.omni.evaluation import evaluate_model
from qwen_omni.qwen3_omni.arguments import Qwen3OmniModelConfig
from qwen_omni.qwen3_omni.evaluation import DEFAULT_ASR_PROMPT, evaluate_qwen3_omni


@dataclass
class EvaluateArguments:
    """The Omni evaluation's arguments."""

    model: str = field(metadata={"help": "Omni checkpoint folder, LoRA adapter folder or Hub id."})
    dataset: str = field(metadata={"help": "Folder with metadata.jsonl / metadata.csv (audio, text, speaker)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where to write the report (default MODEL/eval)."})
    transcriber: str | None = field(
        default=None, metadata={"help": "ASR model (id or folder) for the generated speech; default the model itself."}
    )
    max_clips: int | None = field(default=None, metadata={"help": "Evaluate only the first N clips."})
    asr_max_new_tokens: int = field(default=64, metadata={"help": "Token budget of each transcript."})
    tts_length_factor: float = field(default=1.5, metadata={"help": "Speech budget: this times the reference length."})
    num_spectrograms: int = field(default=3, metadata={"help": "Clips shown in spectrograms.png."})
    speaker: str | None = field(default=None, metadata={"help": "Speaker name for clips without one."})
    device: str = field(default="cpu", metadata={"help": "torch device."})
    seed: int = field(default=0, metadata={"help": "Seed of speech sampling."})


@dataclass
class Qwen3OmniEvaluateArguments:
    """The Qwen3-Omni evaluation's own arguments (the model and its loading flags are `Qwen3OmniModelConfig`'s)."""

    dataset_name: str = field(
        metadata={
            "help": "Evaluation rows: any conversation file/folder/Hub id train/sft.py "
            "reads, or an audio dataset with an audio and a text column."
        }
    )
    output_dir: str = field(metadata={"help": "Where eval_results.json, predictions.jsonl and the plot go."})
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "The fine-tune: a LoRA adapter folder (train/sft.py, train/talker_voice_sft.py) or a merged model "
            "folder (train/merge.py). Without it the base alone is evaluated (both columns equal)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    split: str = field(default="test", metadata={"help": "Split of a datasets source."})
    task: str = field(
        default="auto",
        metadata={
            "help": "Score every row as asr, text, exact_match or "
            "multiple_choice; auto: audio rows asr, a letter reference "
            "multiple_choice, other text."
        },
    )
    dataset_format: str = field(default="auto", metadata={"help": "Conversation format (see train/sft.py)."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of an audio dataset."})
    text_column: str = field(default="text", metadata={"help": "Transcript column of an audio dataset."})
    asr_prompt: str = field(default=DEFAULT_ASR_PROMPT, metadata={"help": "User text sent with each clip."})
    system_prompt: str | None = field(default=None, metadata={"help": "System turn for rows that have none."})
    media_dir: str | None = field(default=None, metadata={"help": "Folder relative media paths are resolved in."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N usable rows only."})
    batch_size: int = field(default=8, metadata={"help": "Rows generated together."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token budget of each answer (thinking included)."})
    language: str = field(default="en", metadata={"help": "en: Whisper's English normaliser; else its basic one."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: where the model loads)."})
    evaluate_voice: str = field(
        default="auto", metadata={"help": "auto (when the checkpoint has a Talker), true, false."}
    )
    speaker: str | None = field(
        default=None,
        metadata={"help": "Speaker under test (default: the voice adapter's, or the fine-tune's new one)."},
    )
    base_speaker: str | None = field(
        default=None,
        metadata={
            "help": "Base speaker the tested voice is compared with (default: the same, or the one it started from)."
        },
    )
    voice_samples: int = field(default=16, metadata={"help": "Eval texts each speaker speaks."})
    talker_max_new_tokens: int = field(default=1024, metadata={"help": "Codec frames per spoken text at most."})
    transcriber: str | None = field(
        default=None, metadata={"help": "An ASR model (e.g. openai/whisper-small) that also transcribes the speech."}
    )
    speaker_encoder: str | None = field(
        default=None,
        metadata={"help": "Speaker-verification model (e.g. microsoft/wavlm-base-plus-sv) for speaker similarity."},
    )
    speaker_reference: str | None = field(
        default=None, metadata={"help": "Folder of the tested speaker's reference clips (every audio file in it)."}
    )


def checkpoint_model_type(argv: list[str]) -> str | None:
    """`model_type` of the checkpoint named by `--model_name_or_path` or `--model`."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--model_name_or_path", "--model", dest="model")
    known, _ = peek.parse_known_args(argv)
    return AutoConfig.from_pretrained(known.model).model_type if known.model else None


def main(args: EvaluateArguments) -> dict:
    """The Omni evaluation."""
    output_dir = args.output_dir or f"{args.model.rstrip('/')}/eval"
    return evaluate_model(
        args.model,
        args.dataset,
        output_dir,
        transcriber=args.transcriber,
        max_clips=args.max_clips,
        asr_max_new_tokens=args.asr_max_new_tokens,
        tts_length_factor=args.tts_length_factor,
        num_spectrograms=args.num_spectrograms,
        speaker=args.speaker,
        device=args.device,
        seed=args.seed,
    )


def main_qwen3_omni(args: Qwen3OmniEvaluateArguments, model_args: Qwen3OmniModelConfig) -> dict:
    """The Qwen3-Omni evaluation."""
    if args.evaluate_voice not in ("auto", "true", "false"):
        raise ValueError(f"--evaluate_voice {args.evaluate_voice!r}: use auto, true or false.")
    return evaluate_qwen3_omni(
        model_args.model_name_or_path,
        args.dataset_name,
        args.output_dir,
        adapter=args.adapter,
        split=args.split,
        dataset_config=args.dataset_config,
        task=args.task,
        dataset_format=args.dataset_format,
        audio_column=args.audio_column,
        text_column=args.text_column,
        asr_prompt=args.asr_prompt,
        system_prompt=args.system_prompt,
        media_dir=args.media_dir,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        language=args.language,
        dtype=model_args.dtype or "auto",
        device=args.device,
        quantization_kwargs=model_args.quantization_kwargs(),
        attn_implementation=model_args.attn_implementation,
        evaluate_voice_of_talker=None if args.evaluate_voice == "auto" else args.evaluate_voice == "true",
        speaker=args.speaker,
        base_speaker=args.base_speaker,
        voice_samples=args.voice_samples,
        talker_max_new_tokens=args.talker_max_new_tokens,
        transcriber=args.transcriber,
        speaker_encoder=args.speaker_encoder,
        speaker_reference=args.speaker_reference,
    )


def run(argv: list[str]) -> dict:
    # the library's progress lines (rows read, answers read back from the cache) at INFO
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("qwen_omni").setLevel(logging.INFO)
    if checkpoint_model_type(argv) == "omni":
        renamed = {"--model_name_or_path": "--model", "--dataset_name": "--dataset"}
        argv = [renamed.get(arg.split("=")[0], arg.split("=")[0]) + (arg[len(arg.split("=")[0]) :]) for arg in argv]
        (arguments,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(args=argv)
        return main(arguments)
    parser = HfArgumentParser((Qwen3OmniEvaluateArguments, Qwen3OmniModelConfig))
    return main_qwen3_omni(*parser.parse_args_into_dataclasses(args=argv))


if __name__ == "__main__":
    run(sys.argv[1:])
