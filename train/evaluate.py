"""Evaluate an Omni checkpoint (or a voice LoRA adapter) on speech clips: a JSON report and PNG plots.

    python train/evaluate.py --model out/nova/merged --dataset data/voice_clips --output_dir out/nova/eval
    python train/evaluate.py --model out/nova --dataset data/voice_clips --transcriber openai/whisper-small

Writes OUTPUT_DIR/eval_results.json (ASR WER/CER, intelligibility WER/CER of the model's own speech, codec mel
distance and SI-SDR, per-modality loss / token accuracy / perplexity), training_curves.png and spectrograms.png.
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from qwen_omni.omni.evaluation import evaluate_model


@dataclass
class EvaluateArguments:
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


def main(args: EvaluateArguments) -> dict:
    output_dir = args.output_dir or f"{args.model.rstrip('/')}/eval"
    return evaluate_model(
        args.model, args.dataset, output_dir, transcriber=args.transcriber, max_clips=args.max_clips,
        asr_max_new_tokens=args.asr_max_new_tokens, tts_length_factor=args.tts_length_factor,
        num_spectrograms=args.num_spectrograms, speaker=args.speaker, device=args.device, seed=args.seed,
    )


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses()
    main(arguments)
