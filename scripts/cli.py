"""The `recurrl` command: one subcommand per module in this package.

Each subcommand module defines `register(subparsers)` (argparse only, no heavy imports at module
level, so `recurrl --help` is instant) and sets `func` on its parser to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules, in the order `recurrl --help` lists them
COMMANDS = ["train", "evaluate", "compare", "probe", "train_ppo", "dataset", "collect", "bench", "bench_decision", "export", "plot"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recurrl",
        description="Recurrent RL agents: minGRU/minLSTM trained by scan, run by step.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"recurrl.scripts.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"scripts.{name}":
                continue  # not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad input: one clear line, no traceback (set RECURRL_DEBUG=1 for the traceback).
        import os

        if os.environ.get("RECURRL_DEBUG"):
            raise
        print(f"recurrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130  # Ctrl-C / SIGTERM: the trainers have saved their checkpoint and said how to resume
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
