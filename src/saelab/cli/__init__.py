"""The ``saelab`` command: one module per subcommand, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

import saelab
from saelab.cli.errors import os_error_message
from saelab.config import ConfigError


def _commands() -> list[ModuleType]:
    from saelab.cli import (
        alignsae_cmd,
        architectures_cmd,
        boardgame_cmd,
        cache_cmd,
        demo_cmd,
        eval_cmd,
        eval_model_cmd,
        explain_cmd,
        explore_cmd,
        export_cmd,
        features_cmd,
        l0_search_cmd,
        lfads_cmd,
        sarm_cmd,
        sources_cmd,
        steer_cmd,
        sweep_cmd,
        toy_cmd,
        train_cmd,
    )

    # The order `saelab --help` lists them in: the workflow first, helpers last.
    return [
        cache_cmd,
        sources_cmd,
        train_cmd,
        eval_cmd,
        eval_model_cmd,
        l0_search_cmd,
        sweep_cmd,
        features_cmd,
        explore_cmd,
        explain_cmd,
        steer_cmd,
        sarm_cmd,
        lfads_cmd,
        export_cmd,
        toy_cmd,
        boardgame_cmd,
        alignsae_cmd,
        demo_cmd,
        architectures_cmd,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saelab",
        allow_abbrev=False,
        description="Sparse autoencoders on neural-network activations: train, evaluate, "
        "measure against ground truth.",
    )
    parser.add_argument("--version", action="version", version=f"saelab {saelab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _commands():
        module.add_parser(sub)
    for subparser in sub.choices.values():
        # `--k 6` must never be read as an abbreviation of `--keep-checkpoints 6`.
        subparser.allow_abbrev = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return int(args.run(args, extra, parser) or 0)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"saelab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except OSError as err:  # disk full, read-only, permission, not a folder, ...
        print(f"saelab {args.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
