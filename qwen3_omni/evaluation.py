"""Evaluation of a Qwen3-Omni fine-tune against its base on the same rows, in one run.

- rows: conversations in every form `train/sft.py` reads ([`load_conversation_dataset`]: the reference is the last
  assistant turn, the prompt everything before it), or audio datasets with an audio and a text column (a clip folder
  with `metadata.jsonl`, a LibriSpeech tree, a Hub id such as `openslr/librispeech_asr`), scored as speech
  recognition; rows without a reference are skipped and counted by reason;
- answers: batched greedy generation of the Thinker through the processor's chat template, `<think>...</think>`
  separated from the answer, each row's answer cached on disk as it comes (a killed run continues where it stopped);
- the base and the fine-tune: a PEFT adapter is evaluated with and without `disable_adapter()` on one model; a merged
  folder is loaded next to its base;
- metrics by task ([`~common.metrics.task_metrics`]): WER / CER, BLEU / chrF / ROUGE-L, exact match, multiple-choice
  accuracy;
- the Talker's voice ([`evaluate_voice`]): each speaker speaks the eval texts (greedy, through code2wav); the
  intelligibility is the WER of the checkpoint's own Thinker (and of `--transcriber`) transcribing that speech, the
  speaker similarity the cosine of speaker-verification embeddings (`--speaker_encoder`): the tested speaker against
  its reference clips, every other speaker of the base against the base's own speech for it (a voice fine-tune must
  leave them unchanged).

Writes `eval_results.json`, `predictions.jsonl`, `comparison.png` and the `model-index` entries of the model card.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoProcessor
from transformers.utils import logging

from ..common.audio import read_audio, resample
from ..common.clips import load_audio_text_rows
from ..common.metrics import (
    HEADLINE_METRICS,
    TASKS,
    cosine_similarity,
    error_rates,
    is_choice_reference,
    split_thinking,
    task_metrics,
)
from ..common.speech_judges import PipelineTranscriber, SpeakerEncoder
from .arguments import DEFAULT_ASR_PROMPT
from .conversations import (
    DatasetReport,
    decode_media,
    load_conversation_dataset,
    media_paths,
    template_conversation,
)
from .loading import FULL_MODEL_TYPE, load_thinker


logger = logging.get_logger(__name__)

READ_ALOUD_PROMPT = "Read this aloud: {text}"
# Qwen3-Omni's code2wav speaks 24 kHz audio.
SPEECH_SAMPLING_RATE = 24000
VARIANTS = ("base", "finetune")


# ---------------------------------------------------------------------------------------------------- rows
@dataclass
class EvalRow:
    """One row to answer: the prompt turns (template form), the reference answer and the task it is scored as."""

    row_id: int
    task: str
    prompt: list[dict]
    reference: str
    key: str = ""

    def __post_init__(self):
        described = json.dumps([self.prompt, self.reference], sort_keys=True, default=_describe_media)
        self.key = hashlib.sha1(described.encode()).hexdigest()[:16]


def _describe_media(value) -> str:
    """A JSON stand-in for in-memory audio (bytes or arrays) in a cache key."""
    if isinstance(value, bytes):
        return hashlib.sha1(value).hexdigest()
    if isinstance(value, np.ndarray):
        return hashlib.sha1(value.tobytes()).hexdigest()
    return repr(value)


@dataclass
class RowsReport:
    """What was read and what was skipped, by reason."""

    source: str
    kind: str = ""
    num_rows: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] += count

    def to_dict(self) -> dict:
        return {"source": self.source, "kind": self.kind, "num_rows": self.num_rows, "skipped": dict(self.skipped)}


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


def read_eval_rows(
    source: str,
    *,
    split: str = "test",
    config_name: str | None = None,
    task: str = "auto",
    dataset_format: str = "auto",
    audio_column: str = "audio",
    text_column: str = "text",
    asr_prompt: str = DEFAULT_ASR_PROMPT,
    system_prompt: str | None = None,
    media_dir: str | None = None,
    max_samples: int | None = None,
) -> tuple[list[EvalRow], RowsReport]:
    """The rows of `source` to evaluate, and the report of what was skipped.

    A source whose rows have `audio_column` and `text_column` (and no conversation) is an audio dataset: each clip
    is asked `asr_prompt` and scored as `"asr"`. Anything else is read as conversations by
    `load_conversation_dataset` (its refused rows are counted under its reasons). With `task="auto"` a conversation
    whose reference is an option letter alone is scored as `"multiple_choice"`, any other as `"text"`.

    Raises:
        `ValueError` with the counts by reason when no row is usable.
    """
    if task != "auto" and task not in TASKS:
        raise ValueError(f"--task {task!r} is not one of auto, {', '.join(TASKS)}.")
    report = RowsReport(source=str(source))
    audio_rows = _audio_text_rows(source, audio_column, text_column, split, config_name)
    system = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    if audio_rows is not None:
        rows = _asr_rows(audio_rows, report, task, system, asr_prompt, media_dir)
    else:
        rows = _conversation_rows(source, report, task, split, config_name, system_prompt, dataset_format, media_dir)
    if max_samples is not None and len(rows) > max_samples:
        report.skip("beyond_max_samples", len(rows) - max_samples)
        rows = rows[:max_samples]
    if not rows:
        raise ValueError(
            f"No usable evaluation row in {source} ({report.num_rows} rows read; skipped by reason: "
            f"{dict(report.skipped)}). Each row needs a prompt and a reference: a conversation ending in an assistant "
            f"turn, or a clip with a non-empty {text_column!r} column."
        )
    if report.skipped:
        logger.warning(f"{source}: rows skipped by reason: {dict(report.skipped)}")
    return rows, report


def _asr_rows(
    audio_rows: list[dict], report: RowsReport, task: str, system: list[dict], asr_prompt: str, media_dir: str | None
) -> list[EvalRow]:
    """An audio dataset's clips, each asked `asr_prompt` (after the system turn, if any); clips without a transcript
    are counted as skipped."""
    report.kind, report.num_rows = "audio", len(audio_rows)
    rows = []
    for row_id, row in enumerate(audio_rows):
        reference = row["text"] if isinstance(row["text"], str) else ""
        if not reference.strip():
            report.skip("no_reference")
            continue
        audio = row["audio"]
        if isinstance(audio, str) and not os.path.isabs(audio) and media_dir:
            audio = os.path.join(media_dir, audio)
        prompt = [
            *system,
            {"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": asr_prompt}]},
        ]
        rows.append(EvalRow(row_id, "asr" if task == "auto" else task, prompt, reference.strip()))
    return rows


def _conversation_rows(
    source: str,
    report: RowsReport,
    task: str,
    split: str,
    config_name: str | None,
    system_prompt: str | None,
    dataset_format: str,
    media_dir: str | None,
) -> list[EvalRow]:
    """Conversations cut before their last assistant turn, which is the reference; the conversation loader's refusals
    and rows without a reference or a prompt are counted as skipped."""
    conversations_report = DatasetReport(name=str(source))
    try:
        dataset = load_conversation_dataset(
            source,
            split=split,
            config_name=config_name,
            system_prompt=system_prompt,
            dataset_format=dataset_format,
            media_dir=media_dir,
            report=conversations_report,
        )
    except ValueError as error:
        raise ValueError(f"No usable evaluation row in {source}: {error}") from error
    report.kind, report.num_rows = conversations_report.dataset_format, conversations_report.num_rows
    for reason, entry in conversations_report.to_dict().get("refused", {}).items():
        report.skip(reason, entry["count"])
    rows = []
    for example in dataset:
        turns = template_conversation(example["conversations"])
        last = max((i for i, turn in enumerate(turns) if turn["role"] == "assistant"), default=None)
        reference = split_thinking(_text_of(turns[last]["content"]))[1] if last is not None else ""
        if not reference:
            report.skip("no_reference")
            continue
        if not any(turn["role"] == "user" for turn in turns[:last]):
            report.skip("no_prompt")
            continue
        row_task = task if task != "auto" else ("multiple_choice" if is_choice_reference(reference) else "text")
        rows.append(EvalRow(example["row_id"], row_task, turns[:last], reference))
    return rows


_CONVERSATION_KEYS = {"conversations", "messages", "instruction", "query", "input", "output", "response", "history"}


def _audio_text_rows(source: str, audio_column: str, text_column: str, split: str, config_name: str | None):
    """The `{"audio", "text"}` rows of an audio dataset, or `None` when `source` is conversations."""
    path = Path(source)
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        with open(path, encoding="utf-8") as handle:
            first = json.loads(handle.readline()) if path.suffix == ".jsonl" else (json.load(handle) or [{}])[0]
        if not ({audio_column, text_column} <= set(first) and not _CONVERSATION_KEYS & set(first)):
            return None
    try:
        rows = load_audio_text_rows(
            source, audio_column, text_column, None, split=split, dataset_config=config_name, allow_missing_text=True
        )
    except (ValueError, FileNotFoundError):
        return None  # no audio / text columns: conversations
    return rows.to_list() if hasattr(rows, "to_list") else list(rows)


# ---------------------------------------------------------------------------------------------------- generation
class UnreadableMedia(ValueError):
    """A prompt's audio, image or video could not be read."""


