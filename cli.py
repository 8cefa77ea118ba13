# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
The `qwen-omni` command line.

    qwen-omni speak --model DIR --text "Hello there." --out out.wav   # streams to the file as it is generated
    qwen-omni transcribe --model DIR a.wav b.flac                      # prints one transcript per file
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _load(model_dir: str, device: str):
    from transformers import AutoModelForCausalLM, AutoProcessor

    import qwen_omni  # noqa: F401  (registers the Omni auto classes)

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    processor.feature_extractor.to(device)
    return model, processor


def _generate_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {}
    if args.greedy:
        kwargs["do_sample"] = False
    for name in ("temperature", "top_p", "repetition_penalty", "max_new_tokens"):
        if getattr(args, name, None) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def speak(args: argparse.Namespace) -> int:
    import soundfile
    import torch

    from qwen_omni.generation_omni import CrossfadeJoiner, OmniAudioStreamer, split_sentences

    text = args.text if args.text is not None else sys.stdin.read()
    pieces = split_sentences(text, max_chars=args.max_chars)
    if not pieces:
        raise SystemExit(f"qwen-omni speak: nothing to say: --text {text!r} is empty.")
    model, processor = _load(args.model, args.device)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    voice = {}
    if args.voice_prompt:
        if not args.voice_prompt_text:
            raise SystemExit("qwen-omni speak: --voice-prompt needs --voice-prompt-text (its transcript).")
        audio, rate = soundfile.read(args.voice_prompt, dtype="float32", always_2d=False)
        voice = {"voice_prompt_audio": [audio], "voice_prompt_text": args.voice_prompt_text, "voice_prompt_sampling_rate": rate}

    rate = processor.sampling_rate
    joiner = CrossfadeJoiner(rate, args.crossfade_ms)
    written = 0
    started = time.perf_counter()
    with soundfile.SoundFile(args.out, "w", samplerate=rate, channels=1, subtype="PCM_16") as out_file:

        def write(chunk):
            nonlocal written
            audio = joiner.push(chunk)
            out_file.write(audio)
            out_file.flush()
            written += audio.size
            elapsed = time.perf_counter() - started
            print(f"\r{written / rate:6.2f} s of audio written in {elapsed:6.2f} s", end="", file=sys.stderr, flush=True)

        for index, piece in enumerate(pieces):
            print(f"\n[{index + 1}/{len(pieces)}] {piece}", file=sys.stderr)
            joiner.new_segment()
            inputs = processor(text=piece, speaker=args.speaker, return_tensors="pt", **voice).to(model.device)
            streamer = OmniAudioStreamer(processor, on_chunk=write)
            model.generate(**inputs, streamer=streamer, max_duration=args.max_duration, **_generate_kwargs(args))
        tail = joiner.finish()
        out_file.write(tail)
        written += tail.size
    print(f"\nWrote {written / rate:.2f} s of speech to {args.out}", file=sys.stderr)
    return 0


def transcribe(args: argparse.Namespace) -> int:
    import soundfile

    clips, rates = [], []
    for path in args.audio:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        clips.append(audio.T)  # (channels, samples); the feature extractor down-mixes
        rates.append(rate)
    model, processor = _load(args.model, args.device)
    kwargs = {"do_sample": False, **_generate_kwargs(args)}
    for start in range(0, len(clips), args.batch_size):
        # clips of one sampling rate are generated as one left-padded batch
        batch = list(range(start, min(start + args.batch_size, len(clips))))
        by_rate: dict[int, list[int]] = {}
        for i in batch:
            by_rate.setdefault(rates[i], []).append(i)
        for rate, indices in by_rate.items():
            inputs = processor.apply_transcription_request([clips[i] for i in indices], sampling_rate=rate).to(model.device)
            outputs = model.generate(**inputs, **kwargs)
            texts = processor.batch_decode(outputs[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, text in zip(indices, texts):
                print(f"{args.audio[i]}\t{text.strip()}" if len(args.audio) > 1 else text.strip(), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-omni", description="Speak and listen with an Omni checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", required=True, help="Omni checkpoint folder (or Hub id)")
        sub.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
        sub.add_argument("--greedy", action="store_true", help="greedy decoding instead of the saved sampling defaults")
        sub.add_argument("--temperature", type=float)
        sub.add_argument("--top-p", dest="top_p", type=float)
        sub.add_argument("--repetition-penalty", dest="repetition_penalty", type=float)
        sub.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)

    speak_parser = commands.add_parser("speak", help="text to speech, streamed into a WAV file")
    common(speak_parser)
    speak_parser.add_argument("--text", help="the text to speak (read from stdin when left out)")
    speak_parser.add_argument("--out", required=True, help="output WAV file")
    speak_parser.add_argument("--speaker", help="speaker name, as in 'tara: text'")
    speak_parser.add_argument("--voice-prompt", help="reference audio file of the voice to continue")
    speak_parser.add_argument("--voice-prompt-text", help="transcript of --voice-prompt")
    speak_parser.add_argument("--max-duration", type=float, default=30.0, help="seconds per sentence before cutting")
    speak_parser.add_argument("--max-chars", type=int, default=200, help="longest piece of text generated at once")
    speak_parser.add_argument("--crossfade-ms", type=float, default=30.0, help="crossfade between pieces")
    speak_parser.add_argument("--seed", type=int, help="random seed for sampling")
    speak_parser.set_defaults(func=speak)

    transcribe_parser = commands.add_parser("transcribe", help="speech to text, one line per file")
    common(transcribe_parser)
    transcribe_parser.add_argument("audio", nargs="+", help="audio files (any format soundfile reads)")
    transcribe_parser.add_argument("--batch-size", type=int, default=8)
    transcribe_parser.set_defaults(func=transcribe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
