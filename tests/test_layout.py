"""The package's shape: the library never imports the training application, no import cycles
(import statements and ``importlib.import_module("...")`` alike), no old module paths, drivers that
do not touch sys.path, and checkpoints that pickle no class of this package."""

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
# The modules that only re-exported old import paths; removed (CHANGELOG.md, 0.2.0).
REMOVED = ("srl_ext._deprecated", "srl_ext.engine", "srl_ext.cli", "srl_ext.models", "srl_ext.data",
           "srl_ext.data.images", "srl_ext.data.sts_b", "srl_ext.presets", "srl_ext.released_checkpoints")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """The srl_ext modules `path` imports, anywhere in the file (relative imports resolved), by an
    import statement or by ``importlib.import_module("...")`` / ``__import__("...")`` of a constant
    name (a string import is an edge of the import graph like any other)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and _called_name(node.func) in ("import_module", "__import__"):
            target = node.args[0].value
            if target.startswith("."):  # import_module(".x", package): relative to this package
                level = len(target) - len(target.lstrip("."))
                target = ".".join(package.split(".")[: len(package.split(".")) - level + 1] + [target.lstrip(".")])
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [f"{module}.{alias.name}" for alias in node.names]
            submodules = [n for n in names if n in MODULES]
            found.update(submodules if submodules else [module])  # `from . import sibling` imports the sibling
    # A module's own parent packages are imported before it by Python itself: not an edge.
    return {m for m in found if (m == "srl_ext" or m.startswith("srl_ext.")) and not name.startswith(m + ".")}


def _called_name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


LIBRARY = {module_name(p): p for p in PACKAGE.rglob("*.py") if "training" not in p.relative_to(PACKAGE).parts}
MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_the_library_never_imports_the_training_application():
    offenders = {name: sorted(m for m in imports_of(path) if m.startswith("srl_ext.training"))
                 for name, path in LIBRARY.items()}
    assert not {name: found for name, found in offenders.items() if found}


def import_graph(sources: dict[Path, str | None]) -> dict[str, set[str]]:
    """module -> the srl_ext modules it imports, for the files `sources` (path -> text, None: read it)."""
    names = {module_name(p) for p in sources}
    graph = {module_name(p): {m for m in imports_of(p, text) if m in names and m != module_name(p)}
             for p, text in sources.items()}
    return {name: {m for m in deps if m != "srl_ext"} for name, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (its modules in order, the first repeated last), or None."""
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, stack + [dep])) is not None:
                return cycle
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [name])) is not None:
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph({p: None for p in PACKAGE.rglob("*.py")}))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_through_import_module_is_caught():
    """The check sees a string import: the library importing the application by name, as
    ``distributed.__getattr__`` once did, closes a cycle."""
    distributed, ddp = PACKAGE / "distributed.py", PACKAGE / "training" / "ddp.py"
    sources = {p: None for p in PACKAGE.rglob("*.py")}
    sources[distributed] = distributed.read_text() + (
        "\n\ndef __getattr__(name):\n    import importlib\n"
        "    return getattr(importlib.import_module('srl_ext.training.ddp'), name)\n")
    assert "srl_ext.distributed" in imports_of(ddp)  # the other half of the cycle
    cycle = find_cycle(import_graph(sources))
    assert cycle is not None and {"srl_ext.distributed", "srl_ext.training.ddp"} <= set(cycle)
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_old_module_paths_are_gone():
    assert not [name for name in REMOVED if name in MODULES]
    from srl_ext import distributed

    assert not hasattr(distributed, "__getattr__")  # no name of the application reachable from the library


@pytest.mark.parametrize("driver", sorted((ROOT / "train").glob("*.py")), ids=lambda p: p.name)
def test_drivers_do_not_touch_sys_path(driver):
    assert "sys.path" not in driver.read_text()


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


TRAINING = PACKAGE / "training"
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_DRIVER_LINES = 400, 60, 40


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function or method of `source` longer than `limit` lines."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def test_the_training_application_has_short_files_and_functions():
    files = sorted(TRAINING.rglob("*.py"))
    assert files
    long_files = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long_files
    long = {str(p.relative_to(ROOT)): found for p in files if (found := long_functions(p.read_text(), MAX_FUNCTION_LINES))}
    assert not long


def test_the_function_length_check_sees_a_long_function():
    def body(lines: int, indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(lines))

    assert long_functions(f"def f():\n{body(MAX_FUNCTION_LINES, '    ')}", MAX_FUNCTION_LINES) == [
        ("f", MAX_FUNCTION_LINES + 1)]
    method = f"class C:\n    def g(self):\n{body(MAX_FUNCTION_LINES, '        ')}"
    assert long_functions(method, MAX_FUNCTION_LINES) == [("g", MAX_FUNCTION_LINES + 1)]
    assert long_functions(f"def f():\n{body(MAX_FUNCTION_LINES - 1, '    ')}", MAX_FUNCTION_LINES) == []


@pytest.mark.parametrize("driver", sorted((ROOT / "train").glob("*.py")), ids=lambda p: p.name)
def test_drivers_are_short_and_of_one_shape(driver):
    text = driver.read_text()
    assert len(text.splitlines()) < MAX_DRIVER_LINES
    assert f'driver("{driver.stem}")' in text and "sys.exit(command(main))" in text


def test_one_place_builds_an_engine():
    """``Engine(...)`` is called in srl_ext/training/run.py only (``open_engine``); the tools and
    the drivers get their engine there."""
    sites = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "train").glob("*.py"), *(ROOT / "tools").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _called_name(node.func) == "Engine":
                sites.append(str(path.relative_to(ROOT)))
    assert sites == ["srl_ext/training/run.py"]
