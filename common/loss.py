# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""The loss rules both wings' trainers share."""

from __future__ import annotations

import torch
from transformers import Trainer


def items_in_batch_over_processes(trainer: Trainer, local_items: torch.Tensor) -> torch.Tensor:
    """
    The loss denominator of the accumulated batch (`num_items_in_batch`): this process's summed target weight, summed
    over every process when the Trainer averages tokens across devices (`average_tokens_across_devices`), so the
    weighted loss is exact under gradient accumulation and DDP.
    """
    if trainer.args.average_tokens_across_devices and trainer.args.world_size > 1:
        return trainer.accelerator.gather(local_items).sum()
    return local_items
