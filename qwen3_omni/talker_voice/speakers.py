# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The speaker registry: names keyed as `generate(speaker=...)` looks them up, the new speaker's codec row, and the files written beside an adapter (`talker_voice_config.json`, `voice_preservation.json`)."""

from __future__ import annotations

import json
import os

import torch
from transformers import Qwen3OmniMoeForConditionalGeneration

from ...common.hub import TALKER_VOICE_CONFIG_NAME


# Written next to the adapter and copied into the merge: the existing speakers the run kept (read_voice_preservation).
VOICE_PRESERVATION_NAME = "voice_preservation.json"


def speaker_key(name: str, option: str = "--speaker_name") -> str:
    """The key of speaker `name` in `talker_config.speaker_id`: `name.lower()`, the one `generate(speaker=name)` looks
    up (transformers 5.23). Every speaker name of the recipe goes through here once, where it enters.

    Raises:
        `ValueError` for an empty name or one with surrounding whitespace: `generate` does not strip, so `" Ethan"`
        would be a second key `" ethan"` beside `"ethan"`, reachable only with the space.
    """
    if not name or name != name.strip():
        raise ValueError(
            f"{option} {name!r} is empty or starts or ends with whitespace: generate(speaker=...) looks a speaker up "
            f"by name.lower() without stripping, so it would be a key of its own beside {name.strip().lower()!r}. "
            f"Pass {option} {name.strip()!r}."
        )
    return name.lower()


def resolve_speaker(
    config, speaker_name: str | None = None, init_speaker: str = "Ethan", adapt_speaker: str | None = None
) -> tuple[str, int, int | None]:
    """The speaker to train: `(name, codec id, codec id to initialise the row from or None)`.

    A new `speaker_name` takes the first free codec id after the existing speakers (an id the Talker never predicts:
    `generate` suppresses the last 1024 ids but `codec_eos`); `adapt_speaker` trains an existing voice. Names are
    keyed by [`speaker_key`], as `generate(speaker=...)` looks them up.

    Raises:
        `ValueError` for both or neither option, an unknown speaker, a new name that already exists, or a name with
        surrounding whitespace.
    """
    talker = config.talker_config
    speakers = dict(talker.speaker_id or {})
    if (speaker_name is None) == (adapt_speaker is None):
        raise ValueError(
            "Pass exactly one of --speaker_name NEW (add a voice) or --adapt_speaker EXISTING (fine-tune one of "
            f"{sorted(speakers)}); got speaker_name={speaker_name!r}, adapt_speaker={adapt_speaker!r}."
        )
    if adapt_speaker is not None:
        name = speaker_key(adapt_speaker, "--adapt_speaker")
        if name not in speakers:
            raise ValueError(f"--adapt_speaker {adapt_speaker!r} is not a speaker of this Talker: {sorted(speakers)}.")
        return name, speakers[name], None
    name = speaker_key(speaker_name, "--speaker_name")
    if name in speakers:
        raise ValueError(
            f"The speaker {speaker_name!r} already exists (id {speakers[name]}); pass --adapt_speaker {speaker_name} "
            "to fine-tune that voice, or choose another --speaker_name."
        )
    init_name = speaker_key(init_speaker, "--init_speaker")
    if init_name not in speakers:
        raise ValueError(f"--init_speaker {init_speaker!r} is not a speaker of this Talker: {sorted(speakers)}.")
    vocab_size = talker.text_config.vocab_size
    reserved = {
        talker.codec_pad_id,
        talker.codec_bos_id,
        talker.codec_eos_token_id,
        talker.codec_nothink_id,
        talker.codec_think_bos_id,
        talker.codec_think_eos_id,
        *speakers.values(),
    }
    codec_id = max(speakers.values()) + 1
    while codec_id in reserved:
        codec_id += 1
    if codec_id >= vocab_size:
        raise ValueError(f"No free codec id after the speakers {speakers} in the Talker's vocabulary of {vocab_size}.")
    return name, codec_id, speakers[init_name]


