# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The end-of-run report of `train/pretrain.py`: on held-out sentences (and speakers) the model never trained on, the
ASR error rates, the audio-token accuracy and its own ASR on its own TTS output, for the untrained and the trained
model, against floors (the most frequent code, one constant transcript), each check with its margin."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from transformers.utils import logging

from ..common.clips import VoiceClip
from .evaluation import (
    best_constant_transcript_cer,
    heldout_metrics,
    layout_code_perplexities,
    most_frequent_code_accuracy,
    speech_round_trip,
)
from .standin_codec import STANDIN_CODEC_NOTE, is_standin_codec


logger = logging.get_logger(__name__)

REPORT_NAME = "pretrain_report.json"


def audio_ids_of(rows, processor) -> list[list[int]]:
    """The model's audio ids of prepared rows (their `audio_codes` plus the audio offset)."""
    offset = processor.token_layout.audio_token_offset
    return [[code + offset for code in codes] for codes in rows["audio_codes"]]


def evaluate_heldout(model, processor, heldout, round_trip: bool = False) -> dict:
    """[`heldout_metrics`] of `model` on the report's held-out rows; with `round_trip`, also its
    [`speech_round_trip`] on their texts (it speaks them, greedily, then transcribes what it said)."""
    clips = [VoiceClip(audio=row["id"], text=row["text"], speaker=row["speaker"]) for row in heldout]
    audio_ids = audio_ids_of(heldout, processor)
    metrics = heldout_metrics(model, processor, clips, audio_ids)
    if round_trip:
        metrics["speech_round_trip"] = speech_round_trip(model, processor, clips, audio_ids, do_sample=False)
    return metrics


def heldout_section(
    rows, train_indices: Sequence[int], indices: Sequence[int], untrained: dict, trained: dict, layout
) -> dict:
    """The report's numbers on the held-out clips `indices` of `rows` (whose `audio_codes` are ids of `layout`): both
    models' metrics, the floors (most frequent training code, best constant training transcript), and the checks with
    their margins."""
    heldout, training = rows.select(indices), rows.select(train_indices)
    section = {
        "clip_ids": list(heldout["id"]),
        "speakers": sorted(set(heldout["speaker"]), key=str),
        "num_clips": len(heldout),
        "untrained": untrained,
        "trained": trained,
        "most_frequent_code_audio_accuracy": most_frequent_code_accuracy(
            training["audio_codes"], heldout["audio_codes"], layout
        ),
        "references": list(heldout["text"]),
    }
    section["best_constant_transcript_cer"] = best_constant_transcript_cer(training["text"], section["references"])
    section["checks"], section["margins"] = heldout_checks(section)
    return section


def end_of_run_report(
    processor,
    rows,
    split,
    codec_name: str | None,
    untrained: dict | None,
    trained: dict | None,
    voice_untrained: dict | None = None,
    voice_trained: dict | None = None,
) -> dict:
    """
    The report of a finished run: the codec (and whether it is the offline stand-in), the code perplexity of each
    codebook over the corpus, and on the held-out clips (`split`: training, held-out and held-out speakers' indices)
    the metrics of the untrained and the trained model against the floors of [`heldout_section`].
    """
    layout = processor.token_layout
    corpus_layout = type(layout)(layout.vq_strides, layout.codebook_size, 0)
    stand_in = codec_name is not None and is_standin_codec(codec_name)
    report = {
        "codec": {"name_or_path": codec_name, "stand_in": stand_in, "note": STANDIN_CODEC_NOTE if stand_in else None},
        "codebook_size": layout.codebook_size,
        "code_perplexity": layout_code_perplexities(rows["audio_codes"], corpus_layout),
        "num_corpus_clips": len(rows),
    }
    train_indices, heldout_indices, *voice = split
    if untrained is not None and trained is not None:
        report["heldout"] = heldout_section(rows, train_indices, heldout_indices, untrained, trained, corpus_layout)
    if voice and voice[0] and voice_untrained is not None and voice_trained is not None:
        report["heldout_speakers"] = heldout_section(
            rows, train_indices, voice[0], voice_untrained, voice_trained, corpus_layout
        )
    return report


