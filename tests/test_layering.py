"""Imports go downward only (core → data sources → training → …) and names do not shadow
subpackages."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "saelab"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_data_sources_do_not_import_the_run_config_or_the_toy_benchmark():
    for path in sorted((SRC / "data").glob("*.py")):
        if path.name == "toy.py":  # a lazy, deprecated alias of saelab.toy.ToySource
            continue
        bad = {m for m in _imports(path)
               if m == "saelab.run_config" or m.startswith("saelab.toy")
               or m.startswith("saelab.training")}
        assert not bad, f"{path.name} imports {bad}"


def test_architectures_subpackage_is_importable_and_not_shadowed():
    code = ("import saelab, types; import saelab.architectures.jumprelu as j; "
            "assert isinstance(saelab.architectures, types.ModuleType), saelab.architectures; "
            "assert saelab.architectures.jumprelu is j; "
            "assert 'topk' in saelab.list_architectures()")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_still_work():
    from saelab.data.open import DataConfig as D1
    from saelab.run_config import DataConfig as D2
    from saelab.toy import ToySource

    assert D1 is D2
    assert ToySource.__module__ == "saelab.toy.source"


# Each subpackage (or top-level module) of saelab and its layer; a module may import from its
# own layer and the layers below, never above (core → data sources → training → evals →
# interpretation/use → cli). A new subpackage must be placed here.
LAYERS = {
    0: {"config", "registry", "architectures", "ops", "metrics", "io", "integrity", "lock"},
    1: {"data", "cache", "text", "models", "sources", "boardgame", "interop", "biography"},
    2: {"training", "distributed", "run_config"},
    3: {"evals", "search", "toy", "sweep"},
    4: {"features", "explore", "interp", "steer", "sarm", "pipelines", "lfads", "alignsae"},
    5: {"cli"},
}


def _layer_of(name: str) -> int:
    for layer, names in LAYERS.items():
        if name in names:
            return layer
    raise AssertionError(f"saelab.{name} has no layer: add it to LAYERS in {__file__}")


def test_imports_go_downward_only():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).parts
        if rel == ("__init__.py",) or rel[0] == "__pycache__":
            continue  # the package's public API sits above everything
        if rel == ("data", "toy.py"):
            continue  # a lazy, deprecated alias of saelab.toy.ToySource
        own = rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] != "saelab" or len(parts) < 2 or parts[1] == own:
                continue
            if _layer_of(parts[1]) > _layer_of(own):
                upward.append(f"{'/'.join(rel)} imports {module}")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)
