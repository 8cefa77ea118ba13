# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
The offline main job's speech corpus: spoken commands of a bounded grammar, synthesised with espeak-ng.

A model can only show that it learned to listen and to speak on sentences it never trained on when the training
sentences teach something that carries over. Here every sentence is one of a few templates ("Turn on the kitchen
lights.", "Set a timer for seven minutes.", "Dial three one four nine.", ...) with its slots filled from small word
lists (about a hundred words in all), so that the held-out sentences are new *combinations* of words the model has
heard in other sentences; the digit and name slots cannot be guessed from the rest of the sentence, so a model
scores on them only by listening.

[`command_corpus_rows`] draws distinct sentences (seeded, so always the same ones), deals them to the training
voices, and gives the held-out voice its own sentences, none of which any training voice speaks.
[`ensure_command_corpus`] synthesises them once into a folder with a `metadata.jsonl` (`id`, `audio`, `text`,
`speaker`) and reuses it on the next run. Synthesis is deterministic (espeak-ng, `sox -R -D`, libsndfile), so the
same settings give byte-identical audio; it needs the `espeak-ng` and `sox` programs
(`apt-get install espeak-ng sox`) and nothing from the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from random import Random

import numpy as np
from transformers.utils import logging


logger = logging.get_logger(__name__)

SAMPLE_RATE = 24000
# Samples quieter than this (of full scale) count as silence when trimming the clip edges.
SILENCE_THRESHOLD = 0.01
LEAD_PAD_S = 0.05
TAIL_PAD_S = 0.15
PEAK = 0.5  # -6 dBFS: one bit less per sample keeps the FLACs small
# bump when the grammar, the voices or the synthesis change, so that a cached corpus of the old design is not reused
COMMAND_CORPUS_VERSION = 1
INFO_NAME = "command_corpus.json"


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice and the prosody it is spoken with.

    Args:
        speaker: Speaker name written to the metadata and used as folder name.
        espeak_voice: espeak-ng voice (`-v`), e.g. `en-us+f2` (language + variant).
        pitch: espeak-ng pitch (`-p`, 0-99, default 50).
        speed: espeak-ng speed in words per minute (`-s`, default 175).
    """

    speaker: str
    espeak_voice: str
    pitch: int = 50
    speed: int = 175


def synthesise(text: str, voice: Voice) -> np.ndarray:
    """Speak `text` with `voice` and return a trimmed, peak-normalised float32 waveform at `SAMPLE_RATE`."""
    import soundfile as sf

    espeak = subprocess.run(
        ["espeak-ng", "-v", voice.espeak_voice, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", text],
        check=True,
        capture_output=True,
    )
    # -R: repeatable mode; -D: no dither (the float output needs none; soundfile rounds to 16 bit on write).
    sox = subprocess.run(
        [
            "sox",
            "-R",
            "-D",
            "-t",
            "wav",
            "-",
            "-t",
            "wav",
            "-e",
            "floating-point",
            "-b",
            "32",
            "-c",
            "1",
            "-r",
            str(SAMPLE_RATE),
            "-",
            "rate",
            "-v",
        ],
        input=espeak.stdout,
        check=True,
        capture_output=True,
    )
    waveform, sample_rate = sf.read(io.BytesIO(sox.stdout), dtype="float32")
    if sample_rate != SAMPLE_RATE:
        raise RuntimeError(f"sox returned {sample_rate} Hz instead of {SAMPLE_RATE} Hz for {text!r}")
    loud = np.flatnonzero(np.abs(waveform) > SILENCE_THRESHOLD)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {text!r} with voice {voice.espeak_voice!r}")
    start = max(0, loud[0] - int(LEAD_PAD_S * SAMPLE_RATE))
    end = min(len(waveform), loud[-1] + 1 + int(TAIL_PAD_S * SAMPLE_RATE))
    waveform = waveform[start:end]
    return (waveform * (PEAK / np.abs(waveform).max())).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- the grammar
TRAIN_VOICES = (
    Voice("us_male", "en-us", pitch=45, speed=180),
    Voice("gb_male", "en+m3", pitch=35, speed=175),
    Voice("us_female", "en-us+f2", pitch=60, speed=185),
)
HELDOUT_VOICE = Voice("us_male2", "en-us+m2", pitch=52, speed=170)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
ROOMS = ("kitchen", "bedroom", "bathroom", "garden", "office", "garage", "hallway", "cellar")
DEVICES = ("lights", "heater", "fan", "radio")
NAMES = ("Anna", "Peter", "Maria", "David", "Sophie", "Lucas", "Emma", "Oscar")
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
THINGS = ("cup", "box", "ball", "book", "chair", "hat")
UNITS = ("seconds", "minutes", "hours")
CITIES = ("Paris", "London", "Berlin", "Madrid", "Tokyo", "Boston", "Cairo", "Dublin")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# (template, the word list of each slot, in order)
TEMPLATES = (
    ("Turn {} the {} in the {}.", (("on", "off"), DEVICES, ROOMS)),
    ("Set the {} timer for {} {}.", (ROOMS, NUMBERS, UNITS)),
    ("Call {} on {} at {}.", (NAMES, DAYS, NUMBERS)),
    ("Put the {} {} in the {}.", (COLOURS, THINGS, ROOMS)),
    ("Dial {} {} {} {}.", (DIGITS, DIGITS, DIGITS, DIGITS)),
    ("What is the weather in {} on {}?", (CITIES, DAYS)),
)
# a template is skipped once this share of its sentences is drawn, so that every template keeps unseen ones
MAX_TEMPLATE_SHARE = 0.6


def draw_sentences(count: int, seed: int) -> list[str]:
    """`count` distinct sentences of the grammar: templates in turn (each until `MAX_TEMPLATE_SHARE` of its
    sentences are drawn), slots drawn at random (seeded)."""
    random = Random(seed)
    capacity = [int(MAX_TEMPLATE_SHARE * np.prod([len(words) for words in slots])) for _, slots in TEMPLATES]
    if count > sum(capacity):
        raise ValueError(f"The grammar holds {sum(capacity)} sentences to draw, fewer than the {count} asked for.")
    drawn = [0] * len(TEMPLATES)
    sentences: list[str] = []
    seen: set[str] = set()
    template_index = 0
    while len(sentences) < count:
        index = template_index % len(TEMPLATES)
        template_index += 1
        if drawn[index] >= capacity[index]:
            continue
        template, slots = TEMPLATES[index]
        sentence = template.format(*(random.choice(words) for words in slots))
        while sentence in seen:
            sentence = template.format(*(random.choice(words) for words in slots))
        seen.add(sentence)
        sentences.append(sentence)
        drawn[index] += 1
    return sentences


@dataclass(frozen=True)
class CommandCorpusSpec:
    """How many sentences the corpus holds (each spoken once, by one voice).

    Args:
        num_train: sentences spoken by the training voices (dealt round-robin); a training run holds some of them
            out (pretrain.py's `--eval_fraction`).
        num_heldout_voice: other sentences, spoken by the held-out voice only.
        seed: seed of the sentence draw.
    """

    num_train: int = 900
    num_heldout_voice: int = 30
    seed: int = 0


def command_corpus_rows(spec: CommandCorpusSpec) -> list[dict]:
    """The corpus' rows `{"id", "audio", "text", "speaker"}` (audio: the path relative to the corpus folder), without
    synthesising anything: the training voices' sentences, then the held-out voice's."""
    sentences = draw_sentences(spec.num_train + spec.num_heldout_voice, spec.seed)
    # shuffled so that the held-out voice gets every template in the same shares
    Random(spec.seed + 1).shuffle(sentences)
    rows = []
    for index, text in enumerate(sentences):
        voice = TRAIN_VOICES[index % len(TRAIN_VOICES)] if index < spec.num_train else HELDOUT_VOICE
        clip_id = f"{voice.speaker}_{index:04d}"
        rows.append(
            {"id": clip_id, "audio": f"audio/{voice.speaker}/{clip_id}.flac", "text": text, "speaker": voice.speaker}
        )
    return rows


def _spec_fingerprint(spec: CommandCorpusSpec) -> str:
    voices = [asdict(voice) for voice in (*TRAIN_VOICES, HELDOUT_VOICE)]
    description = {"spec": asdict(spec), "voices": voices, "templates": TEMPLATES, "version": COMMAND_CORPUS_VERSION}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]


def ensure_command_corpus(cache_dir: str | os.PathLike, spec: CommandCorpusSpec | None = None) -> Path:
    """
    The folder of the command corpus of `spec` under `cache_dir` (`command_corpus-<fingerprint>`), synthesised on
    first use (about 15 ms of espeak-ng and sox per clip) and reused afterwards.

    Raises:
        `RuntimeError` naming the missing program when espeak-ng or sox is not installed.
    """
    import soundfile as sf

    spec = spec or CommandCorpusSpec()
    path = Path(cache_dir) / f"command_corpus-{_spec_fingerprint(spec)}"
    if (path / INFO_NAME).is_file():
        return path
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is not on PATH: the offline main job synthesises its speech corpus with espeak-ng and sox. "
                f"Install them (`apt-get install espeak-ng sox`, which scripts/setup.sh does as root) or pass "
                "--dataset_name with a corpus of your own."
            )
    rows = command_corpus_rows(spec)
    logger.warning(f"Synthesising the command corpus ({len(rows)} clips, espeak-ng) into {path} (once).")
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    voices = {voice.speaker: voice for voice in (*TRAIN_VOICES, HELDOUT_VOICE)}
    total_samples = 0
    for row in rows:
        waveform = synthesise(row["text"], voices[row["speaker"]])
        target = tmp / row["audio"]
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, waveform, SAMPLE_RATE, subtype="PCM_16", format="FLAC", compression_level=0.0)
        total_samples += len(waveform)
    (tmp / "metadata.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    info = {
        "version": COMMAND_CORPUS_VERSION,
        "spec": asdict(spec),
        "num_clips": len(rows),
        "seconds": total_samples / SAMPLE_RATE,
    }
    (tmp / INFO_NAME).write_text(json.dumps(info, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path
