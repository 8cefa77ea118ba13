# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
Build a new Omni checkpoint from a Qwen3-family LM (or from scratch) and a SNAC codec.

    # from a pretrained LM (Hub id or local folder)
    python train/init_model.py --text-model Qwen/Qwen3-0.6B --codec hubertsiuzdak/snac_24khz --output-dir omni-0.6b

    # from scratch: the qwen-omni seed's 7M-parameter shape around any tokenizer
    python train/init_model.py --from-scratch --tokenizer gpt2 --codec hubertsiuzdak/snac_24khz \
        --hidden-size 128 --num-layers 3 --num-heads 4 --output-dir omni-tiny
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from qwen_omni.common.launching import check_output_dir
from qwen_omni.omni.build import build_omni_from_scratch, build_omni_from_text_model, save_omni_checkpoint


@dataclass
class InitModelArguments:
    output_dir: str = field(metadata={"help": "Folder the checkpoint is written to."})
    codec: str = field(default="hubertsiuzdak/snac_24khz", metadata={"help": "SNAC codec: Hub id or local folder."})
    text_model: str | None = field(default=None, metadata={"help": "Qwen3-family causal LM: Hub id or local folder."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer (defaults to the text model's)."})
    from_scratch: bool = field(default=False, metadata={"help": "Random weights of the size given below."})
    hidden_size: int = field(default=128)
    num_layers: int = field(default=3)
    num_heads: int = field(default=4)
    num_kv_heads: int = field(default=2)
    intermediate_size: int | None = field(default=None, metadata={"help": "Defaults to 4 x hidden size."})
    max_position_embeddings: int = field(default=4096)
    text_loss_weight: float = field(default=1.0)
    audio_loss_weight: float = field(default=1.0)
    pad_vocab_to_multiple_of: int = field(default=64)
    seed: int = field(default=0)


def main(args: InitModelArguments) -> None:
    inputs = {"--text-model": args.text_model, "--tokenizer": args.tokenizer, "--codec": args.codec}
    check_output_dir(args.output_dir, inputs, flag="--output-dir")
    if args.from_scratch:
        if not args.tokenizer:
            raise SystemExit("--from-scratch needs --tokenizer (any Hugging Face tokenizer: Hub id or folder).")
        model, processor = build_omni_from_scratch(
            args.tokenizer,
            args.codec,
            hidden_size=args.hidden_size,
            num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_heads,
            num_key_value_heads=args.num_kv_heads,
            intermediate_size=args.intermediate_size,
            max_position_embeddings=args.max_position_embeddings,
            text_loss_weight=args.text_loss_weight,
            audio_loss_weight=args.audio_loss_weight,
            pad_vocab_to_multiple_of=args.pad_vocab_to_multiple_of,
            seed=args.seed,
        )
    else:
        if not args.text_model:
            raise SystemExit("Give --text-model (a Qwen3-family LM), or --from-scratch with --tokenizer.")
        model, processor = build_omni_from_text_model(
            args.text_model,
            args.codec,
            tokenizer=args.tokenizer,
            text_loss_weight=args.text_loss_weight,
            audio_loss_weight=args.audio_loss_weight,
            pad_vocab_to_multiple_of=args.pad_vocab_to_multiple_of,
        )
    save_omni_checkpoint(model, processor, args.output_dir)
    print(f"Omni checkpoint ({model.num_parameters() / 1e6:.1f}M parameters) written to {args.output_dir}")


if __name__ == "__main__":
    main(HfArgumentParser(InitModelArguments).parse_args_into_dataclasses()[0])
