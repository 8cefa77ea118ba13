"""The layers stated in pyproject.toml's import-linter contracts hold, and a deliberately wrong import breaks them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omni_testing import REPO_ROOT


LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SKIP_DIRS = {".git", "tests", "data", "runs", "docs", "bench", "train", "scripts", "__pycache__"}


@pytest.fixture
def package_copy(tmp_path):
    """The package's Python files and pyproject.toml copied to `tmp/qwen_omni`, importable from `tmp`."""
    target = tmp_path / "qwen_omni"
    for path in REPO_ROOT.rglob("*.py"):
        relative = path.relative_to(REPO_ROOT)
        if relative.parts[0].startswith(".") or SKIP_DIRS.intersection(relative.parts):
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / relative)
    shutil.copyfile(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def add_import(root: Path, module: str, line: str) -> None:
    path = root / "qwen_omni" / module
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_repository_keeps_its_layers(package_copy):
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("common/audio.py", "from ..omni import corpus", "qwen_omni.common.audio -> qwen_omni.omni.corpus"),
        (
            "qwen3_omni/collator.py",
            "from ..omni import packing",
            "qwen_omni.qwen3_omni.collator -> qwen_omni.omni.packing",
        ),
        ("modeling_omni.py", "from .common import audio", "qwen_omni.modeling_omni -> qwen_omni.common.audio"),
        ("configuration_snac.py", "import torch", "qwen_omni.configuration_snac -> torch"),
    ],
    ids=["floor-imports-wing", "wing-imports-wing", "remote-code-imports-floor", "torch-in-config"],
)
def test_a_wrong_import_is_caught(package_copy, module, line, broken):
    add_import(package_copy, module, line)
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout
