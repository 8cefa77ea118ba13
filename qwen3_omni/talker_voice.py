# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Teach Qwen3-Omni's Talker a voice: LoRA on the Talker and its code predictor, teacher-forced exactly as
`Qwen3OmniMoeForConditionalGeneration.generate` (transformers 5.23) runs them.

How `generate` feeds the Talker, and how training rebuilds it for a clip (prompt, transcript, Mimi codes `(T, 16)`):

- The Thinker reads the conversation `prompt + transcript + <|im_end|>` (here in one teacher-forced, gradient-free
  forward: what `generate` sees when the Thinker says exactly the transcript). Its input embeddings
  (`hidden_states[0]`) and its `accept_hidden_layer` hidden states feed the Talker.
- The user turn: multimodal positions through `talker.hidden_projection` of the hidden states, text positions through
  `talker.text_projection` of the embeddings (transformers' `_get_talker_user_parts`).
- The assistant turn (transformers' `_get_talker_assistant_parts`): `<|im_start|>assistant\\n`, then `tts_pad` x 4 +
  `tts_bos` + the first text token, added to the codec ids `nothink, think_bos, think_eos, <speaker>, pad, bos`.
- Codec step `i` (frame `i` of the clip): the sum of the embeddings of frame `i`'s 16 codes (codebook 0 through the
  Talker's `codec_embedding`, codebook `j` through the code predictor's `codec_embedding[j - 1]`) plus the `i`-th
  trailing text embedding (text token `i + 1`, then `tts_eos`, then `tts_pad` once the text is spent).
- The Talker's `codec_head` at the last prompt position predicts codebook 0 of frame 0, at step `i` that of frame
  `i + 1`, and at the last step `codec_eos`.
- The code predictor, for frame `i`: inputs `[talker hidden state that predicted frame i, embedding of code 0,
  code_predictor.codec_embedding[j - 1](code j) for j = 1..14]`; `lm_head[j - 1]` at position `j` predicts code `j`.

The loss is the cross-entropy of both heads, logged separately (`talker_loss`, `code_predictor_loss`). The Thinker is
frozen and runs without gradients; its outputs can be computed once per clip ([`cache_thinker_outputs`]).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoConfig, PretrainedConfig, Qwen3OmniMoeForConditionalGeneration, Trainer
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeTalkerTextExperts
from transformers.utils import logging

from ..common.hub import TALKER_VOICE_CONFIG_NAME
from ..common.launching import CompleteCheckpointsMixin
from ..common.lora_arguments import check_lora_rank
from .collator import IGNORE_INDEX
from .loading import from_pretrained_quantized, linear_4bit_config
from .lora_targets import ATTENTION_PROJECTIONS, EXPERT_PARAMETERS, ROUTER_PARAMETER
from .quantized_experts import ExpertQuantizationConfig, target_parameter_names
from .talker_voice_data import EncodedClip


logger = logging.get_logger(__name__)

# Written next to the adapter and copied into the merge: the existing speakers the run kept (read_voice_preservation).
VOICE_PRESERVATION_NAME = "voice_preservation.json"
TALKER_PREFIX = "talker.model."
CODE_PREDICTOR_PREFIX = "talker.code_predictor.model."
CODE_PREDICTOR_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# The code predictor's dense MLP can only be adapted through its weights (`target_parameters`, opt-in): PEFT 0.21 reads
# a `target_modules` entry ending in `gate_proj` / `up_proj` / `down_proj` on a `qwen3_omni_moe` model as a
# transformers-4 expert name and re-targets it to every fused `mlp.experts` of the model, the Thinker's included. A
# weight-level LoRA computes `W + dW` and a full-size weight gradient at every step, which costs ~0.25x of a frozen
# step (bench/bench_talker_lora.py), so by default only the code predictor's attention is adapted.
CODE_PREDICTOR_MLP_WEIGHTS = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
CODEC_EMBEDDING = "talker.model.codec_embedding"
PRESERVE_LOSSES = ("kl", "codes")


@dataclass
class TalkerVoiceArguments:
    """The Talker voice recipe's own options (TRL's `ScriptArguments` / `SFTConfig` / `ModelConfig` hold the rest)."""

    speaker_name: str | None = field(
        default=None,
        metadata={"help": "Name of the new voice: talker_config.speaker_id gains it and a trained codec-embedding "
                  "row, so that generate(..., speaker=NAME) speaks with it."},
    )
    init_speaker: str = field(
        default="Ethan", metadata={"help": "Existing speaker whose codec-embedding row the new one starts from."}
    )
    adapt_speaker: str | None = field(
        default=None, metadata={"help": "Fine-tune this existing voice (its row trains) instead of adding one."}
    )
    preserve_speakers: str = field(
        default="all",
        metadata={"help": "Existing speakers kept speaking as the base does: 'all' (every speaker but the trained "
                  "one), 'none' (the new voice may replace them), or comma-separated names. Each step also trains on "
                  "the base Talker's own greedy codes for them (see docs/talker_voice.md)."},
    )
    preserve_weight: float = field(
        default=1.0, metadata={"help": "Weight of the preserved speakers' loss next to the new voice's (> 0)."}
    )
    preserve_loss: str = field(
        default="codes",
        metadata={"help": "Loss on the preserved speakers' base codes: 'codes' (cross-entropy on them) or 'kl' (to "
                  "the frozen base's distributions, the adapter disabled: one more forward without gradients)."},
    )
    preserve_texts: str | None = field(
        default=None,
        metadata={"help": "Text file, one sentence a line, that the preserved speakers speak besides the clips' "
                  "transcripts (default: the built-in PRESERVE_TEXTS, English and Chinese)."},
    )
    preserve_batch_size: int | None = field(
        default=None,
        metadata={"help": "Preserved-speaker examples added to every step's batch (default "
                  "per_device_train_batch_size)."},
    )
    preserve_max_frames: int | None = field(
        default=None,
        metadata={"help": "Longest base speech generated per preserved example, in codec frames (default twice the "
                  "longest clip's); longer speech is cut there and its rest not trained."},
    )
    codec_name_or_path: str = field(
        default="kyutai/mimi", metadata={"help": "Mimi codec (Hub id or folder) the clips are encoded with."}
    )
    codes_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder of the cached Mimi codes (default OUTPUT_DIR/mimi_codes)."}
    )
    audio_column: str = field(default="audio", metadata={"help": "Column holding the audio (path or Audio)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the transcript."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Column holding a user prompt per clip (default: user_prompt_template)."}
    )
    user_prompt_template: str = field(
        default="Read this aloud: {text}",
        metadata={"help": "User turn of clips without a prompt; {text} is the transcript the assistant speaks."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System turn of every conversation."})
    max_duration: float = field(default=30.0, metadata={"help": "Clips longer than this (seconds) are skipped."})
    silence_threshold: float = field(
        default=1e-3, metadata={"help": "Clips whose peak amplitude is below this are skipped as silent."}
    )
    allow_mixed_sampling_rates: bool = field(
        default=False, metadata={"help": "Accept clips at several sampling rates (all are resampled to Mimi's)."}
    )
    cache_thinker_outputs: bool = field(
        default=True,
        metadata={"help": "Run the frozen Thinker once per clip before training and keep its outputs (False: run "
                  "it, without gradients, at every step)."},
    )
    experts_implementation: str | None = field(
        default=None, metadata={"help": "MoE experts kernel of the Thinker: eager, grouped_mm, ..."}
    )
    lora_target_router: bool = field(default=True, metadata={"help": "LoRA on the Talker's routers."})
    lora_target_experts: bool = field(default=True, metadata={"help": "LoRA on the Talker's fused experts."})
    lora_target_code_predictor: bool = field(
        default=True, metadata={"help": "LoRA on the code predictor's attention projections."}
    )
    lora_target_code_predictor_mlp: bool = field(
        default=False,
        metadata={"help": "Also LoRA on the code predictor's MLP weights (W + dW: ~0.25x slower steps, more "
                  "capacity)."},
    )
    lora_expert_r: int | None = field(default=None, metadata={"help": "LoRA rank of each expert (default lora_r)."})
    moe_lora_impl: str = field(
        default="routed",
        metadata={"help": "Forward of the expert LoRA: 'routed' (routed tokens only) or 'peft' (PEFT's wrapper)."},
    )

    def __post_init__(self):
        check_lora_rank("--lora_expert_r", self.lora_expert_r)
        for option in ("preserve_batch_size", "preserve_max_frames"):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise ValueError(f"--{option} must be at least 1, got {value}; leave it out for the default.")
        if self.preserve_loss not in PRESERVE_LOSSES:
            raise ValueError(f"--preserve_loss must be one of {PRESERVE_LOSSES}, got {self.preserve_loss!r}.")
        if not self.preserve_weight > 0:
            raise ValueError(
                f"--preserve_weight must be > 0, got {self.preserve_weight}; to let the new voice replace the "
                "existing speakers pass --preserve_speakers none instead."
            )


# ---------------------------------------------------------------------------------------------------- checkpoint
def check_has_talker(config: PretrainedConfig, name: str = "the checkpoint") -> None:
    """Refuse a checkpoint without a Talker (thinker-only, or `enable_audio_output: false` such as the Thinking and
    Captioner variants)."""
    if config.model_type != "qwen3_omni_moe" or not getattr(config, "enable_audio_output", False):
        raise ValueError(
            f"{name} (model_type={config.model_type!r}, enable_audio_output="
            f"{getattr(config, 'enable_audio_output', None)}) has no Talker, so it cannot learn a voice: the Thinking "
            "and Captioner variants of Qwen3-Omni answer in text only. Use a checkpoint that speaks, such as "
            "Qwen/Qwen3-Omni-30B-A3B-Instruct (train the text of the others with train/sft.py)."
        )


# Kept in the compute dtype on a 4-bit base: the Talker's codec head, the code predictor (small, and its MLP weights
# can be LoRA parameter targets, which a bitsandbytes weight cannot be) and the vocoder.
UNQUANTIZED_MODULES = ("talker.codec_head", "talker.code_predictor", "code2wav")


def load_talker_model(
    model_name_or_path: str,
    *,
    load_in_4bit: bool = False,
    quantize_experts: bool | None = None,
    quantize_towers: bool = True,
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_use_double_quant: bool = True,
    **kwargs,
) -> Qwen3OmniMoeForConditionalGeneration:
    """Load a full Qwen3-Omni (Thinker, Talker, code2wav) after checking it has a Talker, with the Talker's experts
    made routable ([`make_talker_experts_routable`]).

    With `load_in_4bit` the base is a QLoRA one: every fused expert tensor (the Thinker's and the Talker's) in NF4 as
    it loads, unless `quantize_experts=False` (`quantize_experts=True` alone quantizes the experts only), and the
    `nn.Linear` layers through bitsandbytes, except the Thinker's LM head, the Talker's codec head, the code
    predictor, code2wav and, with `quantize_towers=False`, the Thinker's encoders. Other keyword arguments go
    to `from_pretrained`.
    """
    config = AutoConfig.from_pretrained(model_name_or_path, revision=kwargs.get("revision"))
    check_has_talker(config, model_name_or_path)
    quantize_experts = load_in_4bit if quantize_experts is None else quantize_experts
    model = from_pretrained_quantized(
        Qwen3OmniMoeForConditionalGeneration,
        model_name_or_path,
        quantization_config=linear_4bit_config(
            kwargs.get("dtype", "auto"), bnb_4bit_quant_type, bnb_4bit_use_double_quant,
            quantize_towers=quantize_towers, thinker_prefix="thinker.", keep_unquantized=UNQUANTIZED_MODULES,
        ) if load_in_4bit else None,
        expert_quantization=ExpertQuantizationConfig(
            quant_type=bnb_4bit_quant_type, double_quant=bnb_4bit_use_double_quant
        ) if quantize_experts else None,
        **kwargs,
    )
    make_talker_experts_routable(model)
    return model


# ---------------------------------------------------------------------------------------------------- speaker
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
        talker.codec_pad_id, talker.codec_bos_id, talker.codec_eos_token_id, talker.codec_nothink_id,
        talker.codec_think_bos_id, talker.codec_think_eos_id, *speakers.values(),
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


# ---------------------------------------------------------------------------------------------------- LoRA
class RoutableTalkerExperts(Qwen3OmniMoeTalkerTextExperts):
    """The Talker's fused experts with the interface of transformers' `@use_experts_implementation` experts (gated,
    bias-free, `(E, out, in)` weights, eager), so that `routed_lora.apply_routed_lora` gives their LoRA the
    routed-token forward as on the Thinker. Parameters, forward and state-dict keys are the Talker's own; only
    attributes are added ([`make_talker_experts_routable`] swaps the class of the existing modules)."""

    has_gate = True
    has_bias = False
    is_transposed = False

    @property
    def config(self):
        # The Talker's experts have a single (eager) forward; `_experts_implementation` is what routed_lora reads.
        return _EagerExpertsConfig

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up


class _EagerExpertsConfig:
    _experts_implementation = "eager"


def make_talker_experts_routable(model: nn.Module) -> int:
    """Give the Talker's experts modules the [`RoutableTalkerExperts`] class, in place; returns how many (0 when they
    already have it)."""
    count = 0
    for module in model.modules():
        if parametrize.type_before_parametrizations(module) is not Qwen3OmniMoeTalkerTextExperts:
            continue
        if parametrize.is_parametrized(module):
            # 4-bit experts: parametrize gave the module a class of its own, subclassing the Talker's and holding the
            # 4-bit tensors' properties; rebuild it on the routable class
            parametrized = type(module)
            module.__class__ = type(parametrized.__name__, (RoutableTalkerExperts,), dict(vars(parametrized)))
        else:
            module.__class__ = RoutableTalkerExperts
        count += 1
    return count


def build_talker_lora_config(
    model: Qwen3OmniMoeForConditionalGeneration,
    trainable_speaker_ids: list[int],
    *,
    r: int = 16,
    lora_alpha: int = 32,
    expert_r: int | None = None,
    attention_projections: tuple[str, ...] = ATTENTION_PROJECTIONS,
    target_router: bool = True,
    target_experts: bool = True,
    target_code_predictor: bool = True,
    target_code_predictor_mlp: bool = False,
    use_rslora: bool = False,
) -> LoraConfig:
    """The `LoraConfig` of the Talker voice recipe on the full model: LoRA on the Talker's attention, routers and
    fused experts and on the code predictor's attention (and MLP weights if asked), and the speakers' codec-embedding
    rows trained in full (PEFT's `trainable_token_indices`). Nothing of the Thinker, the projections or code2wav is
    targeted."""
    target_modules, target_parameters = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        leaf = name.rpartition(".")[2]
        if name.startswith(TALKER_PREFIX) and ".self_attn." in name and leaf in attention_projections:
            target_modules.append(name)
        elif target_code_predictor and name.startswith(CODE_PREDICTOR_PREFIX) and leaf in CODE_PREDICTOR_PROJECTIONS:
            target_modules.append(name)
    wanted = ((ROUTER_PARAMETER,) if target_router else ()) + (EXPERT_PARAMETERS if target_experts else ())
    for name in target_parameter_names(model):
        if name.startswith(TALKER_PREFIX) and wanted and name.endswith(wanted):
            target_parameters.append(name)
        elif (
            target_code_predictor_mlp
            and name.startswith(CODE_PREDICTOR_PREFIX)
            and name.endswith(CODE_PREDICTOR_MLP_WEIGHTS)
        ):
            target_parameters.append(name)
    if not target_modules and not target_parameters:
        raise ValueError("No LoRA target found in the Talker: is this a Qwen3-Omni checkpoint with a Talker?")
    rank_pattern, alpha_pattern = {}, {}
    if target_experts and expert_r is not None:
        for name in EXPERT_PARAMETERS:
            rank_pattern[name], alpha_pattern[name] = expert_r, lora_alpha * expert_r / r
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=0.0,
        target_modules=target_modules,
        target_parameters=target_parameters or None,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=use_rslora,
        trainable_token_indices={CODEC_EMBEDDING: list(trainable_speaker_ids)},
    )


# ---------------------------------------------------------------------------------------------------- inputs
def conversation_ids(
    processor, text: str, prompt: str | None, user_prompt_template: str, system_prompt: str | None = None
) -> tuple[list[int], list[int]]:
    """`(prompt ids ending in '<|im_start|>assistant\\n', transcript ids + <|im_end|>)` of one clip, with the
    processor's chat template: the prompt is what `generate` receives, the rest what its Thinker would say."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    user_text = prompt if prompt else user_prompt_template.format(text=text)
    messages.append({"role": "user", "content": [{"type": "text", "text": user_text}]})
    prompt_text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer_ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return prompt_ids, answer_ids


@torch.no_grad()
def thinker_outputs(
    model: Qwen3OmniMoeForConditionalGeneration, sequence: torch.Tensor, **multimodal_inputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Thinker's input embeddings and `accept_hidden_layer` hidden states for `sequence` `(1, L)`, teacher-forced,
    without gradients; both `(1, L - 1, H)`: like `generate`, which never forwards the last generated token."""
    outputs = model.thinker(input_ids=sequence, output_hidden_states=True, use_cache=False, **multimodal_inputs)
    layer = model.config.talker_config.accept_hidden_layer
    return outputs.hidden_states[0][:, :-1], outputs.hidden_states[layer][:, :-1]


def talker_prompt_embeds(
    model: Qwen3OmniMoeForConditionalGeneration,
    prompt_ids: torch.Tensor,
    sequence: torch.Tensor,
    thinker_embed: torch.Tensor,
    thinker_hidden: torch.Tensor,
    speaker_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Talker's prompt for one conversation, as `Qwen3OmniMoeForConditionalGeneration.generate` builds it.

    Args:
        prompt_ids: `(1, P)` the prompt `generate` receives (ending in `<|im_start|>assistant\\n`).
        sequence: `(1, L)` the prompt followed by the Thinker's answer (ending in `<|im_end|>`).
        thinker_embed, thinker_hidden: `(1, L - 1, H)` from [`thinker_outputs`].
        speaker_id: codec id of the speaker.

    Returns:
        `(inputs_embeds (1, N, D), talker_input_ids (1, N), trailing_text_hidden (1, K, D), tts_pad_embed (1, 1, D))`.
    """
    config = model.config
    sequence_length = prompt_ids.shape[1]
    # `generate`'s user-turn selection for one unpadded row: positions whose last <|im_start|> opens a user turn
    positions = torch.arange(sequence_length, device=prompt_ids.device).unsqueeze(0)
    im_start_positions = torch.where(prompt_ids == config.im_start_token_id, positions, positions.new_full((), -1))
    previous_im_start = torch.cummax(im_start_positions, dim=-1).values.clamp_min(0)
    role_token_ids = prompt_ids.gather(1, (previous_im_start + 1).clamp_max(sequence_length - 1))
    user_mask = role_token_ids == config.user_token_id
    multimodal_mask = (
        (sequence == config.thinker_config.audio_token_id)
        | (sequence == config.thinker_config.image_token_id)
        | (sequence == config.thinker_config.video_token_id)
    )
    user_embeds = model._get_talker_user_parts(0, sequence_length, multimodal_mask, thinker_hidden, thinker_embed)
    user_embeds, user_ids = user_embeds[user_mask].unsqueeze(0), prompt_ids[user_mask].unsqueeze(0)

    assistant_start_mask = (prompt_ids[:, :-1] == config.im_start_token_id) & (
        prompt_ids[:, 1:] == config.assistant_token_id
    )
    assistant_start_index = torch.nonzero(assistant_start_mask[0], as_tuple=False).flatten()[-1].item()
    special_tokens = torch.tensor(
        [[config.tts_bos_token_id, config.tts_eos_token_id, config.tts_pad_token_id]], device=prompt_ids.device
    )
    tts_bos_embed, tts_eos_embed, tts_pad_embed = model.talker.text_projection(
        model.thinker.get_input_embeddings()(special_tokens)
    ).chunk(3, dim=1)
    assistant_embeds, assistant_ids, trailing_text_hidden = model._get_talker_assistant_parts(
        assistant_start_index, sequence.shape[1], speaker_id, thinker_embed,
        tts_pad_embed, tts_bos_embed, tts_eos_embed,
    )
    inputs_embeds = torch.cat((user_embeds, assistant_embeds), dim=1)
    talker_input_ids = torch.cat((user_ids, assistant_ids), dim=1)
    return inputs_embeds, talker_input_ids, trailing_text_hidden, tts_pad_embed


def codec_frame_embeds(talker: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """`(T, D)`: per frame, the sum of its codes' embeddings, as the Talker's `prepare_inputs_for_generation` does
    (codebook 0 by the Talker's `codec_embedding`, codebook `j` by `code_predictor.codec_embedding[j - 1]`)."""
    predictor_embeddings = talker.code_predictor.get_input_embeddings()
    parts = [talker.get_input_embeddings()(codes[:, :1])]
    parts += [predictor_embeddings[j - 1](codes[:, j : j + 1]) for j in range(1, codes.shape[1])]
    return torch.cat(parts, dim=1).sum(1)


@dataclass
class TalkerSequence:
    """One clip's teacher-forced Talker input: `inputs_embeds (N + T, D)`, `talker_input_ids (N + T,)`, `labels
    (N + T,)` (codebook 0 of the next frame, `codec_eos` after the last, -100 elsewhere) and the `codes (T, G)`;
    `preserved` for a preserved speaker's base codes (their loss is kept apart)."""

    inputs_embeds: torch.Tensor
    talker_input_ids: torch.Tensor
    labels: torch.Tensor
    codes: torch.Tensor
    preserved: bool = False


def build_talker_sequence(
    model: Qwen3OmniMoeForConditionalGeneration,
    prompt_ids: torch.Tensor,
    sequence: torch.Tensor,
    thinker_embed: torch.Tensor,
    thinker_hidden: torch.Tensor,
    speaker_id: int,
    codes: torch.Tensor,
    next_code: int | None = None,
    preserved: bool = False,
) -> TalkerSequence:
    """The Talker's whole teacher-forced input for one clip: [`talker_prompt_embeds`] followed by one step per codec
    frame (the frame's code embeddings plus the trailing text embedding the step consumes). After the last frame the
    Talker is taught `codec_eos`, or `next_code` (codebook 0 of the frame after, for speech cut short)."""
    config = model.config
    prompt_embeds, prompt_talker_ids, trailing_text_hidden, tts_pad_embed = talker_prompt_embeds(
        model, prompt_ids, sequence, thinker_embed, thinker_hidden, speaker_id
    )
    num_frames = codes.shape[0]
    text_per_step = trailing_text_hidden[0, :num_frames]
    if num_frames > text_per_step.shape[0]:
        padding = tts_pad_embed[0].expand(num_frames - text_per_step.shape[0], -1)
        text_per_step = torch.cat((text_per_step, padding), dim=0)
    step_embeds = codec_frame_embeds(model.talker, codes) + text_per_step
    inputs_embeds = torch.cat((prompt_embeds[0], step_embeds), dim=0)
    prompt_length = prompt_embeds.shape[1]
    talker_input_ids = torch.cat(
        (prompt_talker_ids[0], prompt_talker_ids.new_full((num_frames,), config.tts_pad_token_id))
    )
    labels = torch.full_like(talker_input_ids, IGNORE_INDEX)
    labels[prompt_length - 1 : prompt_length - 1 + num_frames] = codes[:, 0]
    labels[prompt_length - 1 + num_frames] = (
        config.talker_config.codec_eos_token_id if next_code is None else next_code
    )
    return TalkerSequence(inputs_embeds, talker_input_ids, labels, codes, preserved)


@dataclass
class TalkerVoiceOutput:
    loss: torch.Tensor
    talker_loss: torch.Tensor
    code_predictor_loss: torch.Tensor
    talker_logits: torch.Tensor
    """`(B, L, vocab)` the Talker's `codec_head` logits at every position."""
    code_predictor_logits: torch.Tensor
    """`(num_frames, G - 1, codebook)` the code predictor's logits for codebooks 1..G-1 of every frame, batch-major."""
    preserve_talker_loss: torch.Tensor | None = None
    """The two cross-entropies on the preserved speakers' rows (None when the batch has none)."""
    preserve_code_predictor_loss: torch.Tensor | None = None


def _group_means(losses: torch.Tensor, preserved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean of `losses` over the new voice's entries and over the preserved speakers' (None when there are none)."""
    voice = losses[~preserved].mean() if (~preserved).any() else losses.new_zeros(())
    return voice, losses[preserved].mean() if preserved.any() else None


def _kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Per position `KL(reference || model)` over the last dimension."""
    reference = F.log_softmax(reference_logits.float(), dim=-1)
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), reference, log_target=True, reduction="none").sum(-1)


def talker_voice_forward(
    model: Qwen3OmniMoeForConditionalGeneration,
    sequences: list[TalkerSequence],
    preserve_weight: float = 1.0,
    reference: TalkerVoiceOutput | None = None,
) -> TalkerVoiceOutput:
    """Forward the Talker and the code predictor on a batch of teacher-forced clips (right-padded) and compute both
    cross-entropies (mean over the predicted codes of the batch): over the new voice's clips, and apart over the
    preserved speakers' rows, which add `preserve_weight` times theirs to the loss. With `reference` (this forward
    of the frozen base on the preserved rows alone, in their order) the preserved rows' losses are the KL divergences
    from the base's distributions instead of cross-entropies on their codes."""
    talker = model.talker
    lengths = [len(sequence.labels) for sequence in sequences]
    max_length = max(lengths)
    hidden_size = sequences[0].inputs_embeds.shape[-1]
    device = sequences[0].inputs_embeds.device
    inputs_embeds = sequences[0].inputs_embeds.new_zeros((len(sequences), max_length, hidden_size))
    attention_mask = torch.zeros((len(sequences), max_length), dtype=torch.long, device=device)
    labels = torch.full((len(sequences), max_length), IGNORE_INDEX, dtype=torch.long, device=device)
    talker_input_ids = torch.full_like(labels, model.config.tts_pad_token_id)
    for row, (sequence, length) in enumerate(zip(sequences, lengths)):
        inputs_embeds[row, :length] = sequence.inputs_embeds
        attention_mask[row, :length] = 1
        labels[row, :length] = sequence.labels
        talker_input_ids[row, :length] = sequence.talker_input_ids
    outputs = talker(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        talker_input_ids=talker_input_ids,
        output_hidden_states=True,
        use_cache=False,
    )
    logits = outputs.logits
    target = labels != IGNORE_INDEX
    preserved_rows = torch.tensor([sequence.preserved for sequence in sequences], device=device)
    token_preserved = preserved_rows[:, None].expand_as(labels)[target]
    token_losses = F.cross_entropy(logits[target].float(), labels[target], reduction="none")
    if reference is not None:
        reference_target = torch.zeros(reference.talker_logits.shape[:2], dtype=torch.bool, device=device)
        for row, sequence in enumerate(sequence for sequence in sequences if sequence.preserved):
            reference_target[row, : len(sequence.labels)] = sequence.labels != IGNORE_INDEX
        token_losses = token_losses.clone()
        token_losses[token_preserved] = _kl_to_reference(
            logits[target][token_preserved], reference.talker_logits[reference_target]
        )
    talker_loss, preserve_talker_loss = _group_means(token_losses, token_preserved)

    # The hidden state that predicted a frame's codebook 0 conditions the code predictor for that frame: the labelled
    # positions but the last of each row (which predicts codec_eos).
    last_hidden = outputs.hidden_states[0][-1]
    frame_positions = [torch.nonzero(target[row]).flatten()[:-1] for row in range(len(sequences))]
    frame_hidden = torch.cat([last_hidden[row, positions] for row, positions in enumerate(frame_positions)])
    codes = torch.cat([sequence.codes for sequence in sequences]).to(device)
    code_predictor = talker.code_predictor
    predictor_embeddings = code_predictor.get_input_embeddings()
    num_groups = codes.shape[1]
    predictor_inputs = [frame_hidden[:, None], talker.get_input_embeddings()(codes[:, :1])]
    predictor_inputs += [predictor_embeddings[j - 1](codes[:, j : j + 1]) for j in range(1, num_groups - 1)]
    predictor_hidden = code_predictor.model(inputs_embeds=torch.cat(predictor_inputs, dim=1)).last_hidden_state
    predictor_logits = torch.stack(
        [code_predictor.lm_head[j - 1](predictor_hidden[:, j]) for j in range(1, num_groups)], dim=1
    )
    predictor_losses = F.cross_entropy(
        predictor_logits.flatten(0, 1).float(), codes[:, 1:].flatten(), reduction="none"
    ).view(codes.shape[0], num_groups - 1)
    frame_preserved = torch.cat(
        [preserved_rows[row].expand(len(positions)) for row, positions in enumerate(frame_positions)]
    )
    if reference is not None:
        predictor_losses = predictor_losses.clone()
        predictor_losses[frame_preserved] = _kl_to_reference(
            predictor_logits[frame_preserved], reference.code_predictor_logits
        )
    code_predictor_loss, preserve_code_predictor_loss = _group_means(
        predictor_losses, frame_preserved[:, None].expand_as(predictor_losses)
    )
    loss = talker_loss + code_predictor_loss
    if preserve_talker_loss is not None:
        loss = loss + preserve_weight * (preserve_talker_loss + preserve_code_predictor_loss)
    return TalkerVoiceOutput(
        loss=loss,
        talker_loss=talker_loss,
        code_predictor_loss=code_predictor_loss,
        talker_logits=logits,
        code_predictor_logits=predictor_logits,
        preserve_talker_loss=preserve_talker_loss,
        preserve_code_predictor_loss=preserve_code_predictor_loss,
    )


# ---------------------------------------------------------------------------------------------------- dataset
@dataclass
class TalkerVoiceExample:
    """One training clip: prompt and full conversation ids, target codes and (when cached) the Thinker's outputs.

    A preserved speaker's example ([`build_preserve_examples`]) has that speaker's `speaker_codec_id` and, for speech
    cut at `preserve_max_frames`, the `next_code` the base spoke after its last frame; the new voice's clips have
    neither (their speaker is the one trained, their speech ends)."""

    prompt_ids: torch.Tensor
    sequence: torch.Tensor
    codes: torch.Tensor
    thinker_embed: torch.Tensor | None = None
    thinker_hidden: torch.Tensor | None = None
    speaker_codec_id: int | None = None
    next_code: int | None = None


def build_examples(
    clips: list[EncodedClip],
    processor,
    user_prompt_template: str = "Read this aloud: {text}",
    system_prompt: str | None = None,
) -> list[TalkerVoiceExample]:
    """Tokenise the clips' conversations (see [`conversation_ids`])."""
    examples = []
    for clip in clips:
        prompt_ids, answer_ids = conversation_ids(
            processor, clip.text, clip.prompt, user_prompt_template, system_prompt
        )
        examples.append(
            TalkerVoiceExample(
                prompt_ids=torch.tensor(prompt_ids), sequence=torch.tensor(prompt_ids + answer_ids), codes=clip.codes
            )
        )
    return examples


@torch.no_grad()
def cache_thinker_outputs(model: Qwen3OmniMoeForConditionalGeneration, examples: list[TalkerVoiceExample]) -> None:
    """Run the frozen Thinker once per clip and keep its outputs on the examples (on the CPU), in place."""
    device = model.thinker.device
    for example in examples:
        embed, hidden = thinker_outputs(model, example.sequence[None].to(device))
        example.thinker_embed, example.thinker_hidden = embed[0].cpu(), hidden[0].cpu()


@contextmanager
def adapters_disabled(model: nn.Module):
    """The model without its LoRA, which is the frozen base: PEFT's `disable_adapters` flag of each LoRA layer, set
    without `enable_adapters` (which would switch the adapters' `requires_grad` off and on in the middle of a step)."""
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    previous = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield model
    finally:
        for layer, value in zip(layers, previous):
            layer._disable_adapters = value


def talker_voice_examples_forward(
    model: Qwen3OmniMoeForConditionalGeneration,
    examples: list[TalkerVoiceExample],
    speaker_codec_id: int,
    preserve_weight: float = 1.0,
    preserve_loss: str = "codes",
) -> TalkerVoiceOutput:
    """[`talker_voice_forward`] on a batch of examples: the Thinker's outputs are the cached ones, or are computed
    here (frozen, without gradients) for examples that have none. The new voice's clips are spoken as
    `speaker_codec_id`, the preserved speakers' examples as their own speaker.

    The Talker's input is built in the weights' dtype even under mixed precision (transformers'
    `_get_talker_user_parts` writes the projected text into a buffer of the Thinker outputs' dtype, which autocast
    would break); the Talker and the code predictor then run under whatever autocast the caller set."""
    device = model.talker.device
    sequences = []
    with torch.autocast(device.type, enabled=False):
        for example in examples:
            sequence = example.sequence[None].to(device)
            if example.thinker_embed is None:
                thinker_embed, thinker_hidden = thinker_outputs(model, sequence)
            else:
                thinker_embed, thinker_hidden = example.thinker_embed[None], example.thinker_hidden[None]
            preserved = example.speaker_codec_id is not None
            sequences.append(
                build_talker_sequence(
                    model, example.prompt_ids[None].to(device), sequence, thinker_embed.to(device),
                    thinker_hidden.to(device), example.speaker_codec_id if preserved else speaker_codec_id,
                    example.codes.to(device), example.next_code, preserved,
                )
            )
    reference = None
    if preserve_loss == "kl" and any(sequence.preserved for sequence in sequences):
        with torch.no_grad(), adapters_disabled(model):
            reference = talker_voice_forward(model, [sequence for sequence in sequences if sequence.preserved])
    return talker_voice_forward(model, sequences, preserve_weight, reference)


def collate_talker_voice(examples: list[TalkerVoiceExample]) -> dict[str, list[TalkerVoiceExample]]:
    """The Talker input is built inside the loss (it needs the model's embeddings), so batches are lists."""
    return {"examples": examples}


# ---------------------------------------------------------------------------------------------------- preservation
# The sentences the preserved speakers speak besides the new voice's transcripts (--preserve_texts replaces them):
# everyday sentences of several shapes (statements, questions, numbers, lists) in the Talker's two main languages.
PRESERVE_TEXTS = (
    "Good morning, how can I help you today?",
    "The meeting has been moved to three o'clock on Thursday afternoon.",
    "Could you tell me the way to the nearest train station?",
    "It is going to rain this evening, so take an umbrella with you.",
    "I'd like a cup of coffee with milk and no sugar, please.",
    "The total comes to forty-two dollars and fifteen cents.",
    "She opened the window and listened to the birds outside.",
    "Please remember to save your work before you close the program.",
    "Thank you very much, that was really helpful!",
    "Our flight leaves at seven thirty, so we should get there by six.",
    "Mix the flour, the eggs and the butter, then bake for twenty minutes.",
    "Why do you think the experiment failed the second time?",
    "The library is open from nine in the morning until eight at night.",
    "Let me read the first paragraph aloud for everyone.",
    "He said he would call back after lunch, but he never did.",
    "Turn left at the second traffic light and keep going straight.",
    "你好，很高兴认识你。",
    "今天天气很好，我们去公园散步吧。",
    "请问这个周末你有什么安排？",
    "这本书讲的是一个关于勇气和友谊的故事。",
)


def read_preserve_texts(path: str | os.PathLike | None) -> list[str]:
    """The `--preserve_texts` file's sentences (one a line, blank lines skipped), or [`PRESERVE_TEXTS`] without one.

    Raises:
        `ValueError` when the file holds no sentence.
    """
    if path is None:
        return list(PRESERVE_TEXTS)
    with open(path, encoding="utf-8") as handle:
        texts = [line.strip() for line in handle if line.strip()]
    if not texts:
        raise ValueError(f"--preserve_texts {path} holds no sentence: write one sentence a line, or leave it out.")
    return texts


@torch.no_grad()
def talker_greedy_codes(
    model: Qwen3OmniMoeForConditionalGeneration,
    example: TalkerVoiceExample,
    speaker_codec_id: int,
    max_frames: int,
) -> tuple[torch.Tensor, int | None]:
    """The codes the Talker speaks greedily for the example's conversation as `speaker_codec_id`: what
    `generate(..., speaker=NAME, talker_do_sample=False, talker_repetition_penalty=1.0)` hands to code2wav when its
    Thinker says the example's answer, at most `max_frames` frames.

    Returns:
        `(codes (T, G), next_code)`: `next_code` is codebook 0 of the frame after the last when the speech was cut at
        `max_frames`, None when the Talker ended it (`codec_eos`).
    """
    device = model.talker.device
    sequence = example.sequence[None].to(device)
    if example.thinker_embed is None:
        thinker_embed, thinker_hidden = thinker_outputs(model, sequence)
    else:
        thinker_embed, thinker_hidden = example.thinker_embed[None].to(device), example.thinker_hidden[None].to(device)
    inputs_embeds, talker_input_ids, trailing_text_hidden, tts_pad_embed = talker_prompt_embeds(
        model, example.prompt_ids[None].to(device), sequence, thinker_embed, thinker_hidden, speaker_codec_id
    )
    talker_config = model.config.talker_config
    vocab_size = talker_config.text_config.vocab_size
    eos = talker_config.codec_eos_token_id
    # generate's Talker call (transformers 5.23), greedy; one more step than frames: its code 0 is `next_code`
    result = model.talker.generate(
        inputs_embeds=inputs_embeds,
        trailing_text_hidden=trailing_text_hidden,
        tts_pad_embed=tts_pad_embed,
        talker_input_ids=talker_input_ids,
        attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=device),
        max_new_tokens=max_frames + 1,
        do_sample=False,
        repetition_penalty=1.0,
        eos_token_id=eos,
        suppress_tokens=[index for index in range(vocab_size - 1024, vocab_size) if index != eos],
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    frames = [hidden[-1] for hidden in result.hidden_states if hidden[-1] is not None]
    if frames:
        codes = torch.stack(frames, dim=1)[0]
    else:  # codec_eos first: no speech
        codes = torch.empty((0, talker_config.num_code_groups), dtype=torch.long, device=device)
    last = result.sequences[0, -1].item()
    return codes.cpu(), None if last == eos else last


def build_preserve_examples(
    model: Qwen3OmniMoeForConditionalGeneration,
    processor,
    voice_examples: list[TalkerVoiceExample],
    texts: list[str],
    speakers: dict[str, int],
    max_frames: int,
    user_prompt_template: str = "Read this aloud: {text}",
    system_prompt: str | None = None,
) -> list[TalkerVoiceExample]:
    """The preserved speakers' examples: each of `speakers` speaking each voice clip's conversation and each of
    `texts` (as `user_prompt_template` asks for it) with the base Talker's own greedy codes ([`talker_greedy_codes`]),
    ordered conversation by conversation (every speaker on one conversation, then the next). Run on the base, before
    the adapter; the Thinker's outputs are cached on the examples when the voice examples have theirs."""
    conversations = [(example.prompt_ids, example.sequence, example) for example in voice_examples]
    for text in texts:
        prompt_ids, answer_ids = conversation_ids(processor, text, None, user_prompt_template, system_prompt)
        conversations.append((torch.tensor(prompt_ids), torch.tensor(prompt_ids + answer_ids), None))
    cache = bool(voice_examples) and voice_examples[0].thinker_embed is not None
    examples = []
    for prompt_ids, sequence, voice_example in conversations:
        conversation = TalkerVoiceExample(prompt_ids, sequence, codes=torch.empty(0, dtype=torch.long))
        if voice_example is not None:
            conversation.thinker_embed, conversation.thinker_hidden = (
                voice_example.thinker_embed, voice_example.thinker_hidden
            )
        elif cache:
            cache_thinker_outputs(model, [conversation])
        for codec_id in speakers.values():
            codes, next_code = talker_greedy_codes(model, conversation, codec_id, max_frames)
            examples.append(
                TalkerVoiceExample(
                    prompt_ids, sequence, codes, conversation.thinker_embed, conversation.thinker_hidden,
                    speaker_codec_id=codec_id, next_code=next_code,
                )
            )
    logger.info(
        f"Preserved speakers {sorted(speakers)}: {len(examples)} examples of the base Talker's greedy codes "
        f"({len(conversations)} conversations, {sum(len(example.codes) for example in examples)} frames)."
    )
    return examples


# ---------------------------------------------------------------------------------------------------- trainer
class TalkerVoiceModel(Qwen3OmniMoeForConditionalGeneration):
    """The full model with one more way to call it: `model(examples=..., speaker_codec_id=...)` is
    [`talker_voice_examples_forward`], so that the voice loss runs through the model's own call, inside whatever
    wraps it (PEFT, and DDP, whose gradient synchronisation its forward sets up). Every other call is the model's own
    forward. [`TalkerVoiceTrainer`] gives the model it trains this class (parameters, state-dict keys and saving are
    unchanged)."""

    def forward(
        self,
        *args,
        examples: list[TalkerVoiceExample] | None = None,
        speaker_codec_id: int | None = None,
        preserve_weight: float = 1.0,
        preserve_loss: str = "codes",
        **kwargs,
    ):
        if examples is None:
            return super().forward(*args, **kwargs)
        return talker_voice_examples_forward(self, examples, speaker_codec_id, preserve_weight, preserve_loss)


class TalkerVoiceTrainer(CompleteCheckpointsMixin, Trainer):
    """`Trainer` whose loss is [`talker_voice_forward`]'s, with `talker_loss` and `code_predictor_loss` logged
    separately (averaged over the steps since the last log, on every backend `report_to` names: TensorBoard, ...), and
    its checkpoints marked complete ([`CompleteCheckpointsMixin`]).

    With `preserve_examples` ([`build_preserve_examples`]), every training batch of the new voice's clips also takes
    the next `preserve_batch_size` of them (in turn, each process its own), weighted by `preserve_weight`, and
    `preserve_talker_loss` / `preserve_code_predictor_loss` are logged too.

    Args:
        speaker_codec_id: codec id of the speaker trained.
        talker_voice_config: what [`write_talker_voice_config`] saves next to every adapter checkpoint.
        preserve_examples, preserve_batch_size, preserve_weight: the preserved speakers' examples, how many join
            each batch, and the weight of their loss.
        voice_preservation: what [`write_voice_preservation`] saves next to every adapter checkpoint.
    """

    def __init__(
        self,
        *args,
        speaker_codec_id: int,
        talker_voice_config: dict,
        preserve_examples: list[TalkerVoiceExample] | None = None,
        preserve_batch_size: int = 1,
        preserve_weight: float = 1.0,
        preserve_loss: str = "codes",
        voice_preservation: dict | None = None,
        **kwargs,
    ):
        kwargs.setdefault("data_collator", collate_talker_voice)
        super().__init__(*args, **kwargs)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if not isinstance(base, TalkerVoiceModel):
            base.__class__ = TalkerVoiceModel
        self.speaker_codec_id = speaker_codec_id
        self.talker_voice_config = talker_voice_config
        self.preserve_examples = preserve_examples or []
        self.preserve_batch_size = preserve_batch_size
        self.preserve_weight = preserve_weight
        self.preserve_loss = preserve_loss
        self.voice_preservation = voice_preservation
        self._preserve_draw = None
        self._loss_sums = {"talker_loss": 0.0, "code_predictor_loss": 0.0}
        if self.preserve_examples:
            self._loss_sums.update(preserve_talker_loss=0.0, preserve_code_predictor_loss=0.0)
        self._loss_count = 0

    def _next_preserve_batch(self) -> list[TalkerVoiceExample]:
        """The preserved speakers' examples of this micro-batch: the next `preserve_batch_size` in turn, each process
        its own, counted from the optimizer step (so a resumed run takes up where it stopped)."""
        if self._preserve_draw is None:
            self._preserve_draw = self.state.global_step * self.args.gradient_accumulation_steps
        draw = self._preserve_draw * self.args.world_size + self.args.process_index
        self._preserve_draw += 1
        count = len(self.preserve_examples)
        return [self.preserve_examples[(draw * self.preserve_batch_size + i) % count]
                for i in range(self.preserve_batch_size)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        examples = inputs["examples"]
        if model.training and self.preserve_examples:
            examples = examples + self._next_preserve_batch()
        # through the (DDP-wrapped) model's call, so that DDP synchronises the gradients
        outputs = model(
            examples=examples, speaker_codec_id=self.speaker_codec_id, preserve_weight=self.preserve_weight,
            preserve_loss=self.preserve_loss,
        )
        if model.training:
            for key in self._loss_sums:
                self._loss_sums[key] += getattr(outputs, key).detach().item()
            self._loss_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._loss_count and "loss" in logs:
            for key, total in self._loss_sums.items():
                logs[key] = round(total / self._loss_count, 4)
                self._loss_sums[key] = 0.0
            self._loss_count = 0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            write_talker_voice_config(output_dir, **self.talker_voice_config)
            if self.voice_preservation is not None:
                write_voice_preservation(output_dir, self.voice_preservation)