def render_prompts(processor, prompts: Sequence[list[dict]]) -> dict[str, torch.Tensor]:
    """The processor's inputs for a batch of prompts: chat template with the generation prompt, media decoded as in
    training and at inference ([`decode_media`], `qwen-omni-utils`), left padding. Raises [`UnreadableMedia`] when a
    medium cannot be read."""
    rate = processor.feature_extractor.sampling_rate
    texts, audios, images, videos, video_fps = [], [], [], [], []
    for prompt in prompts:
        texts.append(processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        try:
            media = decode_media(_with_decoded_audio_values(prompt, rate))
        except Exception as error:  # any decoding failure of a medium
            raise UnreadableMedia(f"{_describe_media(media_paths(prompt))[:200]}: {error!r}") from error
        audios += media["audios"] or []
        images += media["images"] or []
        videos += media["videos"] or []
        video_fps += media["video_fps"]
    processor.tokenizer.padding_side = "left"
    # the frames are sampled already (as the collator gives them); each video's own rate goes into its time grid
    videos_kwargs = {"fps": video_fps[0], "do_sample_frames": False} if videos else {}
    inputs = processor(
        text=texts,
        audio=audios or None,
        images=images or None,
        videos=videos or None,
        padding=True,
        return_tensors="pt",
        videos_kwargs=videos_kwargs,
    )
    if videos:
        temporal_patch_size = processor.video_processor.temporal_patch_size
        inputs["video_second_per_grid"] = torch.tensor([temporal_patch_size / fps for fps in video_fps])
    return {key: value for key, value in inputs.items() if key != "num_audio_tokens"}


def _with_decoded_audio_values(prompt: list[dict], sampling_rate: int) -> list[dict]:
    """The prompt with audio values that are not file paths (an audio dataset's `{"path", "bytes"}` or decoded
    values) decoded to waveforms at the processor's rate, which `qwen-omni-utils` takes as they are."""
    turns = []
    for turn in prompt:
        content = turn["content"]
        if not isinstance(content, str):
            content = [
                {**part, "audio": resample(*read_audio(part["audio"]), sampling_rate)}
                if part["type"] == "audio" and not isinstance(part["audio"], (str, np.ndarray))
                else part
                for part in content
            ]
        turns.append({**turn, "content": content})
    return turns


@torch.no_grad()
def generate_answers(thinker, processor, prompts: Sequence[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy answers of the Thinker to a batch of prompts (special tokens dropped, `<think>` kept)."""
    inputs = render_prompts(processor, prompts)
    inputs = {key: value.to(thinker.device) if torch.is_tensor(value) else value for key, value in inputs.items()}
    tokenizer = processor.tokenizer
    output = thinker.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class AnswerCache:
    """`{row key: raw answer}` of one model variant, appended to a JSONL file as answers come."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.settings_key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.answers: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["settings"] == self.settings_key:
                    self.answers[entry["key"]] = entry["answer"]

    def add(self, key: str, answer: str) -> None:
        self.answers[key] = answer
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"settings": self.settings_key, "key": key, "answer": answer}) + "\n")


