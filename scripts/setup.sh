#!/usr/bin/env bash
# Set up a fresh machine (idempotent): system audio tools, a virtual environment in .venv, and this repository
# installed in it (editable, with the test extras). Re-runs finish in seconds once nothing changed.
# `--vllm` also builds .venv-vllm, vLLM on CPU in its own environment (scripts/setup_vllm.sh), alongside.
set -euo pipefail
cd "$(dirname "$0")/.."

# ffmpeg decodes test videos for the Qwen3-Omni collator; espeak-ng and sox regenerate the shipped speech corpus.
missing=()
for tool in ffmpeg espeak-ng sox; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: warning: ${missing[*]} not found and cannot apt-get install them (not root); video tests will fail" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ "${1:-}" = "--vllm" ]; then
  # .venv-vllm shares nothing with .venv: it installs at the same time (each pip keeps about one core busy)
  vllm_log=$(mktemp)
  bash scripts/setup_vllm.sh >"$vllm_log" 2>&1 &
  vllm_pid=$!
  trap 'kill "$vllm_pid" 2>/dev/null || true; rm -f "$vllm_log"' EXIT  # stop it if this script fails first
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.qwen-omni-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the Python stack into .venv (about two minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
if [ -n "${vllm_pid:-}" ]; then
  vllm_status=0
  wait "$vllm_pid" || vllm_status=$?
  cat "$vllm_log"
  rm -f "$vllm_log"
  trap - EXIT
  [ "$vllm_status" = 0 ] || { echo "setup: scripts/setup_vllm.sh failed (exit $vllm_status), its output above" >&2; exit "$vllm_status"; }
fi
