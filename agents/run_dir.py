"""One run, one directory: a run holds an OS lock on its directory for its whole life.

The lock is `fcntl.flock` on `RUN_DIR/.lock`. The kernel drops it when the process exits, however it
exits (kill -9 included), so a dead run never leaves a stale lock behind, and two live processes can
never write one directory. A directory that already holds a run (its config.json) is refused unless
the caller resumes it; the refusal names `--resume` and the option that picks a fresh name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Any, TypeVar

from recurrl.agents.checkpoint import recover_checkpoint, remove_leftover_files

T = TypeVar("T")

LOCK = ".lock"
CONFIG = "config.json"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"


class RunDirError(ValueError):
    """The run directory cannot be used: in use by another process, already holds a run, or not a directory."""


def timestamped(name: str) -> str:
    """`name` plus the local time, the default run name of both trainers (never an existing run's)."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """The directory of one run, locked by this process while `locked` is true.

    `command` (e.g. "recurrl train") and `fresh_name` (the option that names another directory, e.g.
    "--run-name") only shape the messages.
    """

    def __init__(self, path: str | Path, resume: bool, command: str, fresh_name: str) -> None:
        self.path = Path(path)
        self.command, self.fresh_name = command, fresh_name
        self._lock_file: IO[str] | None = None
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {str(self.path)!r} is a file; give a directory path")
        opened_before = (self.path / LOCK).exists()
        if resume and not (self.path / CONFIG).is_file() and not opened_before:
            raise FileNotFoundError(
                f"cannot resume: {str(self.path)!r} holds no run (no {CONFIG}, no checkpoint); "
                "start it without --resume"
            )
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file where a parent folder should be, no permission, ...
            raise RunDirError(f"cannot create run directory {str(self.path)!r}: {error}") from error
        self.acquire()
        try:
            if not resume:
                self._refuse_existing_run()
            self._clean_leftovers()
        except BaseException:
            self.close()
            raise

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def locked(self) -> bool:
        return self._lock_file is not None

    def acquire(self) -> None:
        """Take the lock (again, after `close`); refuse while another process holds it."""
        while self._lock_file is None:
            handle = open(self.path / LOCK, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise RunDirError(
                    f"run directory {str(self.path)!r} is in use by another live run (pid {owner}); wait for "
                    f"it to stop and continue it with {self.command} --resume {self.path}, or choose a fresh "
                    f"name ({self.fresh_name})"
                ) from None
            if not _same_file(handle, self.path / LOCK):
                handle.close()  # an abandoning run removed the file we locked: lock the new one
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            self._lock_file = handle

    def close(self) -> None:
        """Release the lock (closing the file is what releases a flock)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def abandon(self) -> None:
        """Release the lock after a run failed before writing anything, leaving no trace of it."""
        if self.locked and not any(entry.name != LOCK for entry in self.path.iterdir()):
            (self.path / LOCK).unlink(missing_ok=True)  # while still locked: see acquire's inode check
            self.close()
            if self._created:
                with contextlib.suppress(OSError):  # something else appeared meanwhile: leave it
                    self.path.rmdir()
        self.close()

    def _refuse_existing_run(self) -> None:
        if not any(entry.name != LOCK and not _is_leftover(entry.name) for entry in self.path.iterdir()):
            return
        if (self.path / RESULTS).is_file():
            state = "a finished run (results.json)"
        elif (self.path / CONFIG).is_file():
            state = "an interrupted run (no results.json yet)"
        else:
            state = "other files (not a recurrl run)"
        raise RunDirError(
            f"run directory {str(self.path)!r} already exists and holds {state}; continue it with "
            f"{self.command} --resume {self.path}, or choose a fresh name ({self.fresh_name})"
        )

    def _clean_leftovers(self) -> None:
        """What interrupted writes left: temporary JSON files, and checkpoint versions (the newest
        complete one of each checkpoint goes in place, see agents/checkpoint.py)."""
        remove_leftover_files(self.path)
        if not self.checkpoints.is_dir():
            return
        names = {"last", "best"}
        for entry in self.checkpoints.iterdir():
            if _is_leftover(entry.name):
                names.add(entry.name[1:].rsplit(".", 1)[0])
        for name in sorted(names):
            recover_checkpoint(self.checkpoints / name)


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _is_leftover(name: str) -> bool:
    """A hidden temporary name of an interrupted write (`.NAME.tmp-*` or `.NAME.old-*`)."""
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


# The command that trains each kind of run, for "this is a PPO run" messages.
COMMANDS = {"decision": "recurrl train", "ppo": "recurrl train-ppo"}


def resume_config(
    cls: type[T], run_dir: str | Path, overrides: list[str], kind: str, files: list[Path] | None = None
) -> T:
    """The config a run of `kind` in `run_dir` was started with (its config.json), then YAML `files` and
    `key=value` overrides (so the command that started a run, plus --resume, resumes it; the resume rule
    refuses what they would change); a run of another kind is named as such."""
    from recurrl.agents.config import load_config

    run_dir = Path(run_dir)
    saved = run_dir / CONFIG
    if not saved.is_file():
        raise ValueError(
            f"cannot resume: {str(saved)!r} not found; is {str(run_dir)!r} a run directory? (a run killed "
            "before it wrote its config starts again without --resume)"
        )
    found = _run_kind(run_dir)
    if found is not None and found != kind:
        command = COMMANDS.get(found, "the command that trained it")
        raise ValueError(
            f"{str(run_dir)!r} is a {found} run, not a {kind} run; resume it with {command} --resume"
        )
    return load_config(cls, [saved, *(files or [])], overrides)  # JSON is YAML


def _run_kind(run_dir: Path) -> str | None:
    """The kind its results or its last checkpoint record (None when neither says)."""
    for path in (run_dir / RESULTS, run_dir / CHECKPOINTS / "last" / "meta.json"):
        if path.is_file():
            try:
                kind = read_json(path).get("kind")
            except ValueError:
                continue
            if isinstance(kind, str):
                return kind
    return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is corrupt: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} is corrupt: it holds a {type(data).__name__}, not an object")
    return data


def jsonable(value: Any) -> Any:
    """What `value` looks like after a JSON round trip (tuples become lists, ...)."""
    return json.loads(json.dumps(value))
