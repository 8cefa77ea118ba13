# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
The `qwen-omni` command line.

    qwen-omni speak --model DIR --text "Hello there." --out out.wav   # streams to the file as it is generated
    qwen-omni transcribe --model DIR a.wav b.flac                      # prints one transcript per file
    qwen-omni serve --model DIR --port 8000                            # OpenAI-compatible speech API

Errors in what the user gave (a missing folder or file, text the model cannot take, a bad option value) are one
line on stderr naming it and the fix, with exit status 2. `speak` writes into a temporary WAV beside `--out`, whose
header is valid after every chunk, and renames it to `--out` only when all the speech is written, so an existing
file is never lost. `transcribe` reports each file it cannot use and transcribes the rest, in input order.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
import wave
from collections.abc import Sequence

import numpy as np


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class CommandLineError(Exception):
    """A problem with what the user gave, reported as one line (no traceback)."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while speech was being written."""


def _positive(kind: type, name: str):
    """An argparse type: a positive, finite `kind` (`int` or `float`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive {kind.__name__}, got {text!r}") from None
        if not (0 < value < math.inf):
            raise argparse.ArgumentTypeError(f"{name} must be a positive, finite {kind.__name__}, got {text!r}")
        return value

    return parse


def _load(model_dir: str, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    from qwen_omni import register_auto_classes

    register_auto_classes()  # checkpoints load with this package's classes, without trust_remote_code

    looks_like_hub_id = model_dir.count("/") == 1 and not model_dir.startswith((".", "/", "~"))
    if not os.path.isdir(model_dir) and (os.path.exists(model_dir) or not looks_like_hub_id):
        raise CommandLineError(
            f"--model {model_dir}: no such folder. Pass an Omni checkpoint folder (written by train/init_model.py or "
            "train/pretrain.py) or a Hub id such as owner/name."
        )
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CommandLineError(f"--model {model_dir}: cannot read an Omni config from it ({reason}).") from None
    if config.model_type != "omni":
        raise CommandLineError(
            f"--model {model_dir} is a {config.model_type!r} model, not an Omni checkpoint: build one from it with "
            f"`python train/init_model.py --text_model {model_dir} --output_dir DIR`."
        )
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    processor.audio_tokenizer.to(device)
    return model, processor


def _read_audio_file(path: str, feature_extractor=None) -> tuple[np.ndarray, int]:
    """
    A mono waveform and its rate, or a `CommandLineError` naming the file and what is wrong with it. With
    `feature_extractor`, a file longer than its `max_duration_seconds` is refused from its header, before reading.
    """
    import soundfile

    from qwen_omni.common.audio import read_audio

    if not os.path.isfile(path):
        raise CommandLineError(f"{path}: no such file.")
    try:
        if feature_extractor is not None:
            info = soundfile.info(path)
            feature_extractor.check_durations([info.frames], info.samplerate, names=[path])
        return read_audio(path)
    except ValueError as error:
        message = str(error)
        raise CommandLineError(message if message.startswith(path) else f"{path}: {message}") from None
    except Exception as error:  # noqa: BLE001 - soundfile raises several types; each is reported for this file
        raise CommandLineError(f"{path}: cannot read it as audio ({error}).") from None


def _generate_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {}
    if args.greedy:
        kwargs["do_sample"] = False
    for name in ("temperature", "top_p", "repetition_penalty", "max_new_tokens"):
        if getattr(args, name, None) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        text = args.text
        where = "--text"
    else:
        raw = sys.stdin.buffer.read()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CommandLineError(
                f"the text read from stdin is not valid UTF-8 (byte {raw[error.start]:#04x} at offset {error.start}); "
                "re-encode it as UTF-8 (e.g. `iconv -t UTF-8`)."
            ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # argv bytes that are not UTF-8 reach Python as lone surrogates
        raise CommandLineError(
            f"{where} is not valid UTF-8 text; pass UTF-8 (e.g. convert it with `iconv -t UTF-8`)."
        ) from None
    return text


class StreamingWav:
    """
    A 16-bit mono WAV written chunk by chunk into a temporary file beside `path`, its header rewritten after every
    chunk so that the file is valid (and playable) at any moment; `commit` renames it to `path`, `discard` removes it.
    """

    def __init__(self, path: str, sampling_rate: int):
        self.path = os.path.abspath(path)
        folder, name = os.path.split(self.path)
        descriptor, self.partial_path = tempfile.mkstemp(prefix=f"{name}.", suffix=".partial.wav", dir=folder)
        # mkstemp makes the file private: give it the mode the replaced file had, or a new file's usual mode
        if os.path.exists(self.path):
            mode = os.stat(self.path).st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(self.partial_path, mode)
        self._file = os.fdopen(descriptor, "wb")
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sampling_rate)
        self._wav.writeframes(b"")
        self._file.flush()
        self.samples = 0

    def write(self, audio: np.ndarray) -> None:
        pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
        self._wav.writeframes(pcm.tobytes())  # the wave module patches the header's sizes when they change
        self._file.flush()
        self.samples += pcm.size

    def close(self) -> None:
        """Close the temporary file, keeping it (a valid WAV of what was written)."""
        if not self._file.closed:
            self._wav.close()
            self._file.close()

    def commit(self) -> None:
        self.close()
        os.replace(self.partial_path, self.path)

    def discard(self) -> None:
        self.close()
        os.remove(self.partial_path)


def speak(args: argparse.Namespace) -> int:
    import torch

    from qwen_omni.omni.speech import split_sentences

    text = _read_text(args)
    pieces = split_sentences(text, max_chars=args.max_chars)
    if not pieces:
        raise CommandLineError(f"nothing to say: the text {text!r} is empty.")
    out_folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_folder):
        raise CommandLineError(f"--out {args.out}: the folder {out_folder} does not exist; create it first.")
    if args.voice_prompt and not args.voice_prompt_text:
        raise CommandLineError("--voice-prompt needs --voice-prompt-text (its transcript).")
    model, processor = _load(args.model, args.device)
    voice = _encoded_voice_prompt(args, processor)
    # every prompt is built (and so checked) before --out is touched
    try:
        processor(text=pieces, speaker=args.speaker, return_tensors="pt", **voice)
    except ValueError as error:
        where = f"the text split into {len(pieces)} pieces (row = piece, from 0): " if len(pieces) > 1 else ""
        raise CommandLineError(f"{where}{error}") from None
    if args.seed is not None:
        torch.manual_seed(args.seed)
    output = _stream_speech_to_file(args, model, processor, text, voice)
    print(f"\nWrote {output.samples / processor.sampling_rate:.2f} s of speech to {args.out}", file=sys.stderr)
    return 0


def _encoded_voice_prompt(args: argparse.Namespace, processor) -> dict:
    """`--voice-prompt` encoded once (for the prompt check and for every piece) with its transcript; {} without."""
    if not args.voice_prompt:
        return {}
    audio, rate = _read_audio_file(args.voice_prompt, processor.feature_extractor)
    try:
        return {
            "voice_prompt_ids": processor.encode_voice_prompt([audio], rate),
            "voice_prompt_text": args.voice_prompt_text,
        }
    except ValueError as error:
        raise CommandLineError(f"--voice-prompt {args.voice_prompt}: {error}") from None


def _stream_speech_to_file(args: argparse.Namespace, model, processor, text: str, voice: dict) -> StreamingWav:
    """Speak `text` into `--out` as it is generated, with progress on stderr; `--out` is replaced only when the
    speech is complete, and an interrupted run leaves the speech so far in the partial file."""
    from qwen_omni.omni.speech import generate_speech

    rate = processor.sampling_rate
    output = StreamingWav(args.out, rate)
    started = time.perf_counter()

    def write(audio):
        output.write(audio)
        elapsed = time.perf_counter() - started
        progress = f"\r{output.samples / rate:6.2f} s of audio written in {elapsed:6.2f} s"
        print(progress, end="", file=sys.stderr, flush=True)

    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous_handlers = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # the library's long-text path: the same pieces, streamed one after another and crossfaded
        generate_speech(
            model,
            processor,
            text,
            speaker=args.speaker,
            max_chars=args.max_chars,
            crossfade_ms=args.crossfade_ms,
            on_chunk=write,
            max_duration=args.max_duration,
            **voice,
            **_generate_kwargs(args),
        )
        output.commit()
    except ValueError as error:  # settings `generate` refuses (e.g. --max-new-tokens beyond the model's positions)
        output.discard()
        raise CommandLineError(str(error)) from None
    except Interrupted as signal_name:
        output.close()
        print(file=sys.stderr)
        raise CommandLineError(
            f"interrupted by {signal_name} after {output.samples / rate:.2f} s of speech: {args.out} is left as it "
            f"was; the speech so far is in {output.partial_path}."
        ) from None
    except BaseException:
        output.discard()
        raise
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    return output


def transcribe(args: argparse.Namespace) -> int:
    """Transcribe every readable file, in input order; each file that cannot be used is reported and skipped."""
    failures = 0

    def report(message: str) -> None:
        nonlocal failures
        failures += 1
        print(f"qwen-omni transcribe: error: {message}", file=sys.stderr, flush=True)

    model, processor = _load(args.model, args.device)
    # each clip is read, checked and turned into a prompt alone, so that a clip that cannot be used is reported by name
    prompts: list[tuple[int, list[int]]] = []
    for index, path in enumerate(args.audio):
        try:
            audio, rate = _read_audio_file(path, processor.feature_extractor)
        except CommandLineError as error:
            report(str(error))
            continue
        try:
            ids = processor.apply_transcription_request(audio, sampling_rate=rate, return_tensors=None)["input_ids"][0]
        except ValueError as error:
            report(f"{args.audio[index]}: {error}")
            continue
        prompts.append((index, ids))
    if not prompts:
        return 2
    kwargs = {"do_sample": False, **_generate_kwargs(args)}
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        inputs = processor.pad([ids for _, ids in batch], padding_side="left").to(model.device)
        try:
            outputs = model.generate(**inputs, **kwargs)
        except ValueError as error:  # settings `generate` refuses, the same for every batch
            raise CommandLineError(str(error)) from None
        # whole sequences: `decode` reads the transcript after the prompt's `<|text_start|>`, text ids only
        texts = processor.batch_decode(outputs, skip_special_tokens=True)
        for (index, _), text in zip(batch, texts):
            print(f"{args.audio[index]}\t{text.strip()}" if len(args.audio) > 1 else text.strip(), flush=True)
    return 1 if failures else 0


def serve(args: argparse.Namespace) -> int:
    from qwen_omni.entrypoints.openai.api_server import serve as run_server

    try:
        return run_server(args)
    except ValueError as error:  # a bad option value, named by the server
        raise CommandLineError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-omni", description="Speak and listen with an Omni checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", required=True, help="Omni checkpoint folder (or Hub id)")
        sub.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
        sub.add_argument(
            "--greedy", action="store_true", help="greedy decoding instead of the saved sampling defaults"
        )
        sub.add_argument("--temperature", type=_positive(float, "--temperature"))
        sub.add_argument("--top-p", dest="top_p", type=_positive(float, "--top-p"))
        sub.add_argument(
            "--repetition-penalty", dest="repetition_penalty", type=_positive(float, "--repetition-penalty")
        )
        sub.add_argument("--max-new-tokens", dest="max_new_tokens", type=_positive(int, "--max-new-tokens"))

    speak_parser = commands.add_parser("speak", help="text to speech, streamed into a WAV file")
    common(speak_parser)
    speak_parser.add_argument("--text", help="the text to speak (read from stdin when left out)")
    speak_parser.add_argument(
        "--out", required=True, help="output WAV file (replaced only once all the speech is written)"
    )
    speak_parser.add_argument("--speaker", help="speaker name, as in 'tara: text'")
    speak_parser.add_argument("--voice-prompt", help="reference audio file of the voice to continue")
    speak_parser.add_argument("--voice-prompt-text", help="transcript of --voice-prompt")
    speak_parser.add_argument(
        "--max-duration",
        type=_positive(float, "--max-duration"),
        default=30.0,
        help="seconds per sentence before cutting",
    )
    speak_parser.add_argument(
        "--max-chars", type=_positive(int, "--max-chars"), default=200, help="longest piece of text generated at once"
    )
    speak_parser.add_argument("--crossfade-ms", type=float, default=30.0, help="crossfade between pieces")
    speak_parser.add_argument("--seed", type=int, help="random seed for sampling")
    speak_parser.set_defaults(func=speak)

    transcribe_parser = commands.add_parser("transcribe", help="speech to text, one line per file")
    common(transcribe_parser)
    transcribe_parser.add_argument("audio", nargs="+", help="audio files (any format soundfile reads)")
    transcribe_parser.add_argument("--batch-size", type=_positive(int, "--batch-size"), default=8)
    transcribe_parser.set_defaults(func=transcribe)

    serve_parser = commands.add_parser("serve", help="an OpenAI-compatible speech API (entrypoints/openai)")
    from qwen_omni.entrypoints.openai.api_server import add_serve_arguments

    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(func=serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CommandLineError as error:
        print(f"qwen-omni {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