def answer_rows(
    thinker,
    processor,
    rows: Sequence[EvalRow],
    cache: AnswerCache,
    batch_size: int,
    max_new_tokens: int,
    description: str,
) -> tuple[dict[str, str], Counter]:
    """Answers to every row (from the cache, or generated in batches and cached), and the rows that failed by reason
    (`unreadable_media`: a batch with such a row is answered one row at a time, so only that row is lost)."""
    failed: Counter = Counter()
    pending = [row for row in rows if row.key not in cache.answers]
    if len(pending) < len(rows):
        logger.info(f"{description}: {len(rows) - len(pending)} of {len(rows)} answers read from {cache.path}.")
    with tqdm(total=len(rows), initial=len(rows) - len(pending), desc=description, unit="row") as progress:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            try:
                answers = generate_answers(thinker, processor, [row.prompt for row in batch], max_new_tokens)
            except UnreadableMedia as error:
                if len(batch) == 1:
                    logger.warning(f"Row {batch[0].row_id} skipped, its media could not be read: {error!r}")
                    failed["unreadable_media"] += 1
                    progress.update(1)
                    continue
                # one bad row must not take its batch down: answer the batch one row at a time
                _, nested_failed = answer_rows(thinker, processor, batch, cache, 1, max_new_tokens, description)
                failed += nested_failed
                progress.update(len(batch))
                continue
            for row, answer in zip(batch, answers):
                cache.add(row.key, answer)
            progress.update(len(batch))
    return {row.key: cache.answers[row.key] for row in rows if row.key in cache.answers}, failed


# ---------------------------------------------------------------------------------------------------- models
def adapter_kind(path: str | None) -> str:
    """`"none"`, `"adapter"` (a Thinker LoRA), `"voice_adapter"` (a Talker voice LoRA) or `"merged"` (a folder
    holding a whole model)."""
    if path is None:
        return "none"
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        return "voice_adapter" if os.path.isfile(os.path.join(path, "talker_voice_config.json")) else "adapter"
    if os.path.isfile(os.path.join(path, "config.json")):
        return "merged"
    raise ValueError(
        f"--adapter {path!r} is neither a LoRA adapter folder (adapter_config.json) nor a model folder (config.json). "
        "Pass the output_dir of train/sft.py or train/talker_voice_sft.py, or the folder train/merge.py wrote."
    )


def has_talker(config) -> bool:
    return config.model_type == FULL_MODEL_TYPE and bool(getattr(config, "enable_audio_output", False))


class BaseAndFineTune:
    """The two models under test. A PEFT adapter gives both from one model (the base inside `disable_adapter()`); a
    merged folder is a second model. `use(variant)` yields the model (a full Qwen3-Omni when the voice is evaluated,
    else a Thinker) in that state."""

    def __init__(self, base, finetune=None, peft_model=None, voice: dict | None = None):
        self.base, self.finetune, self.peft_model, self.voice = base, finetune, peft_model, voice

    @contextlib.contextmanager
    def use(self, variant: str) -> Iterator:
        if self.peft_model is None:
            yield (self.base if variant == "base" else self.finetune).eval()
        elif variant == "base":
            with self.peft_model.disable_adapter():
                yield self.base.eval()
        else:
            yield self.base.eval()


