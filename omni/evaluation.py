# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Evaluation of an Omni checkpoint on (audio, transcript, speaker) clips: a JSON report and PNG plots.

- speech recognition: WER / CER of the model's transcripts (`apply_transcription_request` + `generate`);
- intelligibility of its speech: the model speaks each transcript, a transcriber (the model itself by default, or
  any transformers ASR pipeline model) transcribes it back, and WER / CER are measured against the text;
- codec reconstruction: log-mel distance and SI-SDR of encode -> decode of the reference clips;
- teacher-forced: per-modality loss, token accuracy and perplexity on the TTS and ASR sequences of the clips;
- plots: training curves from `trainer_state.json`, spectrograms of generated against reference speech.

WER and CER use jiwer directly, after Whisper's English text normalisation (`common.metrics.error_rates`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

from ..common.audio import read_audio, resample
from ..common.clips import VoiceClip, read_clips
from ..common.metrics import error_rates, normalize_text  # noqa: F401  (re-exported: the Omni side's names)
from ..common.speech_judges import PipelineTranscriber
from ..configuration_omni import IGNORE_INDEX, SNACTokenLayout
from ..modeling_omni import OmniForCausalLM
from ..processing_omni import OmniProcessor
from .trainer import modality_token_metrics, next_token_statistics


logger = logging.get_logger(__name__)


@dataclass
class EvaluateArguments:
    """The Omni evaluation's arguments (`train/evaluate.py` on a `model_type: omni` checkpoint)."""

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

    # the Qwen3-Omni evaluation's names for the two, so that one command line serves both families
    FLAG_ALIASES = {"--model_name_or_path": "--model", "--dataset_name": "--dataset"}

    @classmethod
    def rename_flags(cls, argv: list[str]) -> list[str]:
        """`argv` with `--model_name_or_path` / `--dataset_name` (also in `--flag=value` form) renamed."""
        renamed = []
        for arg in argv:
            flag, separator, value = arg.partition("=")
            renamed.append(cls.FLAG_ALIASES.get(flag, flag) + separator + value)
        return renamed

    def report_dir(self) -> str:
        """`--output_dir`, by default `MODEL/eval`."""
        return self.output_dir or f"{self.model.rstrip('/')}/eval"

    def evaluation_kwargs(self) -> dict:
        """`evaluate_model`'s keyword arguments: every field but the model, dataset and output folder."""
        positional = ("model", "dataset", "output_dir")
        return {name: value for name, value in dataclasses.asdict(self).items() if name not in positional}


# ---------------------------------------------------------------------------------------------------- code metrics
def code_perplexities(codes_by_codebook: Sequence[torch.Tensor], codebook_size: int) -> list[float]:
    """
    Perplexity of each codebook's code distribution, `exp(entropy)` of the code histogram (natural log): the number
    of equally used codes with the same entropy. 1 means one constant code; `codebook_size` means all codes equally.
    """
    perplexities = []
    for codes in codes_by_codebook:
        counts = torch.bincount(torch.as_tensor(codes).flatten().long(), minlength=codebook_size).double()
        if counts.sum() == 0:
            raise ValueError("Cannot measure the code perplexity of a codebook without codes.")
        probabilities = counts[counts > 0] / counts.sum()
        perplexities.append(float(torch.exp(-(probabilities * probabilities.log()).sum())))
    return perplexities


def layout_code_perplexities(audio_ids: Iterable[Sequence[int]], layout: SNACTokenLayout) -> list[float]:
    """[`code_perplexities`] of clips given as audio token ids of `layout` (e.g. prepared rows' `audio_codes` with
    a layout of `audio_token_offset=0`), one value per codebook, coarsest first."""
    codes_by_codebook: list[list[torch.Tensor]] = [[] for _ in range(layout.num_codebooks)]
    for ids in audio_ids:
        for level, codes in enumerate(layout.ids_to_codes(torch.as_tensor(list(ids), dtype=torch.long))):
            codes_by_codebook[level].append(codes)
    return code_perplexities([torch.cat(codes) for codes in codes_by_codebook], layout.codebook_size)


# ---------------------------------------------------------------------------------------------------- audio metrics
def si_sdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-8) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (both signals zero-meaned, trimmed to the shorter)."""
    length = min(len(reference), len(estimate))
    reference = reference[:length] - reference[:length].mean()
    estimate = estimate[:length] - estimate[:length].mean()
    scale = np.dot(estimate, reference) / (np.dot(reference, reference) + eps)
    target = scale * reference
    noise = estimate - target
    return float(10 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


def log_mel(waveform: np.ndarray, sampling_rate: int, n_mels: int = 80) -> torch.Tensor:
    """`(n_mels, frames)` log10 mel spectrogram (1024-point FFT, hop 256)."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sampling_rate, n_fft=1024, hop_length=256, n_mels=n_mels)
    return torch.log10(mel(torch.as_tensor(waveform, dtype=torch.float32)).clamp(min=1e-5))


def mel_distance(reference: np.ndarray, estimate: np.ndarray, sampling_rate: int) -> float:
    """Mean absolute difference of log10 mel spectrograms over the common frames."""
    ref, est = log_mel(reference, sampling_rate), log_mel(estimate, sampling_rate)
    frames = min(ref.shape[-1], est.shape[-1])
    return float((ref[:, :frames] - est[:, :frames]).abs().mean())


def codec_reconstruction(processor: OmniProcessor, references: list[np.ndarray]) -> dict:
    """Mel distance and SI-SDR of the codec's encode -> decode of each reference (at the codec's rate)."""
    rate = processor.sampling_rate
    mels, sdrs = [], []
    for waveform in references:
        decoded = processor.ids_to_audio(processor.audio_to_ids(waveform, sampling_rate=rate)[0])
        mels.append(mel_distance(waveform, decoded, rate))
        sdrs.append(si_sdr(waveform, decoded))
    return {"mel_distance": float(np.mean(mels)), "si_sdr": float(np.mean(sdrs)), "num_clips": len(references)}


# ---------------------------------------------------------------------------------------------------- teacher forcing
@torch.no_grad()
def teacher_forced_metrics(
    model: OmniForCausalLM, processor: OmniProcessor, clips: list[VoiceClip], audio_ids: list[list[int]]
) -> dict:
    """
    Loss, top-1 token accuracy and perplexity of each modality's targets on the clips' sequences: the audio tokens
    (and audio end) of the TTS sequences, the transcript tokens (and text end) of the ASR sequences (the statistics of
    the Trainer's evaluation metrics, [`~omni.trainer.next_token_statistics`]).
    """
    statistics = []
    for clip, ids in zip(clips, audio_ids):
        for sequence, prompt_length in (
            (
                processor.tts_sequence_ids(clip.text, ids, speaker=clip.speaker),
                len(processor.tts_prompt_ids(clip.text, speaker=clip.speaker)),
            ),
            (processor.asr_sequence_ids(ids, clip.text), len(processor.asr_prompt_ids(ids))),
        ):
            input_ids = torch.tensor([sequence], device=model.device)
            labels = input_ids.masked_fill(
                torch.arange(input_ids.shape[1], device=model.device) < prompt_length, IGNORE_INDEX
            )
            logits = model(input_ids=input_ids).logits
            statistics.append(next_token_statistics(logits, labels, model.config).reshape(-1, 4).cpu())
    metrics = modality_token_metrics(torch.cat(statistics))
    return {f"{name}_{key}": value for name in ("audio", "text") for key, value in metrics[name].items()}


# ---------------------------------------------------------------------------------------------------- generation
def _new_tokens(output: torch.Tensor, prompt_length: int) -> torch.Tensor:
    return output[:, prompt_length:]


def _as_text(processor: OmniProcessor, decoded, ids: torch.Tensor) -> str:
    # a model that answers with speech instead of words has transcribed nothing
    return decoded if isinstance(decoded, str) else processor.decode_text(ids, skip_special_tokens=True)


