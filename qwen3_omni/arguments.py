"""Argument dataclasses of `train/sft.py` (TRL's, with the defaults this recipe needs, plus the recipe's own) and of
`train/evaluate.py` on a Qwen3-Omni checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available, logging
from trl import SFTConfig

from ..common.lora_arguments import LoraModelConfig, check_lora_alpha, check_lora_rank


logger = logging.get_logger(__name__)

DEFAULT_ASR_PROMPT = "Transcribe the audio into text."


@dataclass
class Qwen3OmniSFTConfig(SFTConfig):
    """`SFTConfig` that falls back to fp32 with a warning where bf16 is not available (TRL defaults to bf16, which
    `TrainingArguments` refuses on a CPU), so the same command and YAML run on a GPU node and on a laptop."""

    def __post_init__(self):
        if self.bf16 is not False and not self.fp16 and not self.use_cpu and not bf16_available():
            logger.warning("bf16 is not supported on this machine (no Ampere+ GPU): training in fp32 instead.")
            self.bf16 = False
        super().__post_init__()


@dataclass
class Qwen3OmniModelConfig(LoraModelConfig):
    """`ModelConfig` with LoRA on by default, plus 4-bit experts, expert offload and the memory estimate. A
    `bfloat16` dtype falls back to `float32` with a warning where bf16 training is not available. The LoRA rank and
    alpha are checked when parsed ([`LoraModelConfig`])."""

    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (False: full fine-tuning)."})
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "LoRA dropout. On the router and experts it needs the routed LoRA (--moe_lora_impl routed, "
            "the default), which drops out each routed token's input."
        },
    )
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "Double quantization (8-bit block scales) of the 4-bit weights and experts."}
    )
    quantize_experts: bool | None = field(
        default=None,
        metadata={
            "help": "Store the fused MoE experts in 4 bits (NF4, quantized layer by layer while loading). "
            "Default: on with --load_in_4bit; true alone quantizes the experts only."
        },
    )
    quantize_towers: bool = field(
        default=True,
        metadata={
            "help": "With --load_in_4bit, store the audio and vision encoders' nn.Linear layers in 4 bits as "
            "well (what transformers' BitsAndBytesConfig does by default). False keeps them in --dtype: about "
            "1.7 GB more on 30B-A3B, for encoder features closer to the bf16 model's."
        },
    )
    offload_experts: bool = field(
        default=False,
        metadata={
            "help": "Keep the 4-bit experts in pinned host memory and copy each layer's to the GPU one layer "
            "ahead of use (train with gradient checkpointing). A no-op without CUDA."
        },
    )
    estimate_memory: bool = field(
        default=False,
        metadata={
            "help": "Print the training memory of this configuration (weights, adapter, gradients, optimizer "
            "state, activations) from the checkpoint's config alone, built on the meta device, and exit."
        },
    )

    def quantization_kwargs(self) -> dict:
        """The 4-bit options as `load_thinker` and `load_talker_model` take them."""
        return dict(
            load_in_4bit=self.load_in_4bit,
            quantize_experts=self.quantize_experts,
            quantize_towers=self.quantize_towers,
            bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=self.use_bnb_nested_quant,
        )

    def __post_init__(self):
        super().__post_init__()
        if self.quantize_experts is None:
            self.quantize_experts = self.load_in_4bit
        # the estimate is for the machine the run is meant for, not for this one
        if self.dtype == "bfloat16" and not bf16_available() and not self.estimate_memory:
            logger.warning("bf16 is not supported on this machine: loading the model in float32 instead.")
            self.dtype = "float32"


@dataclass
class Qwen3OmniArguments:
    """The recipe's own arguments (data, loss weights, LoRA targets, MoE kernels)."""

    system_prompt: str | None = field(
        default=None, metadata={"help": "System turn prepended to every conversation that has none."}
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Evaluation conversations (file, folder or Hub id), used when eval is on."}
    )
    loss_weights: str | None = field(
        default=None,
        metadata={
            "help": "Per-sample loss weights by input modality, JSON (or a YAML mapping), e.g. "
            '\'{"text": 1.0, "audio": 0.8, "vision": 0.9}\' (the default).'
        },
    )
    overlong_samples: str = field(
        default="truncate",
        metadata={"help": "Samples longer than max_length: 'truncate' or 'drop'. Both are counted in the logs."},
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Row format: 'auto' (detected from the first rows, logged), 'native' (typed content parts), "
            "'sharegpt' (LLaMA-Factory from/value turns) or 'tagged' (LLaMA-Factory OpenAI / ms-swift messages). "
            "In all, <audio>/<image>/<video> tags take the row's audios/images/videos entries in order."
        },
    )
    media_dir: str | None = field(
        default=None,
        metadata={"help": "Folder relative media paths are resolved against (default: the data file's folder)."},
    )
    max_skipped_fraction: float = field(
        default=0.01,
        metadata={
            "help": "Most rows of a dataset that may be refused at load (placeholder/media count mismatch, "
            "missing media, ...) or skipped while training (undecodable media, overlong rows dropped) before "
            "the run stops with the summary; 0 refuses any refusal, 1 allows all."
        },
    )
    use_audio_in_video: bool = field(
        default=False,
        metadata={
            "help": "Feed each video's sound to the model too (Qwen3-Omni's audio-in-video, tokens interleaved "
            "by time): LLaMA-Factory rows' paired <video><audio> (the audio is the video's sound), else the "
            "sound track inside the video file; rows with neither are refused."
        },
    )
    video_fps: float = field(
        default=2.0,
        metadata={
            "help": "Frame rate video files are sampled at, and the rate of videos given as frame lists "
            "(qwen-omni-utils' fps / sample_fps; 2 is its default, as at inference)."
        },
    )
    max_video_frames: int | None = field(
        default=None, metadata={"help": "Most frames sampled from a video file (default: qwen-omni-utils', 768)."}
    )
    experts_implementation: str | None = field(
        default=None,
        metadata={
            "help": "MoE experts kernel: eager, grouped_mm, batched_mm; default grouped_mm on SM80+ GPUs, "
            "eager elsewhere."
        },
    )
    lora_target_router: bool = field(default=True, metadata={"help": "LoRA on the routers (mlp.gate.weight)."})
    lora_target_experts: bool = field(
        default=True, metadata={"help": "LoRA on the fused experts (mlp.experts.gate_up_proj / down_proj)."}
    )
    lora_expert_r: int | None = field(default=None, metadata={"help": "LoRA rank of each expert (default lora_r)."})
    lora_expert_alpha: int | None = field(
        default=None, metadata={"help": "LoRA alpha of the experts (default lora_alpha * lora_expert_r / lora_r)."}
    )
    moe_lora_impl: str = field(
        default="routed",
        metadata={
            "help": "Forward of the router/expert LoRA: 'routed' (update applied to the routed tokens only, "
            "same adapter files) or 'peft' (PEFT's wrapper, which materialises W + dW for every expert)."
        },
    )
    lora_towers: list[str] = field(
        default_factory=list, metadata={"help": "Encoders that get LoRA too: audio and/or vision (frozen otherwise)."}
    )

    def __post_init__(self):
        check_lora_rank("--lora_expert_r", self.lora_expert_r)
        check_lora_alpha("--lora_expert_alpha", self.lora_expert_alpha, rank_flag="--lora_expert_r")


