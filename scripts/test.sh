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
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