@torch.no_grad()
def transcribe_with_omni(
    model,
    processor: OmniProcessor,
    waveforms: list[np.ndarray],
    sampling_rate: int,
    max_new_tokens: int,
    **generate_kwargs,
) -> list[str]:
    """Transcripts of waveforms by the Omni model (`apply_transcription_request` + greedy `generate`)."""
    texts = []
    for waveform in waveforms:
        inputs = processor.apply_transcription_request(waveform, sampling_rate=sampling_rate).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
        new = _new_tokens(output, inputs["input_ids"].shape[1])
        decoded = processor.batch_decode(new, skip_special_tokens=True)[0]
        texts.append(_as_text(processor, decoded, new[0]).strip())
    return texts


@torch.no_grad()
def transcribe_audio_ids(
    model, processor: OmniProcessor, audio_ids: Sequence[Sequence[int]], max_new_tokens: Sequence[int]
) -> list[str]:
    """Greedy transcripts of clips given as audio token ids (e.g. prepared rows): the ASR prompt, then `generate`."""
    texts = []
    for ids, budget in zip(audio_ids, max_new_tokens):
        input_ids = torch.tensor([processor.asr_prompt_ids(ids)], device=model.device)
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=budget, do_sample=False
        )
        new = _new_tokens(output, input_ids.shape[1])
        texts.append(_as_text(processor, processor.batch_decode(new, skip_special_tokens=True)[0], new[0]).strip())
    return texts


@torch.no_grad()
def speak_audio_ids(
    model,
    processor: OmniProcessor,
    clips: Sequence[VoiceClip],
    max_new_tokens: Sequence[int],
    seed: int = 0,
    **generate_kwargs,
) -> list[list[int]]:
    """The audio ids the model generates for each clip's text and speaker (its first audio span, whole frames; empty
    when it generated none), with the checkpoint's generation settings unless `generate_kwargs` override them."""
    spoken = []
    for clip, budget in zip(clips, max_new_tokens):
        torch.manual_seed(seed)
        input_ids = torch.tensor([processor.tts_prompt_ids(clip.text, speaker=clip.speaker)], device=model.device)
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=budget, **generate_kwargs
        )
        spans = processor.audio_spans(_new_tokens(output, input_ids.shape[1])[0].cpu())
        spoken.append(spans[0].tolist() if spans else [])
    return spoken