def load_models(
    model_name_or_path: str,
    adapter: str | None,
    *,
    with_talker: bool,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    quantization_kwargs: dict | None = None,
    attn_implementation: str | None = None,
) -> BaseAndFineTune:
    """Load the base (and the fine-tune: adapter or merged folder) as training does: `load_thinker` (bf16 or 4-bit,
    see `Qwen3OmniModelConfig.quantization_kwargs`), or the whole model with its Talker (`load_talker_model`)."""
    from peft import PeftConfig, PeftModel

    from .peft_lora import silence_false_expert_rank_warning
    from .talker_voice import add_speaker, load_talker_model, read_talker_voice_config

    quantization_kwargs = quantization_kwargs or {}
    kind = adapter_kind(adapter)
    if kind == "voice_adapter" and not with_talker:
        raise ValueError(
            f"{adapter} is a Talker voice adapter: its evaluation needs the base's Talker "
            f"({model_name_or_path} has none, or --evaluate_voice false was given)."
        )

    def load(path):
        if with_talker:
            model = load_talker_model(
                path,
                dtype=dtype,
                attn_implementation=attn_implementation,
                **{k: v for k, v in quantization_kwargs.items() if k != "offload_experts"},
            )
        else:
            model = load_thinker(path, dtype=dtype, attn_implementation=attn_implementation, **quantization_kwargs)
        if device and not any(quantization_kwargs.get(k) for k in ("load_in_4bit", "quantize_experts")):
            model = model.to(device)
        return model.eval()

    base = load(model_name_or_path)
    if kind == "none":
        return BaseAndFineTune(base, base)
    if kind == "merged":
        return BaseAndFineTune(base, load(adapter))
    config = PeftConfig.from_pretrained(adapter)
    config.lora_dropout = 0.0  # evaluation only; PEFT's parameter wrapper refuses dropout on experts
    voice = read_talker_voice_config(adapter) if kind == "voice_adapter" else None
    # a Thinker adapter's keys are relative to the Thinker
    target = base.thinker if with_talker and kind == "adapter" else base
    with silence_false_expert_rank_warning():
        peft_model = PeftModel.from_pretrained(target, adapter, config=config)
    if device:
        peft_model.to(device)
    if voice is not None:  # the trained row is the adapter's; the name is registered as train/merge.py does
        add_speaker(base, voice["speaker_name"], voice["speaker_codec_id"], None)
    return BaseAndFineTune(base, peft_model=peft_model, voice=voice)


def thinker_of(model):
    return model.thinker if hasattr(model, "thinker") else model


