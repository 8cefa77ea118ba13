#!/usr/bin/env bash
# Set up (scripts/setup.sh --vllm: the project's .venv and vLLM's .venv-vllm), check style (ruff) and the import layers (import-linter, contracts in pyproject.toml),
# then run the whole test suite offline. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --vllm
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
# Two workers (one per core, one torch thread each); a test file's tests stay on one worker, so its module fixtures
# (the tiny checkpoints and training runs the file's tests share) are built once.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=20 "$@"