def speech_round_trip(
    model,
    processor: OmniProcessor,
    clips: Sequence[VoiceClip],
    reference_audio_ids: Sequence[Sequence[int]],
    seed: int = 0,
    **generate_kwargs,
) -> dict:
    """
    Whether the model's own speech carries the words: it speaks each clip's text (budget: 1.5 times the reference
    clip's audio tokens), then transcribes what it generated, codes in and codes out (so a codec whose decoder does
    not make speech, like the offline stand-in, does not matter), and the transcripts are scored against the texts.
    """
    was_training = model.training
    model.eval()
    budgets = [int(1.5 * len(ids)) + 1 for ids in reference_audio_ids]
    spoken = speak_audio_ids(model, processor, clips, budgets, seed=seed, **generate_kwargs)
    texts = [clip.text for clip in clips]
    transcript_budgets = [2 * len(processor._text_ids(text, "transcript")) + 4 for text in texts]
    transcripts = [
        transcribe_audio_ids(model, processor, [ids], [budget])[0] if ids else ""
        for ids, budget in zip(spoken, transcript_budgets)
    ]
    model.train(was_training)
    frames = processor.token_layout.tokens_per_frame
    return {
        **error_rates(texts, transcripts),
        "transcripts": transcripts,
        "clips_without_speech": sum(not ids for ids in spoken),
        "duration_ratio": sum(len(ids) for ids in spoken) / max(1, sum(len(ids) for ids in reference_audio_ids)),
        "spoken_frames": [len(ids) // frames for ids in spoken],
    }


def most_frequent_code_accuracy(
    train_audio_ids: Iterable[Sequence[int]], eval_audio_ids: Iterable[Sequence[int]], layout: SNACTokenLayout
) -> float:
    """
    Accuracy on the audio ids of `eval_audio_ids` of always predicting, at each frame position, the id most frequent
    at that position in `train_audio_ids`: the audio-token accuracy of a model that learned one constant per
    position. A model's audio-token accuracy means something only above it.
    """
    positions = layout.tokens_per_frame
    counts = torch.zeros(positions, layout.codebook_size, dtype=torch.long)
    for ids in train_audio_ids:
        frames = torch.as_tensor(list(ids), dtype=torch.long).reshape(-1, positions) - layout.audio_token_offset
        codes = frames - torch.arange(positions) * layout.codebook_size
        counts.scatter_add_(1, codes.T, torch.ones_like(codes.T))
    constant = counts.argmax(1)
    correct = total = 0
    for ids in eval_audio_ids:
        frames = torch.as_tensor(list(ids), dtype=torch.long).reshape(-1, positions) - layout.audio_token_offset
        codes = frames - torch.arange(positions) * layout.codebook_size
        correct += int((codes == constant).sum())
        total += codes.numel()
    return correct / total


def best_constant_transcript_cer(candidates: Iterable[str], references: Sequence[str]) -> float | None:
    """
    The lowest corpus CER on `references` of answering every clip with one same text, the best of `candidates`
    (e.g. the training transcripts): what a speech-to-text model that ignores the audio can score at best. None when
    no reference has characters to err on.
    """
    scores = [
        error_rates(list(references), [candidate] * len(references))["cer"] for candidate in dict.fromkeys(candidates)
    ]
    scores = [score for score in scores if score is not None]
    return min(scores) if scores else None


def heldout_metrics(
    model, processor: OmniProcessor, clips: Sequence[VoiceClip], audio_ids: Sequence[Sequence[int]]
) -> dict:
    """
    The metrics of the pretraining report on clips the model was not trained on: ASR WER / CER of its greedy
    transcripts (budget: twice the reference's tokens, plus 4) and the teacher-forced per-modality metrics of
    [`teacher_forced_metrics`] (audio-token accuracy on the TTS sequences, text-token accuracy on the ASR ones).
    """
    was_training = model.training
    model.eval()
    budgets = [
        2 * (len(processor.asr_sequence_ids(ids, clip.text)) - len(processor.asr_prompt_ids(ids))) + 4
        for clip, ids in zip(clips, audio_ids)
    ]
    transcripts = transcribe_audio_ids(model, processor, audio_ids, budgets)
    texts = [clip.text for clip in clips]
    report = {
        "asr": {**error_rates(texts, transcripts), "transcripts": transcripts},
        "teacher_forced": teacher_forced_metrics(model, processor, list(clips), [list(ids) for ids in audio_ids]),
    }
    model.train(was_training)
    return report


@torch.no_grad()
def synthesize(
    model,
    processor: OmniProcessor,
    clips: list[VoiceClip],
    max_new_tokens: list[int],
    seed: int = 0,
    **generate_kwargs,
) -> list[np.ndarray | None]:
    """The model's speech for each clip's text and speaker (`processor(text=...)` + `generate`); None where it
    produced no audio."""
    waveforms = []
    for clip, budget in zip(clips, max_new_tokens):
        torch.manual_seed(seed)
        inputs = processor(text=clip.text, speaker=clip.speaker).to(model.device)
        output = model.generate(**inputs, max_new_tokens=budget, **generate_kwargs)
        decoded = processor.batch_decode(_new_tokens(output, inputs["input_ids"].shape[1]))[0]
        waveforms.append(decoded if isinstance(decoded, np.ndarray) and decoded.size else None)
    return waveforms


# ---------------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def find_trainer_state(model_dir: str | os.PathLike) -> Path | None:
    """`trainer_state.json` of the run that produced `model_dir`: in it, in its parent (a `merged/` folder), or in
    its latest `checkpoint-*` folder."""
    model_dir = Path(model_dir)
    for folder in (model_dir, model_dir.parent):
        if (folder / "trainer_state.json").is_file():
            return folder / "trainer_state.json"
        checkpoints = sorted(
            folder.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1])
        )
        if checkpoints:
            return checkpoints[-1]
    return None