# ---------------------------------------------------------------------------------------------------- voice
@torch.no_grad()
def speak(model, processor, text: str, speaker: str, max_new_tokens: int) -> np.ndarray:
    """The Talker's greedy speech (24 kHz) for `text` as `speaker`: the Thinker's reply to "Read this aloud: TEXT"
    teacher-forced to be exactly TEXT (so every model speaks the same words), then the Talker prompt `generate`
    builds, the Talker's greedy codes and code2wav."""
    from .talker_voice import conversation_ids, talker_prompt_embeds, thinker_outputs

    config = model.config.talker_config
    speaker_id = config.speaker_id[speaker.lower()]
    prompt_ids, answer_ids = conversation_ids(processor, text, None, READ_ALOUD_PROMPT)
    device = model.thinker.device
    prompt = torch.tensor([prompt_ids], device=device)
    sequence = torch.tensor([prompt_ids + answer_ids], device=device)
    embed, hidden = thinker_outputs(model, sequence)
    inputs_embeds, talker_ids, trailing, tts_pad = talker_prompt_embeds(
        model, prompt, sequence, embed, hidden, speaker_id
    )
    vocab = config.text_config.vocab_size
    result = model.talker.generate(
        inputs_embeds=inputs_embeds,
        trailing_text_hidden=trailing,
        tts_pad_embed=tts_pad,
        talker_input_ids=talker_ids,
        attention_mask=torch.ones_like(talker_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        repetition_penalty=1.0,
        eos_token_id=config.codec_eos_token_id,
        suppress_tokens=[i for i in range(vocab - 1024, vocab) if i != config.codec_eos_token_id],
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    frames = [step[-1] for step in result.hidden_states if step[-1] is not None]
    if not frames:
        return np.zeros(0, dtype=np.float32)
    codes = torch.stack(frames, dim=1).transpose(1, 2)
    wav = model.code2wav.chunked_decode(codes, chunk_size=300, left_context_size=25)
    return wav.float().flatten().cpu().numpy()


def read_reference_clips(folder: str) -> list[np.ndarray]:
    """Every audio file under `folder` (wav, flac, ogg, mp3), sorted, at 16 kHz."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3"))
    if not paths:
        raise ValueError(f"--speaker_reference {folder!r} holds no audio file (.wav, .flac, .ogg, .mp3).")
    return [resample(*read_audio(str(path)), 16000) for path in paths]


def voice_speakers(
    pair: BaseAndFineTune, speaker: str | None, base_speaker: str | None = None
) -> tuple[str, str | None, list[str]]:
    """`(tested speaker, the base speaker it is compared with or None, preserved speakers)`: the tested speaker is
    `speaker`, else the voice adapter's, else the one the fine-tune has and the base has not, else the first; the
    base speaks it as `base_speaker`, else as itself when it has it, else as the speaker a voice adapter was
    initialised from (a merged voice does not record it: pass `base_speaker`)."""
    finetune_speakers = dict((pair.finetune or pair.base).config.talker_config.speaker_id)
    base_speakers = dict(pair.base.config.talker_config.speaker_id)
    if pair.voice is not None and pair.voice["init_codec_id"] is not None:  # a new speaker, registered by the adapter
        base_speakers.pop(pair.voice["speaker_name"], None)
    new = [name for name in finetune_speakers if name not in base_speakers]
    tested = (
        speaker or (pair.voice or {}).get("speaker_name") or (new[0] if new else None) or next(iter(finetune_speakers))
    ).lower()
    if tested not in finetune_speakers:
        raise ValueError(f"--speaker {tested!r} is not a speaker of the fine-tune ({', '.join(finetune_speakers)}).")
    compared = tested if tested in base_speakers else None
    init_id = (pair.voice or {}).get("init_codec_id")
    if base_speaker is not None:
        compared = base_speaker.lower()
        if compared not in base_speakers:
            raise ValueError(f"--base_speaker {compared!r} is not a speaker of the base ({', '.join(base_speakers)}).")
    elif compared is None and init_id is not None:
        compared = next((name for name, codec_id in base_speakers.items() if codec_id == init_id), None)
    return tested, compared, [name for name in base_speakers if name != tested]


def evaluate_voice(
    pair: BaseAndFineTune,
    processor,
    texts: Sequence[str],
    output_dir: Path,
    *,
    speaker: str | None = None,
    base_speaker: str | None = None,
    transcriber: PipelineTranscriber | None = None,
    speaker_encoder: SpeakerEncoder | None = None,
    references: list[np.ndarray] | None = None,
    max_new_tokens: int = 1024,
    asr_prompt: str = DEFAULT_ASR_PROMPT,
    batch_size: int = 8,
    asr_max_new_tokens: int = 128,
) -> dict:
    """Speak `texts` with every speaker of interest on both models and score the speech (see the module's doc).
    The speech is written to `output_dir/speech/{variant}/{speaker}/{i}.wav`."""
    tested, compared, preserved = voice_speakers(pair, speaker, base_speaker)
    plan = {
        "base": ([(tested, compared)] if compared else []) + [(name, name) for name in preserved],
        "finetune": [(tested, tested)] + [(name, name) for name in preserved],
    }
    speech: dict[str, dict[str, list[np.ndarray]]] = {variant: {} for variant in VARIANTS}
    heard: dict[str, dict[str, list[str]]] = {variant: {} for variant in VARIANTS}
    for variant in VARIANTS:
        with pair.use(variant) as model:
            for role, spoken_as in plan[variant]:
                folder = output_dir / "speech" / variant / role
                waves = _speak_texts(model, processor, texts, spoken_as, max_new_tokens, folder, desc=variant)
                speech[variant][role] = waves
                heard[variant][role] = _self_transcribe(
                    model, processor, waves, asr_prompt, batch_size, asr_max_new_tokens
                )

    def score(variant: str, role: str) -> dict:
        waves = speech[variant][role]
        entry = {
            "spoken_as": dict(plan[variant])[role],
            "num_texts": len(texts),
            "texts_without_speech": sum(not w.size for w in waves),
            "self_transcribed": _rates(error_rates(texts, heard[variant][role])),
        }
        if transcriber is not None:
            entry["transcriber"] = _rates(
                error_rates(texts, [transcriber([w], SPEECH_SAMPLING_RATE)[0] if w.size else "" for w in waves])
            )
        if speaker_encoder is not None:
            base_waves = speech["base"][role] if role in preserved and variant == "finetune" else None
            references_of_role = references if role == tested else None
            entry.update(_speaker_similarities(speaker_encoder, waves, references_of_role, base_waves))
        return entry

    report = {
        "tested_speaker": tested,
        "base_speaker_compared": compared,
        "preserved_speakers": preserved,
        "num_texts": len(texts),
        "sampling_rate": SPEECH_SAMPLING_RATE,
        "transcriber": transcriber.name if transcriber else None,
        "speaker_encoder": speaker_encoder.name if speaker_encoder else None,
        "speakers": {},
    }
    for role in [tested, *preserved]:
        report["speakers"][role] = {variant: score(variant, role) for variant in VARIANTS if role in speech[variant]}
        if len(report["speakers"][role]) == 2:
            report["speakers"][role]["difference"] = _difference(
                _flatten(report["speakers"][role]["base"]), _flatten(report["speakers"][role]["finetune"])
            )
    if pair.peft_model is None and pair.finetune is pair.base:
        report["note"] = "no fine-tune given: base and fine-tune are the same model"
    return report


def _speak_texts(
    model, processor, texts: Sequence[str], spoken_as: str, max_new_tokens: int, folder: Path, desc: str
) -> list[np.ndarray]:
    """`texts` spoken by `model` as the speaker `spoken_as`, each also written to `folder/{i}.wav`."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    waves = []
    for index, text in enumerate(tqdm(texts, desc=f"{desc} speaks as {spoken_as}", unit="text")):
        waves.append(speak(model, processor, text, spoken_as, max_new_tokens))
        sf.write(folder / f"{index}.wav", waves[-1], SPEECH_SAMPLING_RATE, subtype="FLOAT")
    return waves


def _self_transcribe(
    model, processor, waves: list[np.ndarray], asr_prompt: str, batch_size: int, max_new_tokens: int
) -> list[str]:
    """What the checkpoint's own Thinker hears in each wave (at 16 kHz, as its audio encoder hears); "" for a wave
    without speech."""
    prompts = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": resample(w, SPEECH_SAMPLING_RATE, 16000)},
                    {"type": "text", "text": asr_prompt},
                ],
            }
        ]
        for w in waves
        if w.size
    ]
    answers = []
    for start in range(0, len(prompts), batch_size):
        answers += generate_answers(thinker_of(model), processor, prompts[start : start + batch_size], max_new_tokens)
    answers_iter = iter(answers)
    return [split_thinking(next(answers_iter))[1] if w.size else "" for w in waves]


