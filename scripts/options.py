"""Option types and output-path checks shared by the subcommands (argparse only, no heavy imports).

A numeric option is checked when it is parsed (`--episodes 0`, `--noise nan` are one line naming the
option), and an output path before any work starts, so a long run never fails at its last step
because `--output` names a directory.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path


def _number(kind: type, low: float | None, low_ok: bool, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value < low or (value == low and not low_ok))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, 0, False, "a positive integer")
nonnegative_int = _number(int, 0, True, "an integer >= 0")
finite_float = _number(float, None, True, "a finite number")
nonnegative_float = _number(float, 0.0, True, "a finite number >= 0")
positive_float = _number(float, 0.0, False, "a finite number > 0")


def check_output_file(path: str | Path | None, option: str, suffixes: tuple[str, ...] = ()) -> None:
    """`path` can be written as a file: not a directory, no file where its folder should be."""
    if path is None:
        return
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {str(path)!r} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a directory; give a file path")
    _check_parents(path, option)


def check_output_dir(path: str | Path | None, option: str) -> None:
    """`path` can be used as a directory: not an existing file, no file where a parent folder should be."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file; give a directory path")
    _check_parents(path, option)


def _check_parents(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {option} {str(path)!r}: {str(parent)!r} is a file, not a directory")
            return


def add_env_package_option(parser: argparse.ArgumentParser) -> None:
    """--env-package MODULE (repeatable), as every command that makes envs spells it."""
    parser.add_argument(
        "--env-package",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE before making envs, so the envs it registers with gymnasium can be used "
        "(e.g. popgym; repeatable; kept in the run's config). MODULE:ENV_ID as the env id works too",
    )


def import_env_packages(args: argparse.Namespace) -> list[str]:
    """Import the --env-package modules (one line naming a module that cannot be imported) -> their names."""
    from recurrl.envs.packages import import_env_packages as import_modules

    return import_modules(args.env_package)


def env_packages_override(args: argparse.Namespace) -> list[str]:
    """The config override that records --env-package in the run's config (none without the option)."""
    return [f"env_packages={json.dumps(args.env_package)}"] if args.env_package else []
