"""Voice fine-tuning of an Omni (SNAC-token) checkpoint: LoRA on one speaker's clips with TRL's `SFTTrainer`.

    accelerate launch train/omni_voice_sft.py --model_name_or_path OMNI_DIR --dataset_name data/voice_clips \
        --output_dir out/nova --num_train_epochs 3 --learning_rate 2e-4

`train/sft.py` hands an Omni checkpoint to this script, so the same command works there too. Every TRL/Trainer flag
works (`TrlParser` over `ScriptArguments`, `SFTConfig`, `ModelConfig` with the LoRA rank checked), plus the
recipe's own `VoiceSFTArguments`.
"""

from trl import ScriptArguments, SFTConfig, TrlParser

from qwen_omni.common.lora_arguments import LoraModelConfig
from qwen_omni.omni.voice_sft import VoiceSFTArguments, main


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, SFTConfig, LoraModelConfig, VoiceSFTArguments))
    main(*parser.parse_args_and_config())