def _speaker_similarities(
    speaker_encoder: SpeakerEncoder,
    waves: list[np.ndarray],
    references: list[np.ndarray] | None,
    base_waves: list[np.ndarray] | None,
) -> dict:
    """Mean cosine similarity of the waves' speaker embeddings to the references' centroid (when given) and to the
    base's speech of the same texts (when given), over the waves with speech."""
    embeddings = [speaker_encoder.embed([w], SPEECH_SAMPLING_RATE)[0] if w.size else None for w in waves]
    similarities = {}
    if references:
        centroid = speaker_encoder.embed(references, 16000).mean(0)
        similarities["similarity_to_reference"] = _mean(
            [cosine_similarity(e, centroid) for e in embeddings if e is not None]
        )
    if base_waves is not None:
        base_embeddings = [speaker_encoder.embed([w], SPEECH_SAMPLING_RATE)[0] if w.size else None for w in base_waves]
        similarities["similarity_to_base_speech"] = _mean(
            [cosine_similarity(e, b) for e, b in zip(embeddings, base_embeddings) if e is not None and b is not None]
        )
    return similarities


def _rates(rates: dict) -> dict:
    return {key: rates[key] for key in ("wer", "cer", "num_references")}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _flatten(entry: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix + key] = value
    return flat


def _difference(base: dict, finetune: dict) -> dict:
    """fine-tune minus base for every numeric metric both have."""
    return {
        key: finetune[key] - base[key]
        for key in base
        if key in finetune
        and base[key] is not None
        and finetune[key] is not None
        and not key.endswith("num_references")
    }


# ---------------------------------------------------------------------------------------------------- report
def compare_tasks(rows: Sequence[EvalRow], answers: dict[str, dict[str, str]], language: str = "en") -> dict:
    """Per task: the row count and each variant's metrics on the rows both variants answered, and the difference."""
    results = {}
    for task in TASKS:
        task_rows = [row for row in rows if row.task == task and all(row.key in answers[v] for v in VARIANTS)]
        if not task_rows:
            continue
        references = [row.reference for row in task_rows]
        entry: dict = {"num_rows": len(task_rows)}
        for variant in VARIANTS:
            predictions = [split_thinking(answers[variant][row.key])[1] for row in task_rows]
            entry[variant] = task_metrics(task, references, predictions, language)
        entry["difference"] = _difference(_flatten(entry["base"]), _flatten(entry["finetune"]))
        entry["headline"] = dict(zip(("metric", "higher_is_better"), HEADLINE_METRICS[task]))
        results[task] = entry
    return results


MODEL_INDEX_NAMES = {
    "asr": ("automatic-speech-recognition", "Speech recognition", [("wer", "WER"), ("cer", "CER")]),
    "text": ("text-generation", "Free text", [("bleu", "BLEU"), ("chrf", "chrF"), ("rouge_l", "ROUGE-L")]),
    "exact_match": ("question-answering", "Short answers", [("exact_match", "Exact match")]),
    "multiple_choice": ("multiple-choice", "Multiple choice", [("accuracy", "Accuracy")]),
}


