"""The `gpu` tier: tests that need a CUDA GPU. Each one does its CPU preparation (configs, models on meta or CPU,
argument parsing, memory estimates) on any machine and skips, with the reason, at the point where it needs CUDA, so a
mistake in the preparation shows up on CPU. `scripts/gpu_check.sh` runs the tier on a GPU and writes the report."""

import json
import os
import sys

import pytest


sys.path.insert(0, os.path.dirname(__file__))

# Where `record_figure` appends its figures (one JSON object a line); `scripts/gpu_check.sh` sets it.
FIGURES_ENV = "QWEN_OMNI_GPU_FIGURES"


@pytest.fixture
def record_figure(request):
    """`record_figure(name, value, unit="")`: a measured figure of this test, kept in the test's `user_properties`
    (JUnit XML) and appended to the JSON-lines file named by `$QWEN_OMNI_GPU_FIGURES` for the report."""

    def record(name: str, value, unit: str = "") -> None:
        entry = {"test": request.node.nodeid, "name": name, "value": value, "unit": unit}
        request.node.user_properties.append((name, json.dumps({"value": value, "unit": unit})))
        path = os.environ.get(FIGURES_ENV)
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    return record
