"""Metric rules shared by both wings' evaluations, computed with maintained libraries (jiwer, sacrebleu, rouge-score)
and transformers' Whisper text normalisers; nothing is fetched from the Hub (`evaluate.load` would be).

- speech recognition: corpus WER / CER after Whisper's normalisation ([`error_rates`]);
- free text and captions: corpus BLEU and chrF (sacrebleu) and mean ROUGE-L F1 (rouge-score) ([`text_similarity`]);
- short answers: exact match after normalisation ([`exact_match`]);
- multiple choice: accuracy of the option letter read from the answer by [`extract_choice`]'s documented rule;
- thinking models: `<think>...</think>` separated from the answer ([`split_thinking`]);
- voices: cosine similarity of speaker embeddings ([`cosine_similarity`]).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


TASKS = ("asr", "text", "exact_match", "multiple_choice")
"""The tasks an evaluation row can be scored as, each with its metrics (see [`task_metrics`])."""

# The metric of each task that the comparison plot and the model card headline, and whether higher is better.
HEADLINE_METRICS = {
    "asr": ("wer", False),
    "text": ("chrf", True),
    "exact_match": ("exact_match", True),
    "multiple_choice": ("accuracy", True),
}

_NORMALIZERS: dict[str, object] = {}


# ---------------------------------------------------------------------------------------------------- normalisation
def normalize_text(text: str, language: str = "en") -> str:
    """
    Whisper's text normalisation: for English transformers' `EnglishTextNormalizer` (lower case, no punctuation or
    brackets, numbers as digits, contractions and titles expanded, e.g. "Mr. Smith's 25%" -> "mister smith is 25%"),
    for any other language its `BasicTextNormalizer` (lower case, punctuation and symbols removed, whitespace
    collapsed); leading and trailing spaces are dropped.

    The British -> American spelling map Whisper ships in its `normalizer.json` is not bundled with transformers (it
    would need a download); both sides of a comparison are normalised alike, so an empty map only leaves "colour" /
    "color" counted as an error.
    """
    key = "en" if language == "en" else "basic"
    if key not in _NORMALIZERS:
        from transformers.models.whisper.english_normalizer import (
            BasicTextNormalizer,
            EnglishTextNormalizer,
        )

        _NORMALIZERS[key] = EnglishTextNormalizer({}) if key == "en" else BasicTextNormalizer()
    return _NORMALIZERS[key](text).strip()


# -------------------------------------------------------------------------------------------- speech recognition
def error_rates(
    references: Sequence[str], predictions: Sequence[str], normalize: bool = True, language: str = "en"
) -> dict:
    """
    Corpus WER and CER: total edits over total reference words (characters), which is evaluate's `wer` / `cer`
    with `concatenate_texts=False`.

    jiwer is used directly: evaluate 0.4.6 loads its `wer` / `cer` scripts from the Hub (not offline), and those
    scripts import `jiwer.compute_measures`, removed in jiwer 4 (the `cer` script's jiwer>=3 branch also stops
    collapsing repeated spaces, so its values differ across jiwer versions). Whisper normalisation collapses
    whitespace, so the value here does not depend on it.

    References that normalise to nothing (e.g. only punctuation) have no words to err on: they are left out and
    counted in `skipped_empty_references`.
    """
    import jiwer

    if len(references) != len(predictions):
        raise ValueError(f"Got {len(references)} references for {len(predictions)} predictions.")
    if normalize:
        references = [normalize_text(text, language) for text in references]
        predictions = [normalize_text(text, language) for text in predictions]
    pairs = [(ref, hyp) for ref, hyp in zip(references, predictions) if ref.strip()]
    skipped = len(references) - len(pairs)
    if not pairs:
        return {"wer": None, "cer": None, "num_references": 0, "skipped_empty_references": skipped}
    refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return {
        "wer": words.wer,
        "cer": chars.cer,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "reference_words": words.substitutions + words.deletions + words.hits,
        "num_references": len(pairs),
        "skipped_empty_references": skipped,
    }


# ---------------------------------------------------------------------------------------------------- free text
def text_similarity(references: Sequence[str], predictions: Sequence[str]) -> dict:
    """
    Corpus BLEU and chrF (sacrebleu's defaults: 13a tokenisation, chrF with character 6-grams and beta 2, both on a
    0-100 scale) and the mean ROUGE-L F1 (rouge-score, Porter stemming, 0-1) of `predictions` against one reference
    each. chrF needs no tokeniser or network data, so it is the headline metric of free text.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    references, predictions = list(references), list(predictions)
    if len(references) != len(predictions):
        raise ValueError(f"Got {len(references)} references for {len(predictions)} predictions.")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(references, predictions)]
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "rouge_l": float(np.mean(rouge)) if rouge else None,
        "num_references": len(references),
    }


# ---------------------------------------------------------------------------------------------------- short answers
def exact_match(references: Sequence[str], predictions: Sequence[str]) -> dict:
    """Fraction of predictions equal to their reference after Whisper's basic normalisation (case, punctuation and
    whitespace ignored: "The answer: Paris." matches "the answer paris")."""
    matches = [
        normalize_text(ref, "basic") == normalize_text(hyp, "basic") for ref, hyp in zip(references, predictions)
    ]
    return {"exact_match": float(np.mean(matches)) if matches else None, "num_references": len(matches)}


# An option letter in an answer, tried in this order: "answer is (B)" / "answer: B", a parenthesised "(B)", and a
# letter alone at the start ("B", "B.", "B) red", not "I think"). Letters A-J, upper case only (a lower-case "a" is a
# word).
_CHOICE_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*\(?([A-J])\b\)?", re.IGNORECASE),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"^\s*([A-J])(?:[.):]|\s*$)"),
)


def extract_choice(text: str) -> str | None:
    """
    The option letter (A-J) an answer picks, by the first rule that matches:

    1. "answer is X", "answer: X", "Answer (X)" (any case of "answer"; the letter upper case);
    2. a parenthesised letter "(X)" anywhere;
    3. the answer being the letter alone or starting with it and `.`, `)` or `:`: "X", "X.", "X) red", "X: ..."
       (a letter followed by a word, "I think", is not an answer).

    `None` when no rule matches (scored as wrong).
    """
    for pattern in _CHOICE_PATTERNS:
        found = pattern.search(text)
        if found and found.group(1).isupper():
            return found.group(1)
    return None


def is_choice_reference(reference: str) -> bool:
    """A reference that is an option letter alone ("B", "(B)", "B."): its row is scored as multiple choice."""
    return extract_choice(reference) is not None and len(normalize_text(reference, "basic")) == 1


def choice_accuracy(references: Sequence[str], predictions: Sequence[str]) -> dict:
    """Multiple-choice accuracy: [`extract_choice`] of each prediction equals that of its reference; answers with no
    letter are counted in `unanswered`."""
    picked = [extract_choice(hyp) for hyp in predictions]
    correct = [pick is not None and pick == extract_choice(ref) for ref, pick in zip(references, picked)]
    return {
        "accuracy": float(np.mean(correct)) if correct else None,
        "unanswered": sum(pick is None for pick in picked),
        "num_references": len(correct),
    }


def task_metrics(task: str, references: Sequence[str], predictions: Sequence[str], language: str = "en") -> dict:
    """The metrics of `task` (one of [`TASKS`]) for the given pairs."""
    if task == "asr":
        return error_rates(references, predictions, language=language)
    if task == "text":
        return text_similarity(references, predictions)
    if task == "exact_match":
        return exact_match(references, predictions)
    if task == "multiple_choice":
        return choice_accuracy(references, predictions)
    raise ValueError(f"Unknown task {task!r}: one of {', '.join(TASKS)}.")


# ---------------------------------------------------------------------------------------------------- thinking
_THINK = re.compile(r"^\s*(?:<think>)?(.*?)</think>\s*", re.DOTALL)


def split_thinking(text: str) -> tuple[str | None, str]:
    """`(thinking, answer)` of a thinking model's output `"<think>...</think> answer"` (the opening tag may be in the
    prompt, as Qwen3's templates put it); `(None, text)` when there is no `</think>`."""
    found = _THINK.match(text)
    if not found:
        return None, text.strip()
    return found.group(1).strip(), text[found.end() :].strip()


# ---------------------------------------------------------------------------------------------------- voices
def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embedding vectors (speaker verification's score)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