def model_index_entries(report: dict) -> list[dict]:
    """The fine-tune's results as `model-index` entries (huggingface_hub `EvalResult` fields, without the dataset,
    which the card adds): one per task metric, and the voice's intelligibility and speaker similarity."""
    entries = []
    for task, entry in report["tasks"].items():
        task_type, task_name, metrics = MODEL_INDEX_NAMES[task]
        for key, name in metrics:
            value = entry["finetune"].get(key)
            if value is not None:
                entries.append(
                    {
                        "task_type": task_type,
                        "task_name": task_name,
                        "metric_type": key,
                        "metric_name": name,
                        "metric_value": round(float(value), 4),
                    }
                )
    voice = report.get("voice")
    if voice:
        tested = voice["speakers"][voice["tested_speaker"]]["finetune"]
        for key, metric_type, name in (
            ("self_transcribed.wer", "wer", "Intelligibility WER (own Thinker)"),
            ("transcriber.wer", "wer", "Intelligibility WER ({})".format(voice["transcriber"])),
            ("similarity_to_reference", "speaker_similarity", "Speaker similarity"),
        ):
            value = _flatten(tested).get(key)
            if value is not None:
                entries.append(
                    {
                        "task_type": "text-to-speech",
                        "task_name": f"Voice {voice['tested_speaker']}",
                        "metric_type": metric_type,
                        "metric_name": name,
                        "metric_value": round(float(value), 4),
                    }
                )
    return entries


def plot_comparison(report: dict, path: Path) -> list[str]:
    """One pair of bars (base, fine-tune) per task's headline metric and per voice metric; returns the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    for task, entry in report["tasks"].items():
        metric, higher = HEADLINE_METRICS[task]
        bars.append(
            (
                f"{task}\n{metric} ({'higher' if higher else 'lower'} is better)",
                entry["base"].get(metric),
                entry["finetune"].get(metric),
            )
        )
    for role, entry in (report.get("voice") or {}).get("speakers", {}).items():
        base, finetune = _flatten(entry.get("base", {})), _flatten(entry.get("finetune", {}))
        bars.append(
            (
                f"voice {role}\nWER (lower is better)",
                base.get("self_transcribed.wer"),
                finetune.get("self_transcribed.wer"),
            )
        )
    figure, axes = plt.subplots(1, len(bars), figsize=(3.2 * len(bars), 3.6), squeeze=False)
    for axis, (label, base, finetune) in zip(axes[0], bars):
        values = [np.nan if v is None else v for v in (base, finetune)]
        axis.bar(VARIANTS, values, color=["#999999", "#3070b0"])
        for x, value in enumerate(values):
            if not np.isnan(value):
                axis.text(x, value, f"{value:.3g}", ha="center", va="bottom", fontsize=8)
        axis.set_title(label, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return [label for label, _, _ in bars]


# ---------------------------------------------------------------------------------------------------- entry point
def evaluate_qwen3_omni(
    model_name_or_path: str,
    dataset_name: str,
    output_dir: str | os.PathLike,
    *,
    adapter: str | None = None,
    split: str = "test",
    dataset_config: str | None = None,
    task: str = "auto",
    dataset_format: str = "auto",
    audio_column: str = "audio",
    text_column: str = "text",
    asr_prompt: str = DEFAULT_ASR_PROMPT,
    system_prompt: str | None = None,
    media_dir: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    language: str = "en",
    dtype: str = "auto",
    device: str | None = None,
    quantization_kwargs: dict | None = None,
    attn_implementation: str | None = None,
    evaluate_voice_of_talker: bool | None = None,
    speaker: str | None = None,
    base_speaker: str | None = None,
    voice_samples: int = 16,
    talker_max_new_tokens: int = 1024,
    transcriber: str | None = None,
    speaker_encoder: str | None = None,
    speaker_reference: str | None = None,
) -> dict:
    """Evaluate the fine-tune (`adapter`: a LoRA adapter folder or a merged model folder) against its base
    `model_name_or_path` on `dataset_name` and write the report to `output_dir` (see the module's doc).

    `evaluate_voice_of_talker=None` evaluates the voice when the checkpoint has a Talker. A `transcriber`,
    `speaker_encoder` or `speaker_reference` that cannot be loaded is refused before any model is loaded.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with_talker = _voice_is_evaluated(model_name_or_path, evaluate_voice_of_talker)
    judges = _voice_judges(with_talker, transcriber, speaker_encoder, speaker_reference, device)
    rows, rows_report = read_eval_rows(
        dataset_name,
        split=split,
        config_name=dataset_config,
        task=task,
        dataset_format=dataset_format,
        audio_column=audio_column,
        text_column=text_column,
        asr_prompt=asr_prompt,
        system_prompt=system_prompt,
        media_dir=media_dir,
        max_samples=max_samples,
    )
    logger.info(f"{len(rows)} evaluation rows: {dict(Counter(row.task for row in rows))}")
    processor = AutoProcessor.from_pretrained(model_name_or_path)
    pair = load_models(
        model_name_or_path,
        adapter,
        with_talker=with_talker,
        dtype=dtype,
        device=device,
        quantization_kwargs=quantization_kwargs,
        attn_implementation=attn_implementation,
    )

    answers, failed = _answer_with_both(
        pair,
        processor,
        rows,
        output_dir / "cache",
        model_name_or_path,
        adapter,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        quantization_kwargs=quantization_kwargs,
        dtype=dtype,
    )
    report = {
        "base_model": model_name_or_path,
        "finetune": adapter,
        "finetune_kind": adapter_kind(adapter),
        "dataset": dataset_name,
        "split": split,
        "data": _data_counts(rows, rows_report, answers, failed),
        "generation": {"decoding": "greedy", "max_new_tokens": max_new_tokens, "batch_size": batch_size},
        "text_normalization": "whisper_english" if language == "en" else "whisper_basic",
        "tasks": compare_tasks(rows, answers, language),
    }
    write_predictions(rows, answers, output_dir / "predictions.jsonl")
    texts = [row.reference for row in rows if row.task in ("asr", "text")][:voice_samples]
    if with_talker and not texts:
        logger.warning("No free-text or transcript reference to speak: the voice is not evaluated.")
    elif with_talker:
        report["voice"] = evaluate_voice(
            pair,
            processor,
            texts,
            output_dir,
            speaker=speaker,
            base_speaker=base_speaker,
            **judges,
            max_new_tokens=talker_max_new_tokens,
            asr_prompt=asr_prompt,
            batch_size=batch_size,
        )
    report["plots"] = {"comparison": "comparison.png"}
    plot_comparison(report, output_dir / "comparison.png")
    report["model_index"] = model_index_entries(report)
    (output_dir / "eval_results.json").write_text(json.dumps(report, indent=2))
    return report


def _voice_is_evaluated(model_name_or_path: str, evaluate_voice_of_talker: bool | None) -> bool:
    """Whether the Talker's voice is evaluated: asked for (refused for a checkpoint without a Talker), or else
    whenever the checkpoint has one."""
    config = AutoConfig.from_pretrained(model_name_or_path)
    with_talker = has_talker(config) if evaluate_voice_of_talker is None else evaluate_voice_of_talker
    if with_talker and not has_talker(config):
        audio_output = getattr(config, "enable_audio_output", None)
        raise ValueError(
            f"--evaluate_voice true: {model_name_or_path} has no Talker (model_type="
            f"{config.model_type!r}, enable_audio_output={audio_output})."
        )
    return with_talker


def _voice_judges(
    with_talker: bool,
    transcriber: str | None,
    speaker_encoder: str | None,
    speaker_reference: str | None,
    device: str | None,
) -> dict:
    """The judges of the Talker's speech, loaded before any model so that one that cannot be is refused first."""
    judge_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    judges = {
        "transcriber": PipelineTranscriber(transcriber, device=judge_device) if with_talker and transcriber else None,
        "speaker_encoder": SpeakerEncoder(speaker_encoder, judge_device) if with_talker and speaker_encoder else None,
        "references": read_reference_clips(speaker_reference) if with_talker and speaker_reference else None,
    }
    if (transcriber or speaker_encoder or speaker_reference) and not with_talker:
        logger.warning(
            "--transcriber / --speaker_encoder / --speaker_reference judge the Talker's speech; this "
            "evaluation has no Talker, so they are not used."
        )
    return judges


def _answer_with_both(
    pair: BaseAndFineTune,
    processor,
    rows: Sequence[EvalRow],
    cache_dir: Path,
    model_name_or_path: str,
    adapter: str | None,
    *,
    max_new_tokens: int,
    batch_size: int,
    quantization_kwargs: dict | None,
    dtype: str,
) -> tuple[dict[str, dict[str, str]], Counter]:
    """Each variant's answers by row key, each cached under what shapes them, and the rows that failed."""
    cache_dir.mkdir(exist_ok=True)
    answers, failed = {}, Counter()
    for variant in VARIANTS:
        identity = model_name_or_path if variant == "base" else (adapter or model_name_or_path)
        cache = AnswerCache(
            cache_dir / f"{variant}.jsonl",
            {
                "model": os.path.abspath(identity) if os.path.exists(identity) else identity,
                "adapter_of": model_name_or_path if variant == "finetune" and adapter else None,
                "max_new_tokens": max_new_tokens,
                "quantization": quantization_kwargs or {},
                "dtype": str(dtype),
            },
        )
        with pair.use(variant) as model:
            answers[variant], variant_failed = answer_rows(
                thinker_of(model), processor, rows, cache, batch_size, max_new_tokens, f"{variant} answers"
            )
        failed = failed | variant_failed
    return answers, failed


def _data_counts(rows: Sequence[EvalRow], rows_report: RowsReport, answers: dict, failed: Counter) -> dict:
    """The report's "data" entry: rows read and skipped (at reading, or failing to answer), evaluated, by task."""
    return {
        **rows_report.to_dict(),
        "skipped": dict(Counter(rows_report.skipped) + failed),
        "num_evaluated": sum(all(row.key in answers[v] for v in VARIANTS) for row in rows),
        "rows_by_task": dict(Counter(row.task for row in rows)),
    }


def write_predictions(rows: Sequence[EvalRow], answers: dict[str, dict[str, str]], path: Path) -> None:
    """One JSON line per row: its prompt, reference and each variant's answer with its thinking apart."""
    with open(path, "w") as handle:
        for row in rows:
            entry = {
                "row_id": row.row_id,
                "task": row.task,
                "reference": row.reference,
                "prompt": _text_of(row.prompt[-1]["content"]),
            }
            for variant in VARIANTS:
                raw = answers[variant].get(row.key)
                thinking, answer = split_thinking(raw) if raw is not None else (None, None)
                entry[variant] = answer
                entry[f"{variant}_thinking"] = thinking
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
