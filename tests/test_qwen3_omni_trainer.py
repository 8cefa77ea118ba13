"""Qwen3OmniSFTTrainer's evaluation: one forward per batch when only the loss is wanted, logits when asked."""

import json

import pytest
import torch
from transformers import AutoProcessor

from qwen_omni.qwen3_omni import (
    Qwen3OmniSFTCollator,
    Qwen3OmniSFTTrainer,
    load_conversation_dataset,
    load_thinker,
    tiny_checkpoints,
)
from qwen_omni.qwen3_omni.arguments import Qwen3OmniSFTConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_omni_trainer")
    base = tiny_checkpoints.save_tiny_checkpoint(root / "base")
    rows = [
        {"messages": [{"role": "user", "content": f"Say {word}."}, {"role": "assistant", "content": word}]}
        for word in ("one", "two", "three", "four")
    ]
    data = root / "eval.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    return {"base": base, "data": str(data), "root": root}


def _trainer(setup, **kwargs):
    processor = AutoProcessor.from_pretrained(setup["base"])
    args = Qwen3OmniSFTConfig(
        output_dir=str(setup["root"] / "out"),
        report_to="none",
        use_cpu=True,
        per_device_eval_batch_size=2,
    )
    return Qwen3OmniSFTTrainer(
        model=load_thinker(setup["base"]),
        args=args,
        data_collator=Qwen3OmniSFTCollator(processor),
        train_dataset=load_conversation_dataset(setup["data"]),
        eval_dataset=load_conversation_dataset(setup["data"]),
        processing_class=processor,
        **kwargs,
    )


def _count_forwards(trainer):
    calls = []
    trainer.model.register_forward_hook(lambda module, args, kwargs, output: calls.append(1), with_kwargs=True)
    return calls


def test_evaluate_without_metrics_runs_one_forward_per_batch(setup):
    trainer = _trainer(setup)
    calls = _count_forwards(trainer)
    metrics = trainer.evaluate()
    assert len(calls) == 2  # 4 rows, 2 per batch
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_predict_still_returns_logits(setup):
    trainer = _trainer(setup)
    calls = _count_forwards(trainer)
    output = trainer.predict(load_conversation_dataset(setup["data"]))
    vocab = trainer.model.config.text_config.vocab_size
    assert output.predictions.shape[-1] == vocab and output.predictions.shape[0] == 4
    assert len(calls) == 4  # the fused-head loss forward and the plain-head logits forward, per batch
