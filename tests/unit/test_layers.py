"""The package's layers hold: a module imports only from its own layer or the layers below it.

Bottom to top: the shared vocabulary (errors, events, results), ``model/``, ``cache/``,
``runtime/``, ``engine/``, ``display/``, and the faces (``api``, ``cli``, ``cliargs``, ``luigi``,
the package itself). Every import counts, also those inside functions (the lazy ones). Only the
Docker runtime's modules (runtime/docker*.py) talk to aiodocker and aiohttp.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "kliko_async"
LAYERS = ("vocabulary", "model", "cache", "runtime", "engine", "display", "faces")
VOCABULARY = {"errors", "events", "results", "collector"}  # collector: imports nothing of ours
DOCKER_ONLY = {"aiodocker", "aiohttp"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")[1:]
    if not parts:
        return LAYERS.index("faces")  # the package itself re-exports the faces
    if parts[0] in VOCABULARY:
        return LAYERS.index("vocabulary")
    if parts[0] in LAYERS:
        return LAYERS.index(parts[0])
    return LAYERS.index("faces")


def imported_modules(path: Path, package: str = "kliko_async") -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative imports resolved from ``package``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            # ``from kliko_async.engine import exports`` imports a module one level down
            found += [
                (node.lineno, f"{base}.{alias.name}")
                for alias in node.names
                if (PACKAGE.parent / base.replace(".", "/") / f"{alias.name}.py").is_file()
            ]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def upward_imports(path: Path, me: str) -> list[str]:
    return [
        f"line {line}: {target} ({LAYERS[layer_of(target)]})"
        for line, target in imported_modules(
            path, me if path.name == "__init__.py" else me.rpartition(".")[0]
        )
        if target.startswith("kliko_async") and layer_of(target) > layer_of(me)
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_nothing_above_its_layer(path: Path) -> None:
    me = module_name(path)
    upward = upward_imports(path, me)
    assert not upward, f"{me} ({LAYERS[layer_of(me)]}) imports upward: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_docker_runtime_talks_to_the_engine_library(path: Path) -> None:
    me = module_name(path)
    direct = [t for _, t in imported_modules(path) if t.split(".")[0] in DOCKER_ONLY]
    assert me.startswith("kliko_async.runtime.docker") or not direct, f"{me} imports {direct}"


def test_the_check_sees_upward_imports_also_inside_functions(tmp_path: Path) -> None:
    """The check itself can fail: a model module importing the engine, lazily, is caught."""
    source = tmp_path / "spec.py"
    source.write_text(
        (PACKAGE / "model" / "spec.py").read_text()
        + "\n\ndef later() -> None:\n    from kliko_async.engine import plan\n"
    )
    assert upward_imports(source, "kliko_async.model.spec") == [
        f"line {len(source.read_text().splitlines())}: kliko_async.engine (engine)",
        f"line {len(source.read_text().splitlines())}: kliko_async.engine.plan (engine)",
    ]


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init.relative_to(PACKAGE)} has no docstring on its imports"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_is_short_enough_to_read_in_one_sitting(path: Path) -> None:
    """A module that needs a table of contents is two modules (STYLE.md): 500 lines at most."""
    assert len(path.read_text().splitlines()) <= 500


def test_every_test_module_has_a_name_of_its_own() -> None:
    """pytest imports test modules by their file name: two ``test_x.py`` in different folders
    stop the whole suite at collection (a unit and an integration file once shared one)."""
    tests = Path(__file__).resolve().parents[1]
    seen: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}
