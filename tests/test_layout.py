"""The package's shape: the library never imports the training application, no import cycles,
drivers that do not touch sys.path, old module paths that still import (with a warning), and
checkpoints that pickle no class of this package."""

from __future__ import annotations

import ast
import importlib
import pickletools
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "srl_ext"
SHIMS = {"srl_ext._deprecated", "srl_ext.engine", "srl_ext.cli", "srl_ext.models", "srl_ext.data",
         "srl_ext.data.images", "srl_ext.data.sts_b", "srl_ext.presets",
         "srl_ext.released_checkpoints"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The srl_ext modules `path` imports, anywhere in the file (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [f"{module}.{alias.name}" for alias in node.names]
            submodules = [n for n in names if n in MODULES]
            found.update(submodules if submodules else [module])  # `from . import sibling` imports the sibling
    # A module's own parent packages are imported before it by Python itself: not an edge.
    return {m for m in found if (m == "srl_ext" or m.startswith("srl_ext.")) and not name.startswith(m + ".")}


LIBRARY = {module_name(p): p for p in PACKAGE.rglob("*.py") if "training" not in p.relative_to(PACKAGE).parts}
MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_the_library_never_imports_the_training_application():
    offenders = {name: sorted(m for m in imports_of(path) if m.startswith("srl_ext.training"))
                 for name, path in LIBRARY.items() if name not in SHIMS}
    assert not {name: found for name, found in offenders.items() if found}


def test_no_import_cycles():
    graph = {module_name(p): {m for m in imports_of(p) if m in MODULES and m != module_name(p)}
             for p in PACKAGE.rglob("*.py") if module_name(p) not in SHIMS}
    graph = {name: {m for m in deps if m != "srl_ext" and m in graph} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("driver", sorted((ROOT / "train").glob("*.py")), ids=lambda p: p.name)
def test_drivers_do_not_touch_sys_path(driver):
    assert "sys.path" not in driver.read_text()


@pytest.mark.parametrize("old, new", [("srl_ext.engine", "srl_ext.training.engine"),
                                      ("srl_ext.cli", "srl_ext.training.cli"),
                                      ("srl_ext.models", "srl_ext.training.models"),
                                      ("srl_ext.data.sts_b", "srl_ext.training.data.sts_b")])
def test_moved_modules_still_import_with_a_warning(old, new):
    for name in [old, *(n for n in list(sys.modules) if n.startswith(old + "."))]:
        sys.modules.pop(name, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_moved_distributed_helpers_warn():
    from srl_ext import distributed
    from srl_ext.training import ddp

    with pytest.warns(DeprecationWarning, match="srl_ext.training.ddp.shard_indices"):
        assert distributed.shard_indices is ddp.shard_indices


def pickled_names(path: Path) -> set[str]:
    """Every string in the pickle of a torch.save file (module and class names among them)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}


def test_a_training_state_pickles_no_class_of_this_package(tmp_path):
    from srl_ext.training.checkpoint import atomic_save, rng_state
    from srl_ext.training.engine import Engine

    assert Engine.state_dict.__qualname__ == "Engine.state_dict"
    state = {"format": 1, "config": {"temp": 0.3, "envelope": "hard"}, "rng": rng_state(),
             "srl_loss": torch.nn.Linear(2, 2).state_dict(), "history": [{"split": "train"}]}
    atomic_save(state, tmp_path / "last.pt")
    assert not any(name.startswith("srl_ext") for name in pickled_names(tmp_path / "last.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.load(tmp_path / "last.pt", weights_only=False)["config"]["temp"] == 0.3


def test_no_file_cites_a_document_outside_the_repository():
    word = "SP" + "EC"  # the old citations' word, spelled so that this file does not contain it
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = [ROOT / name for name in listed.stdout.splitlines() if not name.endswith(".png")]
    assert not [str(p.relative_to(ROOT)) for p in tracked if p.is_file() and word in p.read_text(errors="ignore")]
    assert (ROOT / "docs" / "method.md").is_file()