@dataclass
class Qwen3OmniEvaluateArguments:
    """The Qwen3-Omni evaluation's own arguments (the model and its loading flags are `Qwen3OmniModelConfig`'s)."""

    dataset_name: str = field(
        metadata={
            "help": "Evaluation rows: any conversation file/folder/Hub id train/sft.py "
            "reads, or an audio dataset with an audio and a text column."
        }
    )
    output_dir: str = field(metadata={"help": "Where eval_results.json, predictions.jsonl and the plot go."})
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "The fine-tune: a LoRA adapter folder (train/sft.py, train/talker_voice_sft.py) or a merged model "
            "folder (train/merge.py). Without it the base alone is evaluated (both columns equal)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    split: str = field(default="test", metadata={"help": "Split of a datasets source."})
    task: str = field(
        default="auto",
        metadata={
            "help": "Score every row as asr, text, exact_match or "
            "multiple_choice; auto: audio rows asr, a letter reference "
            "multiple_choice, other text."
        },
    )
    dataset_format: str = field(default="auto", metadata={"help": "Conversation format (see train/sft.py)."})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of an audio dataset."})
    text_column: str = field(default="text", metadata={"help": "Transcript column of an audio dataset."})
    asr_prompt: str = field(default=DEFAULT_ASR_PROMPT, metadata={"help": "User text sent with each clip."})
    system_prompt: str | None = field(default=None, metadata={"help": "System turn for rows that have none."})
    media_dir: str | None = field(default=None, metadata={"help": "Folder relative media paths are resolved in."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N usable rows only."})
    batch_size: int = field(default=8, metadata={"help": "Rows generated together."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token budget of each answer (thinking included)."})
    language: str = field(default="en", metadata={"help": "en: Whisper's English normaliser; else its basic one."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: where the model loads)."})
    evaluate_voice: str = field(
        default="auto", metadata={"help": "auto (when the checkpoint has a Talker), true, false."}
    )
    speaker: str | None = field(
        default=None,
        metadata={"help": "Speaker under test (default: the voice adapter's, or the fine-tune's new one)."},
    )
    base_speaker: str | None = field(
        default=None,
        metadata={
            "help": "Base speaker the tested voice is compared with (default: the same, or the one it started from)."
        },
    )
    voice_samples: int = field(default=16, metadata={"help": "Eval texts each speaker speaks."})
    talker_max_new_tokens: int = field(default=1024, metadata={"help": "Codec frames per spoken text at most."})
    transcriber: str | None = field(
        default=None, metadata={"help": "An ASR model (e.g. openai/whisper-small) that also transcribes the speech."}
    )
    speaker_encoder: str | None = field(
        default=None,
        metadata={"help": "Speaker-verification model (e.g. microsoft/wavlm-base-plus-sv) for speaker similarity."},
    )
    speaker_reference: str | None = field(
        default=None, metadata={"help": "Folder of the tested speaker's reference clips (every audio file in it)."}
    )

    def __post_init__(self):
        if self.evaluate_voice not in ("auto", "true", "false"):
            raise ValueError(f"--evaluate_voice {self.evaluate_voice!r}: use auto, true or false.")

    def evaluation_kwargs(self, model_args: Qwen3OmniModelConfig) -> dict:
        """`evaluate_qwen3_omni`'s keyword arguments: these fields (less the dataset and output folder, which it takes
        positionally) and the loading flags of `model_args`."""
        kwargs = dataclasses.asdict(self)
        for positional in ("dataset_name", "output_dir"):
            del kwargs[positional]
        evaluate_voice = kwargs.pop("evaluate_voice")
        return {
            **kwargs,
            "dtype": model_args.dtype or "auto",
            "quantization_kwargs": model_args.quantization_kwargs(),
            "attn_implementation": model_args.attn_implementation,
            "evaluate_voice_of_talker": None if evaluate_voice == "auto" else evaluate_voice == "true",
        }


def bf16_available() -> bool:
    """Whether `TrainingArguments` accepts `bf16=True` here (an Ampere+ GPU or an XLA device)."""
    return is_torch_bf16_gpu_available() or is_torch_xla_available()
