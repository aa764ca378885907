"""Env packages: Python modules that register gymnasium envs when imported (`--env-package MODULE`).

A third-party package (popgym, minigrid, your own) registers its ids with `gymnasium.register` at
import time, so it must be imported before `gym.make`. Runs record the modules they imported in their
config (`env_packages`), and everything that rebuilds a run's env (evaluate, `recurrl.load`, resume)
imports them again through `import_env_packages`. gymnasium's own `module:EnvId` spelling names the
module inside the id; `env_packages_for` adds it to the list so both spellings go through one import.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import gymnasium as gym


def split_env_id(env_id: str) -> tuple[str | None, str]:
    """'pkg.envs:MyEnv-v0' -> ('pkg.envs', 'MyEnv-v0'); 'CartPole-v1' -> (None, 'CartPole-v1').

    The bare id is the one to use in file names, dataset ids and preset lookups (a colon is not a
    valid Minari id character, and it is the drive separator on Windows)."""
    module, sep, bare = env_id.partition(":")
    return (module, bare) if sep else (None, env_id)


def env_packages_for(env_id: str | None, modules: Iterable[str] = ()) -> list[str]:
    """`modules` plus the module an id like 'pkg.envs:MyEnv-v0' names, in order, without repeats."""
    implied = split_env_id(env_id)[0] if env_id else None
    return list(dict.fromkeys([*modules, *([implied] if implied else [])]))


def import_env_packages(modules: Iterable[str], origin: str = "--env-package") -> list[str]:
    """Import each module (registering its envs) -> the module names, in order, without repeats.

    A module that cannot be imported, or that fails while importing (e.g. an optional dependency of
    the package is missing), is one ValueError naming it: `origin` says where the name came from."""
    names = list(dict.fromkeys(modules))
    for name in names:
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{origin} {name!r}: not a Python module name (e.g. popgym or mypkg.envs)")
        try:
            importlib.import_module(name)
        except ImportError as error:  # the module itself, or something it imports, is not installed
            raise ValueError(
                f"{origin} {name}: cannot import {name} ({error}); install it or check the name"
            ) from error
        except Exception as error:  # the package's own code failed while registering its envs
            raise ValueError(
                f"{origin} {name}: importing {name} failed ({type(error).__name__}: {error})"
            ) from error
    return names


def check_env_id(env_id: str) -> None:
    """`env_id` (bare or 'module:EnvId', its module imported first) is registered with gymnasium."""
    import_env_packages(env_packages_for(env_id), origin=f"env {env_id!r}: module")
    bare = split_env_id(env_id)[1]
    if bare not in gym.registry:
        raise ValueError(
            f"unknown environment id {bare!r}; is it registered with gymnasium? (an env from another "
            "package needs --env-package MODULE, or the id spelled MODULE:ENV_ID)"
        )
