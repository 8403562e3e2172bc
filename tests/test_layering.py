"""The package's layers: no module imports a layer above its own.

Every ``import`` and ``from ... import`` of every module under src/peerlearn is read with ``ast``, including
imports inside functions (a lazy import is still a dependency). A module may import its own layer and the
layers below it. Adding a top-level module or sub-package means adding its name to ``LAYERS`` at the lowest
layer that lies above everything it imports; an unlisted one fails ``test_every_module_has_a_layer``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peerlearn"
ROOT = "__init__"  # the package's own __init__.py: the public facade

# From the bottom up. A name is a top-level module (peerlearn/NAME.py) or sub-package (peerlearn/NAME/).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("utilities", ("errors", "tables", "progress", "command_options", "trust", "run_files", "section_providers",
                   "memory_format", "startup_gc")),
    ("data", ("data",)),
    ("models", ("models",)),
    ("config", ("config",)),  # describes a run: checks names against the data and model registries
    ("losses", ("losses",)),
    ("regularize", ("regularize",)),
    ("engine", ("engine",)),  # cohort, trainer, checkpoints, tracking, execution modes
    ("safe writes", ("safe_write",)),  # how after-training commands write files (temp + rename, no links)
    ("transfer", ("transfer",)),  # backbones, feature caches, alignment: used by the transfer recipe
    ("recipes", ("recipes",)),
    ("user inputs", ("user_inputs",)),  # members and data given from Python, merged into a config
    ("run reader", ("run_reader", "run_checks", "predict")),  # a finished run read back from its directory; its predictions
    ("api", ("api",)),  # train, prepare_run, load_run
    ("layer listing", ("layer_list",)),  # the readable layers of a config's members
    ("evaluate", ("evaluate",)),  # after-training metrics of a run
    ("analysis", ("analysis_runner",)),
    ("outputs", ("export", "report", "demo", "sql", "lightning", "sweeps")),  # sweeps: runs of api.train
    ("entry points", (ROOT, "cli", "__main__", "config_doc")),
]
LAYER_OF = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
# Names of the package root that anything may import: defined before the root imports anything.
ROOT_METADATA = {"__version__"}


def top_name(module: str) -> str:
    """'peerlearn.engine.trainer' -> 'engine'; 'peerlearn' -> the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool, package: Path) -> Iterator[tuple[int, str]]:
    """(line, peerlearn module) for every import of the package in ``source``, at any depth of the tree.

    ``from peerlearn import X`` counts as an import of ``peerlearn.X`` when X is a module or sub-package, as
    nothing when X is root metadata (``__version__``), else as an import of the root facade."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package.name:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != package.name:
                continue
            if target != package.name:
                yield node.lineno, target
                continue
            for alias in node.names:
                if alias.name in ROOT_METADATA:
                    continue
                is_module = (package / f"{alias.name}.py").exists() or (package / alias.name).is_dir()
                yield node.lineno, f"{target}.{alias.name}" if is_module else target


def top_level_names(package: Path) -> set[str]:
    names = {p.stem for p in package.glob("*.py")}
    names |= {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return names


def layer_violations(package: Path) -> list[str]:
    """One line per import of a higher layer: where it is, what it imports, and the two layers."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        own = top_name(module)
        if own not in LAYER_OF:
            continue  # reported by test_every_module_has_a_layer
        for line, target in imported_modules(path.read_text(), module, path.name == "__init__.py", package):
            other = top_name(target)
            if other in LAYER_OF and LAYER_OF[other] > LAYER_OF[own]:
                found.append(f"{path.relative_to(package.parent)}:{line} imports {target} "
                             f"(layer '{LAYERS[LAYER_OF[other]][0]}', above '{LAYERS[LAYER_OF[own]][0]}')")
    return found


def test_every_module_has_a_layer():
    unknown = sorted(top_level_names(PACKAGE) - set(LAYER_OF))
    assert not unknown, (
        f"peerlearn.{', peerlearn.'.join(unknown)} has no layer. Add it to LAYERS in tests/test_layering.py: at the "
        "lowest layer above every layer it imports, and below every layer that imports it (a new layer of its own "
        "where none fits).")


def test_no_module_imports_a_higher_layer():
    violations = layer_violations(PACKAGE)
    assert not violations, ("imports that run up the layers (move the shared code down, or pass what is needed "
                            "in):\n" + "\n".join(violations))


def test_the_check_sees_every_kind_of_import(tmp_path):
    """A fake package with one upward import of each kind: each is reported, the allowed ones are not."""
    package = tmp_path / "peerlearn"
    for sub in ("config", "recipes", "engine"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("__version__ = '0'\nfrom peerlearn.recipes import x\n")
    (package / "errors.py").write_text("")
    (package / "config" / "schema.py").write_text(
        "from peerlearn import __version__\n"  # allowed: metadata of the root
        "from peerlearn.errors import E\n"  # allowed: a lower layer
        "import peerlearn.engine.trainer\n"  # 3: module import, upward
        "def check():\n"
        "    from peerlearn.recipes import NAMES\n"  # 5: inside a function, upward
        "    from ..recipes import get\n"  # 6: relative, upward
        "    from peerlearn import recipes\n"  # 7: a sub-package by name from the root, upward
        "    from peerlearn import train\n")  # 8: the facade, upward
    (package / "config" / "__init__.py").write_text("from .schema import check\n")  # allowed: own layer
    (package / "engine" / "trainer.py").write_text("from peerlearn.config import C\n")  # allowed: below
    found = layer_violations(package)
    assert [v.split(" ", 1)[0] for v in found] == [f"peerlearn/config/schema.py:{n}" for n in (3, 5, 6, 7, 8)]
    assert "imports peerlearn.recipes (layer 'recipes', above 'config')" in found[1]
    assert "imports peerlearn (layer 'entry points', above 'config')" in found[4]
