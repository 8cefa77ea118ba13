# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Encode a speech corpus into SNAC token ids once, for train/pretrain.py and voice fine-tuning.

    python train/prepare_data.py --dataset_name data/demo_corpus --codec hubertsiuzdak/snac_24khz \
        --output_dir data/prepared/demo
    python train/prepare_data.py --dataset_name openslr/librispeech_asr --dataset_config clean --dataset_split \
        train.100 --codec hubertsiuzdak/snac_24khz --output_dir data/prepared/ls100 --streaming --num_proc 8

The source is a Hub id or a local `datasets` folder, a JSONL / CSV of audio paths + transcripts, a folder with a
`metadata.jsonl`, or a LibriSpeech / LibriTTS tree (see `qwen_omni.common.clips.load_audio_text_rows`). Audio is
decoded with soundfile (no FFmpeg), resampled, and encoded in length-sorted batches (on the GPU when there is one).
The output folder is a resumable set of Arrow shards: a second run skips finished shards; unusable rows are skipped
and listed in `<output_dir>/summary.json`. Pass the folder to `train/pretrain.py --dataset_name`.
"""

import logging as std_logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from qwen_omni.common.clips import load_audio_text_rows
from qwen_omni.common.launching import check_output_dir, configure_logging
from qwen_omni.omni.corpus import prepare_dataset
from qwen_omni.processing_omni import load_audio_tokenizer


@dataclass
class PrepareArguments:
    dataset_name: str = field(metadata={"help": "Hub id, datasets folder, JSONL/CSV file or corpus folder."})
    output_dir: str = field(metadata={"help": "Where the prepared Arrow shards and summary.json are written."})
    codec: str = field(
        default="hubertsiuzdak/snac_24khz", metadata={"help": "SNAC codec or Omni checkpoint (Hub id or folder)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a `datasets` source."})
    audio_column: str = field(default="audio", metadata={"help": "Column holding audio (path or Audio)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the transcript."})
    speaker_column: str | None = field(default="speaker", metadata={"help": "Column holding the speaker."})
    max_duration: float = field(default=30.0, metadata={"help": "Clips longer than this (seconds) are skipped."})
    shard_size: int = field(default=512, metadata={"help": "Rows per shard (unit of resumable work)."})
    encode_batch_size: int = field(default=16, metadata={"help": "Clips per codec call (length-sorted)."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes decoding and resampling audio."})
    streaming: bool = field(default=False, metadata={"help": "Stream the source instead of downloading it whole."})
    device: str | None = field(default=None, metadata={"help": "Codec device; default cuda when available."})


def main(args: PrepareArguments):
    check_output_dir(args.output_dir, {"--dataset_name": args.dataset_name, "--codec": args.codec})
    audio_tokenizer = load_audio_tokenizer(args.codec)
    rows = load_audio_text_rows(
        args.dataset_name,
        args.audio_column,
        args.text_column,
        args.speaker_column,
        split=args.dataset_split,
        dataset_config=args.dataset_config,
        streaming=args.streaming,
    )
    return prepare_dataset(
        rows,
        args.output_dir,
        audio_tokenizer,
        max_duration=args.max_duration,
        shard_size=args.shard_size,
        num_proc=args.num_proc,
        device=args.device,
        source_name=args.dataset_name,
        encode_batch_size=args.encode_batch_size,
    )


if __name__ == "__main__":
    configure_logging(std_logging.INFO)
    (prepare_args,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses(args=sys.argv[1:])
    main(prepare_args)