def resolve_preserved_speakers(config, preserve_speakers: str, trained_speaker: str) -> dict[str, int]:
    """The existing speakers kept speaking as the base does, `{name: codec id}`, from `--preserve_speakers`: `"all"`
    (every speaker of the base but `trained_speaker`), `"none"`, or comma-separated names.

    Raises:
        `ValueError` for an unknown name, or the trained speaker itself.
    """
    speakers = dict(config.talker_config.speaker_id or {})
    value = preserve_speakers.strip()
    if value.lower() == "none":
        return {}
    if value.lower() == "all":
        return {name: codec_id for name, codec_id in speakers.items() if name != trained_speaker}
    preserved = {}
    for part in value.split(","):
        name = speaker_key(part.strip(), "--preserve_speakers")
        if name not in speakers:
            raise ValueError(
                f"--preserve_speakers names {part.strip()!r}, not a speaker of this Talker: {sorted(speakers)} (or "
                "pass 'all' or 'none')."
            )
        if name == trained_speaker:
            raise ValueError(
                f"--preserve_speakers names {name!r}, the speaker this run trains: it cannot both change and stay "
                "as the base. Leave it out."
            )
        preserved[name] = speakers[name]
    return preserved


def add_speaker(model: Qwen3OmniMoeForConditionalGeneration, name: str, codec_id: int, init_id: int | None) -> None:
    """Register `name` -> `codec_id` in `talker_config.speaker_id` and copy row `init_id` of the Talker's codec
    embedding into row `codec_id` (nothing to copy when adapting an existing speaker)."""
    if init_id is not None:
        with torch.no_grad():
            embedding = model.talker.get_input_embeddings().weight
            embedding[codec_id] = embedding[init_id]
    speakers = dict(model.config.talker_config.speaker_id or {})
    speakers[name] = codec_id
    model.config.talker_config.speaker_id = speakers


def write_talker_voice_config(folder: str | os.PathLike, name: str, codec_id: int, init_id: int | None) -> None:
    with open(os.path.join(folder, TALKER_VOICE_CONFIG_NAME), "w") as handle:
        json.dump({"speaker_name": name, "speaker_codec_id": codec_id, "init_codec_id": init_id}, handle, indent=1)


def read_talker_voice_config(folder: str | os.PathLike) -> dict | None:
    """The adapter's `talker_voice_config.json` (None when there is none).

    Raises:
        `ValueError` when its speaker name is not the key `generate` looks up ([`speaker_key`]).
    """
    path = os.path.join(folder, TALKER_VOICE_CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        voice = json.load(handle)
    if speaker_key(voice["speaker_name"], f"speaker_name of {path}") != voice["speaker_name"]:
        raise ValueError(
            f"speaker_name {voice['speaker_name']!r} of {path} is not lower-case, so generate(speaker=...) could not "
            f"find it: write {voice['speaker_name'].lower()!r}."
        )
    return voice


def write_voice_preservation(folder: str | os.PathLike, preservation: dict) -> None:
    """Write [`read_voice_preservation`]'s record into `folder`."""
    with open(os.path.join(folder, VOICE_PRESERVATION_NAME), "w") as handle:
        json.dump(preservation, handle, indent=1)


def read_voice_preservation(folder: str | os.PathLike) -> dict | None:
    """Which existing speakers a Talker voice run kept speaking as its base, read from an adapter folder or a merged
    checkpoint (`voice_preservation.json`, which `train/merge.py` copies); None when the folder has none.

    Returns:
        `{"speaker_name": trained speaker, "preserved_speakers": {name: codec id}, "replaced_speakers": [the base's
        other speakers, neither trained nor preserved], "preserve_weight", "preserve_batch_size",
        "preserve_max_frames", "num_preserve_texts", "num_preserve_examples"}`.
    """
    path = os.path.join(folder, VOICE_PRESERVATION_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)
