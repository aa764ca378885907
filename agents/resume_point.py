"""Where a resumed run continues from, and the resume rule (agents/run_loop.py's `Run` asks)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from recurrl.agents.checkpoint import CheckpointError, read_meta
from recurrl.agents.config import rename_old_keys, to_dict
from recurrl.agents.run_dir import CONFIG, RunDir, jsonable, read_json


def resume_point(run_dir: RunDir, kind: str, config: Any, resumable: frozenset[str]) -> Path | None:
    """The newest complete checkpoint, `last` or `best` (a complete leftover of an interrupted save
    is already back in place: RunDir cleans them), after checking its kind and the resume rule. None
    when the run has none yet: it then starts from step 0."""
    candidates, problems = [], []
    for name in ("last", "best"):
        path = run_dir.checkpoints / name
        if path.exists():
            try:
                meta = read_meta(path)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            candidates.append((int(meta.get("step", -1)), name == "last", path, meta))
    if not candidates and problems:
        raise CheckpointError(f"cannot resume {run_dir.path}: {problems[0]}")
    if not candidates:
        if (run_dir.path / CONFIG).is_file():
            check_config(run_dir.path, read_json(run_dir.path / CONFIG), config, resumable, run_dir.path / CONFIG)
        print(f"note: {run_dir.path} has no checkpoint yet; starting from step 0", file=sys.stderr)
        return None
    _, _, path, meta = max(candidates, key=lambda c: c[:2])
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path} is a {meta.get('kind')!r} checkpoint; it cannot resume a {kind} run")
    check_config(run_dir.path, meta.get("config", {}), config, resumable, path)
    for problem in problems:
        print(f"note: {problem}; resuming from {path} (step {meta.get('step')})", file=sys.stderr)
    return path


def check_config(run: Path, saved: dict[str, Any], config: Any, resumable: frozenset[str], where: Path) -> None:
    """The resume rule: only the `resumable` keys may differ from the run's saved config."""
    new = jsonable(to_dict(config))
    saved = rename_old_keys(saved, set(new), warn=False)  # a run saved before a key was renamed
    changed = sorted(k for k in saved if k not in resumable and saved[k] != new.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved[k]!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"cannot resume {str(run)!r} with a different config ({details}, saved in {where}); "
            f"only {', '.join(sorted(resumable))} may change on resume"
        )
