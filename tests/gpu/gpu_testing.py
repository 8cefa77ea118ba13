"""Helpers of the `gpu` tier: the point where a test needs CUDA (or an optional GPU package), and timing."""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
sys.path.insert(0, str(TESTS_DIR))

# the reason every test of the tier gives where it stops for want of a GPU; scripts/gpu_check.sh counts it
NO_CUDA_REASON = "needs CUDA from here on: torch.cuda.is_available() is False on this machine"
# environment of the scripts the tier launches: offline, and the GPU left visible (the CPU tests hide it)
SCRIPT_ENV = {
    **{key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"},
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def cuda_device(what: str) -> torch.device:
    """The CUDA device, or a skip saying what needed it. Call it where the test's CPU preparation ends."""
    if not torch.cuda.is_available():
        pytest.skip(f"{NO_CUDA_REASON} ({what})")
    return torch.device("cuda", torch.cuda.current_device())


def require_package(name: str, why: str) -> None:
    """Skip (with the reason) where the optional package `name` is not installed (scripts/gpu_check.sh says why)."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed ({why}); scripts/gpu_check.sh installs it when a wheel is at hand")


def cuda_median_seconds(function: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `function()` over `repeats` runs after `warmup`, the GPU synchronised around each."""
    times = []
    for index in range(warmup + repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
