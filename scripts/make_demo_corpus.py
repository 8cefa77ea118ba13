"""Synthesise the small speech corpora shipped in `data/` with espeak-ng.

Two outputs, both 24 kHz mono 16-bit FLAC with a `metadata.jsonl` (one row per clip:
`{"audio": <path relative to the folder>, "text": ..., "speaker": ...}`):

- `data/demo_corpus/`: a LibriTTS-style multi-speaker corpus. 48 sentences, dealt round-robin to three espeak-ng
  voices (16 clips each, `audio/<speaker>/<id>.flac`), used by the tests.
- `data/voice_clips/`: one voice ("nova", `audio/<id>.flac`) reading 24 other sentences, used by the voice
  fine-tuning example.

The offline main job's larger corpus of spoken commands (omni/command_corpus.py) is not shipped: train/pretrain.py
synthesises it on first use; `--command-corpus DIR` synthesises it here, into `DIR/command_corpus-<fingerprint>`.

Pipeline per clip (`qwen_omni.omni.command_corpus.synthesise`): `espeak-ng --stdout` (22050 Hz WAV) ->
`sox -R ... rate -v` to 24 kHz 32-bit float (no dither, repeatable mode) -> trim leading/trailing silence ->
peak-normalise -> FLAC PCM_16 with soundfile. espeak-ng, sox and libsndfile are deterministic, so the same text and
voice always give byte-identical files.

Usage (from the repository root; needs `apt-get install espeak-ng sox`):

    python scripts/make_demo_corpus.py --out-dir data
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import soundfile as sf

from qwen_omni.omni.command_corpus import (
    SAMPLE_RATE,
    CommandCorpusSpec,
    Voice,
    ensure_command_corpus,
    synthesise,
)


CORPUS_VOICES = (
    Voice("us_male", "en-us", pitch=45, speed=180),
    Voice("gb_male", "en+m3", pitch=35, speed=175),
    Voice("us_female", "en-us+f2", pitch=60, speed=185),
)
NOVA_VOICE = Voice("nova", "en-us+f4", pitch=72, speed=170)

CORPUS_SENTENCES = (
    "The old lighthouse keeper painted his boat blue.",
    "Fresh bread smells wonderful in the morning.",
    "Please close the window before it rains.",
    "My sister plays the violin every evening.",
    "A small fox crossed the frozen river.",
    "We watched the stars from the garden.",
    "The train to Boston leaves at noon.",
    "Green apples taste sour but crisp.",
    "He forgot his umbrella at the office.",
    "The children built a castle of sand.",
    "Turn left at the second traffic light.",
    "Coffee keeps me awake far too long.",
    "The museum opens again next Tuesday.",
    "Thunder rolled across the distant hills.",
    "She wrote a letter to her grandfather.",
    "Our kitchen clock is always five minutes fast.",
    "The puppy chased a yellow butterfly.",
    "Snow covered the quiet mountain village.",
    "Can you pass me the salt, please?",
    "The band played jazz until midnight.",
    "Heavy clouds gathered over the harbour.",
    "I found an old map in the attic.",
    "The baker sold every loaf by nine.",
    "Bright lanterns hung along the street.",
    "Water boils faster with the lid on.",
    "The pilot greeted every passenger warmly.",
    "A gentle breeze moved the tall grass.",
    "They planted tomatoes behind the barn.",
    "The library stays quiet on Sundays.",
    "Her bicycle has a squeaky front wheel.",
    "Dinner will be ready in ten minutes.",
    "The scientist measured the water carefully.",
    "Owls hunt silently through the night.",
    "We missed the bus by a few seconds.",
    "The painter mixed red and white paint.",
    "Autumn leaves drifted onto the pond.",
    "Remember to water the plants tomorrow.",
    "The farmer counted his sheep twice.",
    "A warm fire crackled in the cabin.",
    "Nobody knew the answer to the riddle.",
    "The ship sailed north toward the ice.",
    "Lemon tea helps when you have a cold.",
    "Two robins nested above the front door.",
    "The teacher smiled and closed her book.",
    "Keep your ticket until the end of the trip.",
    "Rain drummed softly on the tin roof.",
    "The market sells fish on Fridays.",
    "Silver coins were buried under the oak.",
)

NOVA_SENTENCES = (
    "Hello, my name is Nova.",
    "It is lovely to meet you today.",
    "I can read stories out loud for you.",
    "The weather looks calm this afternoon.",
    "Let me check your calendar for Monday.",
    "Your package should arrive on Thursday.",
    "I have set a timer for twenty minutes.",
    "Would you like to hear some music?",
    "The meeting starts in half an hour.",
    "Here is a recipe for pumpkin soup.",
    "Sorry, I did not quite catch that.",
    "Could you say that one more time?",
    "The nearest pharmacy closes at eight.",
    "Traffic is light on the way home.",
    "Good night, and sleep well.",
    "I have added milk to your shopping list.",
    "Tomorrow will be sunny and mild.",
    "Your flight is on time at gate twelve.",
    "Here are three ideas for the weekend.",
    "The living room lights are now off.",
    "I will remind you at six o'clock.",
    "That song was released in nineteen ninety.",
    "Take a deep breath and relax.",
    "Thank you, it was a pleasure to help.",
)


def write_clips(out_dir: Path, clips: list[tuple[str, str, Voice]]) -> tuple[int, float, int]:
    """Write `(relative_audio_path, text, voice)` clips and `metadata.jsonl` under `out_dir` (replaced).

    Returns:
        `(number of clips, total seconds, total bytes of audio + metadata)`.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    total_samples = 0
    total_bytes = 0
    rows = []
    for relative_path, text, voice in clips:
        waveform = synthesise(text, voice)
        path = out_dir / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, waveform, SAMPLE_RATE, subtype="PCM_16", format="FLAC", compression_level=1.0)
        total_samples += len(waveform)
        total_bytes += path.stat().st_size
        rows.append({"audio": relative_path, "text": text, "speaker": voice.speaker})
    metadata = out_dir / "metadata.jsonl"
    metadata.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    total_bytes += metadata.stat().st_size
    return len(rows), total_samples / SAMPLE_RATE, total_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("data"), help="Parent folder of both corpora.")
    parser.add_argument(
        "--command-corpus",
        type=Path,
        help="Synthesise the main job's command corpus (default size) into this folder "
        "instead of the shipped corpora.",
    )
    args = parser.parse_args()
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on PATH; install it with `apt-get install {tool}`.")
    if args.command_corpus is not None:
        print(ensure_command_corpus(args.command_corpus, CommandCorpusSpec()))
        return

    corpus_clips = []
    for index, text in enumerate(CORPUS_SENTENCES):
        voice = CORPUS_VOICES[index % len(CORPUS_VOICES)]
        corpus_clips.append((f"audio/{voice.speaker}/{voice.speaker}_{index:03d}.flac", text, voice))
    nova_clips = [(f"audio/nova_{index:03d}.flac", text, NOVA_VOICE) for index, text in enumerate(NOVA_SENTENCES)]

    summaries = []
    for name, clips in (("demo_corpus", corpus_clips), ("voice_clips", nova_clips)):
        count, seconds, size = write_clips(args.out_dir / name, clips)
        summaries.append(f"{args.out_dir / name}: {count} clips, {seconds:.1f} s, {size} bytes")
    print("; ".join(summaries))


if __name__ == "__main__":
    main()