def heldout_checks(heldout: dict) -> tuple[dict, dict]:
    """
    What the held-out numbers say, as yes/no, and by how much each comparison is won (`margins`: the relative
    distance to the bar, positive when the check passes, e.g. 0.5 = a CER half the floor's). A run that learned
    nothing, or only one constant code per frame position, fails the audio checks; a model that answers without
    listening (one training transcript for every clip, at best) fails the ASR floor check; a model whose speech does
    not carry the words fails the round-trip check (its own ASR on its own TTS output).
    """
    untrained, trained = heldout["untrained"], heldout["trained"]
    audio, untrained_audio = (m["teacher_forced"]["audio_token_accuracy"] for m in (trained, untrained))
    cer, untrained_cer = trained["asr"]["cer"], untrained["asr"]["cer"]
    constant_cer, code_floor = heldout["best_constant_transcript_cer"], heldout["most_frequent_code_audio_accuracy"]

    def above(value, bar):
        if value is None or bar is None:
            return None
        # a bar of 0 (an untrained model that gets nothing right) is beaten by any share at all
        return (value - bar) / bar if bar else (math.inf if value > 0 else 0.0)

    def below(value, bar):
        return None if value is None or bar is None or bar == 0 else (bar - value) / bar

    margins = {
        "audio_accuracy_above_most_frequent_code": above(audio, code_floor),
        "audio_accuracy_above_untrained": above(audio, untrained_audio),
        "asr_cer_below_untrained": below(cer, untrained_cer),
        "asr_cer_below_best_constant_transcript": below(cer, constant_cer),
    }
    if "speech_round_trip" in trained:
        margins["speech_round_trip_cer_below_best_constant_transcript"] = below(
            trained["speech_round_trip"]["cer"], constant_cer
        )
    checks = {name: margin is not None and margin > 0 for name, margin in margins.items()}
    return checks, margins


def format_section(title: str, heldout: dict) -> list[str]:
    untrained, trained = heldout["untrained"], heldout["trained"]
    rows = [
        # None: no reference had words to err on
        *(
            (
                f"ASR {name} error rate",
                *(math.nan if m["asr"][key] is None else m["asr"][key] for m in (untrained, trained)),
            )
            for name, key in (("character", "cer"), ("word", "wer"))
        ),
        (
            "audio-token accuracy (TTS)",
            untrained["teacher_forced"]["audio_token_accuracy"],
            trained["teacher_forced"]["audio_token_accuracy"],
        ),
        (
            "text-token accuracy (ASR)",
            untrained["teacher_forced"]["text_token_accuracy"],
            trained["teacher_forced"]["text_token_accuracy"],
        ),
    ]
    speakers = ", ".join(map(str, heldout["speakers"]))
    lines = [f"  {title}: {heldout['num_clips']} clips of {speakers}:  untrained -> trained"]
    lines += [f"    {name:<28} {before:.3f} -> {after:.3f}" for name, before, after in rows]
    round_trip = trained.get("speech_round_trip")
    if round_trip is not None:
        lines.append(
            f"    its own ASR on its own TTS of these texts (codes in, codes out): CER {_number(round_trip['cer'])}, "
            f"WER {_number(round_trip['wer'])}, speech length {round_trip['duration_ratio']:.2f} x the clips'"
        )
    lines.append(
        f"    audio-token accuracy of always predicting the most frequent code: {heldout['most_frequent_code_audio_accuracy']:.3f}"
    )
    lines.append(
        f"    ASR CER of the best single training transcript given for every clip: {_number(heldout['best_constant_transcript_cer'])}"
    )
    for name, passed in heldout["checks"].items():
        margin = heldout["margins"][name]
        lines.append(f"    {name.replace('_', ' ')}: {'yes' if passed else 'NO'} (margin {_number(margin, '+.0%')})")
    examples = list(zip(heldout["references"], trained["asr"]["transcripts"]))[:3]
    for index, (reference, transcript) in enumerate(examples):
        spoken = f" | spoken and heard back {round_trip['transcripts'][index]!r}" if round_trip else ""
        lines.append(f"    heard {reference!r} -> {transcript!r}{spoken}")
    return lines


def _number(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(report: dict, path: Path) -> str:
    """The report as the lines the run logs."""
    perplexities = " / ".join(f"{value:.0f}" for value in report["code_perplexity"])
    lines = [f"End-of-run report ({path}):"]
    if report["codec"]["stand_in"]:
        lines.append(f"  codec: {report['codec']['note']}")
    lines.append(
        f"  code perplexity per codebook over the corpus: {perplexities} (of {report['codebook_size']} codes)"
    )
    heldout = report.get("heldout")
    if heldout is None:
        lines.append("  no held-out metrics (no held-out clips, or --heldout_report false)")
        return "\n".join(lines)
    lines += format_section("held-out sentences (never trained on)", heldout)
    if "heldout_speakers" in report:
        lines += format_section("held-out speakers (never trained on)", report["heldout_speakers"])
    return "\n".join(lines)