def plot_training_curves(trainer_state: str | os.PathLike, path: str | os.PathLike) -> list[str]:
    """Plot every loss-like series of `log_history` (loss, text_loss, audio_loss, eval_*) against the step;
    returns the series plotted."""
    history = json.loads(Path(trainer_state).read_text())["log_history"]
    series: dict[str, tuple[list, list]] = {}
    for entry in history:
        for key, value in entry.items():
            if (
                ("loss" in key or "accuracy" in key)
                and key != "train_loss"
                and isinstance(value, (int, float))
                and "step" in entry
            ):
                steps, values = series.setdefault(key, ([], []))
                steps.append(entry["step"])
                values.append(value)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, (steps, values) in sorted(series.items()):
        (axes[1] if "accuracy" in key else axes[0]).plot(steps, values, marker="o", markersize=3, label=key)
    axes[0].set(xlabel="step", ylabel="loss", title="losses")
    axes[1].set(xlabel="step", ylabel="accuracy", title="token accuracy")
    for axis in axes:
        if axis.lines:
            axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return sorted(series)


def plot_spectrograms(
    pairs: list[tuple[str, np.ndarray, np.ndarray | None]], sampling_rate: int, path: str | os.PathLike
) -> None:
    """One row per clip: log-mel of the reference and of the generated speech."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 2.6 * len(pairs)), squeeze=False)
    for row, (title, reference, generated) in enumerate(pairs):
        for column, (label, waveform) in enumerate((("reference", reference), ("generated", generated))):
            axis = axes[row, column]
            if waveform is None:
                axis.text(0.5, 0.5, "no speech generated", ha="center", va="center")
                axis.set_axis_off()
            else:
                axis.imshow(log_mel(waveform, sampling_rate).numpy(), origin="lower", aspect="auto", cmap="magma")
                axis.set(xlabel="frame", ylabel="mel bin")
            axis.set_title(f"{label}: {title[:60]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- entry point
def load_model_and_processor(
    model_dir: str | os.PathLike, device: str = "cpu"
) -> tuple[OmniForCausalLM, OmniProcessor]:
    """An Omni checkpoint folder, or a LoRA adapter folder (merged into its `base_model_name_or_path`)."""
    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = PeftModel.from_pretrained(
            OmniForCausalLM.from_pretrained(base, dtype=torch.float32), model_dir
        ).merge_and_unload()
        processor_dir = model_dir if (model_dir / "processor_config.json").is_file() else base
    else:
        model = OmniForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        processor_dir = model_dir
    processor = OmniProcessor.from_pretrained(processor_dir)
    processor.audio_tokenizer.to(device)
    return model.to(device).eval(), processor


def evaluate_model(
    model_dir: str | os.PathLike,
    dataset: str | os.PathLike,
    output_dir: str | os.PathLike,
    transcriber: str | None = None,
    max_clips: int | None = None,
    asr_max_new_tokens: int = 64,
    tts_length_factor: float = 1.5,
    num_spectrograms: int = 3,
    speaker: str | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """
    Evaluate `model_dir` on the clips of `dataset` (any source voice fine-tuning reads, e.g. a folder with metadata.jsonl)
    and write `output_dir/eval_results.json`, `training_curves.png` (when a `trainer_state.json` is found) and
    `spectrograms.png`.

    Args:
        model_dir: an Omni checkpoint folder or a LoRA adapter folder.
        dataset: the clips.
        output_dir: where the report and plots go.
        transcriber: a transformers ASR model (Hub id or folder) that transcribes the generated speech; default the
            Omni model itself.
        max_clips: evaluate only the first `max_clips` clips (the count is in the report).
        asr_max_new_tokens: token budget of each transcript.
        tts_length_factor: the speech budget of a clip is this times its reference's length in tokens.
        num_spectrograms: clips shown in `spectrograms.png`.
        speaker: speaker name for clips without one.
        device: torch device.
        seed: sampling seed of speech generation (the model's generation config decides greedy or sampling).

    Returns:
        The report written to `eval_results.json`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    all_clips = read_clips(dataset, speaker=speaker)
    clips = all_clips[:max_clips] if max_clips else all_clips
    model, processor = load_model_and_processor(model_dir, device)
    rate = processor.sampling_rate
    references = [resample(*read_audio(clip.audio), rate) for clip in clips]
    audio_ids = [processor.audio_to_ids(w, sampling_rate=rate)[0].tolist() for w in references]
    texts = [clip.text for clip in clips]

    report: dict = {
        "model": str(model_dir),
        "dataset": str(dataset),
        "num_clips": len(clips),
        "num_clips_skipped": len(all_clips) - len(clips),
        "text_normalization": "whisper_english",
        "metric_implementation": "jiwer",
    }
    report["teacher_forced"] = teacher_forced_metrics(model, processor, clips, audio_ids)
    report["codec"] = codec_reconstruction(processor, references)

    transcripts = transcribe_with_omni(model, processor, references, rate, asr_max_new_tokens)
    report["asr"] = {
        **error_rates(texts, transcripts),
        "examples": [{"reference": r, "prediction": p} for r, p in list(zip(texts, transcripts))[:5]],
    }

    budgets = [max(processor.token_layout.tokens_per_frame, int(len(ids) * tts_length_factor)) for ids in audio_ids]
    generated = synthesize(model, processor, clips, budgets, seed=seed)
    report["tts_intelligibility"] = tts_intelligibility(
        model, processor, texts, references, generated, transcriber, device, asr_max_new_tokens
    )
    report["plots"] = write_plots(model_dir, output_dir, texts, references, generated, rate, num_spectrograms)
    (output_dir / "eval_results.json").write_text(json.dumps(report, indent=2))
    return report


def tts_intelligibility(
    model: OmniForCausalLM,
    processor: OmniProcessor,
    texts: list[str],
    references: list[np.ndarray],
    generated: list[np.ndarray | None],
    transcriber: str | None,
    device: str,
    asr_max_new_tokens: int,
) -> dict:
    """WER / CER of what `transcriber` (the model itself by default) hears in the generated speech against the texts;
    a clip without speech counts as an empty transcript."""
    rate = processor.sampling_rate
    spoken = [w for w in generated if w is not None]
    if transcriber is None:
        heard = transcribe_with_omni(model, processor, spoken, rate, asr_max_new_tokens)
        transcriber_name = "self"
    else:
        heard = PipelineTranscriber(transcriber, device=device)(spoken, rate)
        transcriber_name = transcriber
    heard_iter = iter(heard)
    hypotheses = [next(heard_iter) if w is not None else "" for w in generated]
    return {
        **error_rates(texts, hypotheses),
        "transcriber": transcriber_name,
        "clips_without_speech": sum(w is None for w in generated),
        "mean_duration_ratio": float(
            np.mean([(len(g) / len(r)) if g is not None else 0.0 for g, r in zip(generated, references)])
        ),
        "examples": [{"text": t, "heard": h} for t, h in list(zip(texts, hypotheses))[:5]],
    }


def write_plots(
    model_dir: str | os.PathLike,
    output_dir: Path,
    texts: list[str],
    references: list[np.ndarray],
    generated: list[np.ndarray | None],
    rate: int,
    num_spectrograms: int,
) -> dict[str, str]:
    """The training curves (when a `trainer_state.json` is found) and the spectrograms; their file names by plot."""
    plots = {}
    state = find_trainer_state(model_dir)
    if state is not None:
        plot_training_curves(state, output_dir / "training_curves.png")
        plots["training_curves"] = "training_curves.png"
    else:
        logger.warning(f"No trainer_state.json in or next to {model_dir}: no training curves plotted.")
    shown = list(zip(texts, references, generated))[: max(1, num_spectrograms)]
    plot_spectrograms(shown, rate, output_dir / "spectrograms.png")
    plots["spectrograms"] = "spectrograms.png"
    return plots
