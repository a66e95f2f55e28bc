"""``saelab architectures``: list architectures and their options."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from saelab.config import describe
from saelab.registry import architectures


def add_parser(sub: Any) -> None:
    p = sub.add_parser("architectures", help="list SAE architectures and their options",
                       description="List the registered SAE architectures and their options.")
    p.add_argument("name", nargs="?", help="show the options of this architecture")
    p.set_defaults(run=run)


def summary(doc: str) -> str:
    """The docstring's first paragraph on one line (never cut mid-sentence)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def run(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> int:
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    archs = architectures()
    names = [args.name] if args.name else sorted(archs)
    for name in names:
        cls = archs.get(name)
        if cls is None:
            raise ValueError(f"unknown architecture {name!r}; known: {sorted(archs)}")
        print(textwrap.fill(f"{name}: {summary(cls.__doc__ or '')}", width=100,
                            subsequent_indent="    "))
        if args.name:
            for field, default, help_text in describe(cls.config_class):
                print(f"  --{field.replace('_', '-'):24s} {help_text} [default: {default}]")
    return 0
