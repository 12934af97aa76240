"""The layer rule of docs/design.md, checked on the source: imports go down only, and never in a circle.

Every import counts, also one inside a function. The one exception is the CLI
(``leworld_env.cli``), whose sub-commands may import ``agents`` lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("numba_kernels", "world_models", "leworld_env", "agents", "rtl")

# (prefix, rank): a module's layer is the rank of the longest prefix it starts with.
LAYERS = (
    ("numba_kernels", 0),
    ("world_models", 10),  # base modules: errors, files, config, pose, interface, locate, training, ...
    ("world_models.data", 11),
    ("world_models.lewm", 12),
    ("world_models.backends", 13),
    ("world_models.memory", 14),
    ("world_models.runtime", 15),
    ("world_models.evaluate", 15),
    ("world_models.__init__", 15),
    ("leworld_env", 20),
    ("leworld_env.sim", 20),
    ("leworld_env.envs", 21),
    ("leworld_env.__init__", 21),
    ("leworld_env.playback", 22),
    ("leworld_env.cli", 23),
    ("leworld_env.sb3", 23),  # public short paths over envs/ and playback/ (the README's imports)
    ("leworld_env.play", 23),
    ("leworld_env.starts", 23),
    ("agents", 30),
    ("rtl", 30),  # the FPGA datapath: reads its references from numba_kernels and world_models; nothing imports it
)
ALLOWED_UPWARD = (("leworld_env.cli", "agents"),)


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            files[".".join(parts)] = path
    return files


MODULES = module_files()


def layer(module: str) -> int:
    best, rank = -1, -1
    for prefix, value in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
            best, rank = len(prefix), value
    return rank


def target(name: str) -> str | None:
    """The project module an import names (a package means its ``__init__``), or None for others."""
    if name.split(".")[0] not in PACKAGES:
        return None
    return name if name in MODULES else (f"{name}.__init__" if f"{name}.__init__" in MODULES else name)


def imports_of(module: str) -> set[str]:
    """Every project module ``module`` imports, at the top or inside a function."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule where one exists, else the package
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [s for s in subs if s in MODULES or f"{s}.__init__" in MODULES] or [node.module]
        else:
            continue
        found |= {t for name in names if (t := target(name)) is not None and t != module}
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer(m) < 0] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_only(module):
    upward = [
        name
        for name in sorted(GRAPH[module])
        if layer(name) > layer(module)
        and not any(module.startswith(low) and name.startswith(high) for low, high in ALLOWED_UPWARD)
    ]
    assert upward == [], f"{module} (layer {layer(module)}) imports from above: {upward}"


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(GRAPH.get(module, ())):
            if state.get(name) == "open":
                cycles.append([*path[path.index(name) :], name])
            elif name in GRAPH and name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []
