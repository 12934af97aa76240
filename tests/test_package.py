"""The package installs, imports, and keeps its layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["numba_kernels", "world_models", "leworld_env", "agents"]


def test_four_packages_import_together():
    code = "import leworld_env, agents, world_models, numba_kernels; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_numba_kernels_never_import_torch():
    code = "import sys, numba_kernels; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _imported_top_levels(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_imports_only_go_down_the_layers(package):
    above = set(LAYERS[LAYERS.index(package) + 1 :])
    allowed_lazy = {"leworld_env": {"agents"}}  # the CLI may import agents inside sub-commands
    upward = (_imported_top_levels(package) & above) - allowed_lazy.get(package, set())
    assert not upward, f"{package} imports {upward}, which sit above it"
