"""The `recurrl` command: one subcommand per module in this package.

Each subcommand module defines `register(subparsers)` (argparse only, no heavy imports at module
level, so `recurrl --help` is instant) and sets `func` on its parser to the function that runs it.

Bad input of any kind (options, configs, datasets, checkpoints, envs, output paths, a missing optional
package) is one line, `recurrl COMMAND: error: ...`, and exit code 2; RECURRL_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Any, NoReturn

# subcommand modules, in the order `recurrl --help` lists them
COMMANDS = ["train", "evaluate", "compare", "probe", "train_ppo", "dataset", "collect", "bench", "export", "plot"]

# Optional packages a command may need, and how to get them (the import error names the package).
INSTALL_HINTS = {
    "onnx": "pip install 'recurrl[export]'",
    "onnxruntime": "pip install 'recurrl[export]'",
    "huggingface_hub": "pip install 'recurrl[download]'",
    "d3rlpy": "pip install d3rlpy",
    "triton": "pip install triton (GPU machines)",
}


class CLIParser(argparse.ArgumentParser):
    """argparse, with a bad option answered in one line (argparse prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(
        prog="recurrl",
        description="Recurrent RL agents: minGRU/minLSTM trained by scan, run by step.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")  # subparsers are CLIParsers too
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"recurrl.scripts.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"scripts.{name}":
                continue  # not built yet
            raise
        module.register(subparsers)
    return parser


def user_error_message(error: BaseException) -> str | None:
    """The one line for an error caused by the input or the machine (None: a bug, show the traceback)."""
    if isinstance(error, ImportError):
        name = error.name or ""
        if not name or name.split(".")[0] == "recurrl":
            return None  # our own import failing is a bug
        top = name.split(".")[0]
        hint = INSTALL_HINTS.get(top, f"pip install {top}")
        return f"this needs the optional package {top!r}, which is not installed: {hint} ({error})"
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
        return f"{error.strerror}: {where}"
    gym_error = sys.modules.get("gymnasium.error")
    if isinstance(error, (ValueError, OSError, EOFError)) or (
        gym_error is not None and isinstance(error, gym_error.Error)
    ):
        return str(error).replace("\n", " ") or type(error).__name__
    return None


def _one_line_warnings(command: str, default: Any) -> Any:
    """A warnings.showwarning that prints recurrl's own warnings (e.g. a dataset without episode
    boundaries) as one line each and hands the others to `default`."""

    def show(message: Any, category: type[Warning], filename: str, lineno: int, *rest: Any, **kw: Any) -> None:
        if category.__module__.startswith("recurrl."):
            print(f"recurrl {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, *rest, **kw)

    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code == 2:
            return 2  # a bad option: CLIParser.error printed its line (--help and others exit as usual)
        raise
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    default_showwarning = warnings.showwarning
    warnings.showwarning = _one_line_warnings(args.command, default_showwarning)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130  # Ctrl-C / SIGTERM: the trainers have saved their checkpoint and said how to resume
    except Exception as error:
        message = user_error_message(error)
        if message is None or os.environ.get("RECURRL_DEBUG"):
            raise  # a bug (or RECURRL_DEBUG=1): the traceback
        print(f"recurrl {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = default_showwarning
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
