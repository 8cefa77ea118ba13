"""Merge a LoRA adapter into its Qwen3-Omni base and write a full checkpoint.

    python train/merge.py --adapter out --output_dir merged [--base_model Qwen/Qwen3-Omni-30B-A3B-Instruct]

A full base keeps its talker and code2wav; the result loads with `Qwen3OmniMoeForConditionalGeneration`. A Talker voice
adapter (`train/talker_voice_sft.py`, with `talker_voice_config.json`) is folded into the Talker instead, and the
checkpoint's `talker_config.speaker_id` gains its speaker.
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from qwen_omni.qwen3_omni import merge_adapter
from qwen_omni.qwen3_omni.adapter_merge import merge_talker_voice_adapter
from qwen_omni.qwen3_omni.talker_voice import read_talker_voice_config


@dataclass
class MergeArguments:
    adapter: str = field(metadata={"help": "Adapter folder or Hub id (adapter_config.json + safetensors)."})
    output_dir: str = field(metadata={"help": "Where the merged checkpoint is written."})
    base_model: str | None = field(default=None, metadata={"help": "Base model (default: the adapter's base)."})
    dtype: str = field(default="auto", metadata={"help": "Dtype to load and save the weights in."})


if __name__ == "__main__":
    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses()
    merge = merge_talker_voice_adapter if read_talker_voice_config(args.adapter) else merge_adapter
    merge(args.adapter, args.output_dir, base_model_name_or_path=args.base_model, dtype=args.dtype)
