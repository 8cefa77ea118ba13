#!/usr/bin/env bash
# Prove the GPU paths in one command: set up the pinned stack with CUDA wheels, run the `gpu` test tier (tests/gpu)
# under a time limit, and write gpu_report.json and gpu_report.md (GPU, versions, each test's outcome and figures, the
# measured-vs-estimated memory table). Meant to finish in under 8 minutes on one H100 or H200, set-up included.
#
#   bash scripts/gpu_check.sh [--out DIR] [--limit SECONDS]   # on the GPU machine (default runs/gpu_check, 420 s)
#   bash scripts/gpu_check.sh --fetch-wheels                  # beforehand, on a machine with internet: fills .whl/
#
# Set-up, in order: the pins of pyproject.toml that the interpreter (PYTHON, else .venv/bin/python, else python3)
# does not meet are installed from .whl/ when wheels are there (a GPU machine without internet), else from PyPI into
# runs/.venv-gpu (which sees the system's packages; torch's default Linux wheel is the CUDA one), else the run goes on
# with the installed versions and the report says which differ. flash-attn is installed only if a prebuilt wheel
# installs within 60 s, deepspeed only within 60 s; otherwise their tests skip, and the report says why.
# The tier stops itself at the time limit (SIGINT to pytest: the finished tests are reported, the rest "not run").
# GPU_CHECK_ALLOW_CPU=1 runs it without a GPU (a dry run: each test stops where it needs CUDA); GPU_CHECK_NO_INSTALL=1
# installs nothing (an environment that is not yours to change).
set -uo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
OUT_DIR=${GPU_CHECK_OUT:-runs/gpu_check}
LIMIT=${GPU_CHECK_LIMIT_S:-420}
REPORT_RESERVE=25   # seconds kept for pytest's own shutdown and the report
WHEELS=.whl
VENV=runs/.venv-gpu
FETCH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --limit) LIMIT=$2; shift 2 ;;
    --fetch-wheels) FETCH=1; shift ;;
    *) echo "gpu_check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [ "$FETCH" = 1 ]; then
  # wheels for the GPU machines of this workplace (CPython 3.12, x86-64 Linux), without their dependencies: the
  # list names the ones their image lacks (scripts/gpu_report.py, CARRIED_REQUIREMENTS)
  mkdir -p "$WHEELS"
  mapfile -t wanted < <("$PYTHON" scripts/gpu_report.py wheels)
  platforms=()
  for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$tag"); done
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS" "${wanted[@]}" || exit 1
  echo "gpu_check: $(ls "$WHEELS"/*.whl | wc -l) wheels in $WHEELS/, $(du -sh "$WHEELS" | cut -f1) (they travel with" \
       "the working tree: carry '.whl'). torch stays the GPU machine's own (its CUDA wheels are ~1 GB)."
  exit 0
fi

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/{collected.txt,junit.xml,figures.jsonl,setup.json,pytest.log,gpu_report.json,gpu_report.md}
NOTES=()
note() { echo "gpu_check: $*" >&2; NOTES+=("$*"); }
elapsed() { echo $(( $(date +%s) - START )); }
ONLINE=  # whether PyPI answers, asked once
online() {
  if [ -z "$ONLINE" ]; then
    ONLINE=no
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/pip/', timeout=5)" \
      >/dev/null 2>&1 && ONLINE=yes
  fi
  [ "$ONLINE" = yes ]
}

# this checkout is the package `qwen_omni` (pyproject's package-dir): a link makes it importable without installing
SITE=${TMPDIR:-/tmp}/qwen_omni_gpu_check
mkdir -p "$SITE/pkg"
ln -sfn "$PWD" "$SITE/pkg/qwen_omni"
export PYTHONPATH="$SITE/pkg${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# 1. the pinned stack
mapfile -t unmet < <("$PYTHON" scripts/gpu_report.py pins 2>/dev/null || echo "torch (no usable interpreter)")
if [ ${#unmet[@]} -gt 0 ] && [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
  note "GPU_CHECK_NO_INSTALL=1: the pins ${unmet[*]} are not met and nothing is installed"
elif [ ${#unmet[@]} -gt 0 ]; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE/wheels" \
        "$WHEELS"/*.whl; then
      export PYTHONPATH="$SITE/wheels:$PYTHONPATH"
      note "installed from $WHEELS/ (pins not met: ${unmet[*]}): $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
    else
      note "the wheels in $WHEELS/ did not install; going on with the installed versions"
    fi
  elif online; then
    # the whole pinned stack (what the system's packages already meet is not reinstalled)
    mapfile -t project < <("$PYTHON" scripts/gpu_report.py requirements)
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
    if timeout 300 "$VENV/bin/python" -m pip install -q "${project[@]}"; then
      PYTHON=$VENV/bin/python
      note "installed the pinned stack from PyPI into $VENV in $(elapsed) s (pins not met before: ${unmet[*]})"
    else
      note "pip install of the pinned stack failed or took over 300 s; going on with the installed versions"
    fi
  else
    note "offline and no wheels in $WHEELS/ (run --fetch-wheels where there is internet): the pins ${unmet[*]} are" \
         "not met; going on with the installed versions (table below)"
  fi
  mapfile -t still < <("$PYTHON" scripts/gpu_report.py pins 2>/dev/null)
  [ ${#still[@]} -eq 0 ] || note "pins still not met: ${still[*]}"
fi

# 2. optional GPU packages: a wheel of theirs in .whl/, else only what installs from PyPI within 60 s: flash-attn from
# a prebuilt wheel alone (a source build takes far longer), deepspeed also from its source package (pure Python; its
# kernels are compiled when first used)
optional() {  # import name, what its absence skips, pip arguments
  local module=$1 skipped=$2; shift 2
  if "$PYTHON" -c "import $module" 2>/dev/null; then return; fi
  if compgen -G "$WHEELS/$module-*.whl" >/dev/null && "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
      --target "$SITE/wheels" "$WHEELS/$module"-*.whl; then
    case ":$PYTHONPATH:" in *":$SITE/wheels:"*) ;; *) export PYTHONPATH="$SITE/wheels:$PYTHONPATH" ;; esac
    note "$module installed from $WHEELS/"
    return
  fi
  if [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
    note "$module not installed (GPU_CHECK_NO_INSTALL=1): $skipped skips"
  elif ! online; then
    note "$module not installed (offline, and no wheel of it in $WHEELS/): $skipped skips"
  elif timeout 60 "$PYTHON" -m pip install -q "$@" >/dev/null 2>&1; then
    note "$module installed (pip install $*) within 60 s"
  else
    note "$module not installed (pip install $* did not succeed within 60 s): $skipped skips"
  fi
}
optional flash_attn "the flash_attention_2 test" --only-binary=:all: flash-attn
optional deepspeed "the DeepSpeed ZeRO-3 launch test" --no-build-isolation deepspeed

# 3. a GPU, or an explicit dry run
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  if [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then
    note "no CUDA device: a dry run (GPU_CHECK_ALLOW_CPU=1), every test stops where it needs CUDA"
  else
    echo "gpu_check: torch sees no CUDA device here ($PYTHON). Run it on a GPU machine, or set GPU_CHECK_ALLOW_CPU=1" \
         "for a dry run." >&2
    exit 2
  fi
fi

# 4. the tier, most telling first (the memory figures), stopped at the limit
TESTS=(tests/gpu/test_gpu_qwen3_omni.py tests/gpu/test_gpu_omni.py tests/gpu/test_gpu_launch.py tests/gpu/test_gpu_serve.py)
"$PYTHON" -m pytest --collect-only -q -p no:cacheprovider -m gpu "${TESTS[@]}" > "$OUT_DIR/collected.txt" 2>&1
budget=$(( LIMIT - $(elapsed) - REPORT_RESERVE ))
[ "$budget" -gt 30 ] || budget=30
note "set-up took $(elapsed) s; the tests get $budget s"
QWEN_OMNI_GPU_FIGURES="$OUT_DIR/figures.jsonl" timeout -s INT -k 15 "$budget" \
  "$PYTHON" -m pytest -m gpu "${TESTS[@]}" -p no:cacheprovider -q -rA --junitxml="$OUT_DIR/junit.xml" \
  2>&1 | tee "$OUT_DIR/pytest.log"
status=${PIPESTATUS[0]}
stopped=()
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  stopped=(--stopped)
  note "stopped at the time limit ($LIMIT s in all)"
fi

# 5. the report
printf '%s\n' "${NOTES[@]}" | "$PYTHON" -c "import json, sys; print(json.dumps(sys.stdin.read().splitlines()))" \
  > "$OUT_DIR/setup.json"
"$PYTHON" scripts/gpu_report.py report --out "$OUT_DIR" --collected "$OUT_DIR/collected.txt" \
  --junit "$OUT_DIR/junit.xml" --figures "$OUT_DIR/figures.jsonl" --setup "$OUT_DIR/setup.json" \
  --elapsed "$(elapsed)" --limit "$LIMIT" "${stopped[@]}"
echo "gpu_check: report in $OUT_DIR/gpu_report.md and $OUT_DIR/gpu_report.json ($(elapsed) s)"
exit "$status"
