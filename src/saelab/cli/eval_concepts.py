"""``saelab eval SAE... --suite concepts`` (or one of its evaluations): the concept suite of
``saelab.evals.concepts`` over one or more SAEs, one JSON per SAE plus a comparison table and
plot. Kept out of eval_cmd.py so that the core command stays short."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saelab.config import ConfigError, add_arguments, args_to_dict, from_dict
from saelab.evals import absorption, concept_cones, concepts, monosemanticity, sparse_probing
from saelab.io import atomic_write_bytes, load

SUITES = ("core", "concepts", *concepts.EVALS)
NESTED = (("absorption", "absorption_", absorption.AbsorptionConfig),
          ("probing", "probing_", sparse_probing.SparseProbingConfig),
          ("monosemanticity", "ms_", monosemanticity.MonosemanticityConfig),
          ("cones", "cones_", concept_cones.ConeConfig))


def add_concept_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("concept suite options (--suite other than core)")
    add_arguments(group, concepts.ConceptSuiteConfig, prefix="concepts_", flag_prefix="",
                  skip=("evals",))
    for _, prefix, cls in NESTED:
        add_arguments(group, cls, prefix=prefix)


def suite_config(args: argparse.Namespace) -> concepts.ConceptSuiteConfig:
    data: dict[str, Any] = args_to_dict(args, concepts.ConceptSuiteConfig, "concepts_")
    data.pop("evals", None)
    for name, prefix, cls in NESTED:
        data[name] = args_to_dict(args, cls, prefix)
    data["evals"] = list(concepts.EVALS) if args.suite == "concepts" else [args.suite]
    return from_dict(concepts.ConceptSuiteConfig, data)


def sae_names(paths: list[str]) -> list[str]:
    """Short unique names: the folder names, with the parent added where two collide."""
    names = [Path(p).resolve().name for p in paths]
    for i, n in enumerate(names):
        if names.count(n) > 1:
            names[i] = f"{Path(paths[i]).resolve().parent.name}_{n}"
    if len(set(names)) < len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    return names


def default_out(paths: list[str]) -> Path:
    if len(paths) == 1:
        return Path(paths[0]) / "concepts"
    parents = [Path(p).resolve().parent for p in paths]
    common = Path(*Path(parents[0]).parts[:min(len(p.parts) for p in parents)])
    while not all(p.is_relative_to(common) for p in parents):
        common = common.parent
    return common / "concepts"


def run(args: argparse.Namespace) -> int:
    cfg = suite_config(args)
    paths = list(args.sae)
    if args.data:
        raise ConfigError("--data is for --suite core; the concept suite reads activations "
                          "from --model (and --hook / --layer) itself")
    saes = {name: load(p) for name, p in zip(sae_names(paths), paths, strict=True)}
    out = Path(args.out) if args.out else default_out(paths)
    results = concepts.run_suite(saes, cfg, progress=concepts.Progress())
    for name, result in results.items():
        result.write(out / f"{name}.json")
    rows = concepts.summary_rows(results)
    text = concepts.format_table(rows)
    legend = "\n".join(f"  {k}: {v}" for k, v in concepts.COLUMNS.items())
    skipped = next(iter(results.values())).skipped
    notes = "".join(f"\nskipped {k}: {v}" for k, v in skipped.items())
    warning = _l0_warning(rows)
    atomic_write_bytes(out / "table.txt",
                       f"{text}\n\ncolumns:\n{legend}{notes}\n{warning}\n".encode())
    print(text)
    print(f"columns:\n{legend}{notes}")
    if warning:
        print(warning)
    if not args.no_plot:
        print(f"comparison plot: {concepts.plot_comparison(rows, out / 'comparison.png')}")
    print(f"results: {out}/<sae>.json, {out}/table.txt")
    print(json.dumps({str(r["sae"]): {k: (None if v != v else v) for k, v in r.items()
                                       if k != "sae"} for r in rows}))
    return 0


def _l0_warning(rows: list[dict[str, Any]]) -> str:
    """Comparisons across SAEs are fair only at similar L0 (concept scores move with it)."""
    l0s = [float(r["l0"]) for r in rows]
    if len(l0s) > 1 and min(l0s) > 0 and max(l0s) / min(l0s) > 1.5:
        return (f"warning: L0 ranges from {min(l0s):.1f} to {max(l0s):.1f}; concept scores "
                "depend on L0, so compare SAEs at matched L0")
    return ""
