"""A comparison grid: tasks (datasets offline, env ids online) x backbones x seeds, one ordinary
`recurrl train` / `recurrl train-ppo` run per cell, resumable cell by cell.

Layout of the output folder DIR:
    grid.json            the settings every cell shares (presets and their contents, overrides, ...);
                         a later command into DIR must use the same settings (the cell lists may grow)
    runs/<cell>/         the cell's ordinary run directory (checkpoints, TensorBoard, results.json)
    logs/<cell>.log      the cell's stdout/stderr, every attempt appended
    cells/<cell>.json    written last, atomically: the cell's measured row. Its presence = cell done.

A cell is resumed, not restarted, when its run directory holds its config.json: the trainer continues
from the newest complete checkpoint (nothing is deleted; see agents/run_dir.py and agents/checkpoint.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recurrl.agents.checkpoint import write_json_atomic
from recurrl.agents.run_dir import read_json

DECISION_BACKBONES = ("mingru", "minlstm", "lstm", "gru", "mamba", "transformer")
PPO_BACKBONES = (*DECISION_BACKBONES, "mlp")
# Each cell runs on one thread unless the overrides say otherwise: N workers then use N cores.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Cell:
    task: str  # dataset id or path (offline), gymnasium env id (online)
    backbone: str
    seed: int

    @property
    def name(self) -> str:
        task = re.sub(r"[^A-Za-z0-9._-]+", "-", self.task).strip("-")
        return f"{task}__{self.backbone}__s{self.seed}"


@dataclass
class Grid:
    """What `recurrl compare` was asked for. `widths` (offline, --match-params) is filled by `plan`."""

    out: Path
    tasks: list[str]
    backbones: list[str]
    seeds: list[int]
    online: bool = False
    configs: list[str] = field(default_factory=list)  # resolved preset paths
    overrides: list[str] = field(default_factory=list)
    match_params: bool = False
    episodes: int | None = None  # evaluation episodes of the measure step (default: the run's config)
    widths: dict[str, int] = field(default_factory=dict)  # "<task>|<backbone>" -> model.hidden_dim
    env_packages: list[str] = field(default_factory=list)  # --env-package, passed on to every cell

    def cells(self) -> list[Cell]:
        # Seed-major: a grid stopped part way has whole seeds of the table, not whole backbones.
        return [Cell(t, b, s) for s in self.seeds for t in self.tasks for b in self.backbones]

    def run_dir(self, cell: Cell) -> Path:
        return self.out / "runs" / cell.name

    def cell_file(self, cell: Cell) -> Path:
        return self.out / "cells" / f"{cell.name}.json"

    def log_file(self, cell: Cell) -> Path:
        return self.out / "logs" / f"{cell.name}.log"

    def settings(self) -> dict[str, Any]:
        """What every cell shares; two commands into one DIR must agree on it."""
        files = [{"path": p, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()} for p in self.configs]
        settings = {
            "kind": "online" if self.online else "offline",
            "configs": files,
            "overrides": list(self.overrides),
            "match_params": self.match_params,
            "episodes": self.episodes,
        }
        if self.env_packages:  # only when used: grid.json files written before the option still match
            settings["env_packages"] = list(self.env_packages)
        return settings

    def train_args(self, cell: Cell, resume: bool) -> list[str]:
        """The cell's `recurrl ...` arguments (without the launcher)."""
        run_dir = self.run_dir(cell)
        if self.online:
            args = ["train-ppo", "--env", cell.task, "--backbone", cell.backbone, "--seed", str(cell.seed)]
            args += ["--run-dir", str(run_dir), "--no-progress"]
            if resume:
                args.append("--resume")
        elif resume:
            return ["train", "--resume", str(run_dir), "--no-progress"]
        else:
            args = ["train", "--dataset", cell.task, "--backbone", cell.backbone, "--seed", str(cell.seed)]
            args += ["--runs-dir", str(run_dir.parent), "--run-name", run_dir.name, "--no-progress"]
        for path in self.configs:
            args += ["--config", path]
        for module in self.env_packages:
            args += ["--env-package", module]
        overrides = list(self.overrides)
        if not any(o.startswith("num_threads=") for o in overrides):
            overrides.append("num_threads=1")
        width = self.widths.get(f"{cell.task}|{cell.backbone}")
        if width is not None:
            overrides.append(f"model.hidden_dim={width}")
        return args + overrides

    def measure_args(self, cell: Cell) -> list[str]:
        args = ["-m", "recurrl.agents.compare.measure", str(self.run_dir(cell)), "--out", str(self.cell_file(cell))]
        if self.online:
            args.append("--online")
        if self.episodes is not None:
            args += ["--episodes", str(self.episodes)]
        return args

    def commands(self) -> list[str]:
        """One shell line per cell (train, then measure) for a user's own scheduler."""
        lines = []
        for cell in self.cells():
            train = shlex.join(["recurrl", *self.train_args(cell, resume=False)])
            measure = shlex.join(["python", *self.measure_args(cell)])
            lines.append(f"{train} && {measure}")
        return lines


def check_settings(grid: Grid) -> None:
    """Write DIR/grid.json, or refuse a DIR whose cells were made with other settings. grid.json also
    keeps the order of the tasks and backbones asked for so far (the reports' row and column order)."""
    path = grid.out / "grid.json"
    settings = grid.settings()
    saved: dict[str, Any] = {}
    if path.is_file():
        try:
            saved = read_json(path)
        except ValueError as error:
            raise ValueError(f"{error}; remove it or use another --out") from error
        differ = [key for key in settings if saved.get(key) != settings[key]]
        if differ:
            what = "; ".join(f"{key}: {saved.get(key)!r} there, {settings[key]!r} now" for key in differ)
            raise ValueError(
                f"{grid.out} holds a grid made with other settings ({what}); use another --out, or the same settings"
            )
    elif grid.out.exists() and not grid.out.is_dir():
        raise ValueError(f"--out {grid.out} is a file; give a directory")
    order = saved.get("order", {"tasks": [], "backbones": []})
    for key, values in (("tasks", grid.tasks), ("backbones", grid.backbones)):
        order[key] += [v for v in values if v not in order[key]]
    created = saved.get("created", time.strftime("%Y-%m-%d %H:%M:%S"))
    write_json_atomic(path, {**settings, "order": order, "created": created})


def _die_with_parent() -> None:
    # A cell's trainer gets SIGTERM (save a checkpoint, exit) if the compare process dies; Linux only.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def execute(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run `cmd` with output appended to `log` -> (exit code, wall seconds, peak RSS in MiB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: v for k, v in ONE_THREAD_ENV.items() if k not in os.environ}}
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        # wait4 (not wait) gives this child's own peak memory, even with other cells running beside it.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


class CellFailed(RuntimeError):
    pass


def run_cell(grid: Grid, cell: Cell) -> tuple[dict[str, Any], float]:
    """Train (or resume, or skip when trained) then measure one cell -> (its row, also in cells/<cell>.json;
    the seconds its own commands ran now: training and measuring)."""
    run_dir, log = grid.run_dir(cell), grid.log_file(cell)
    attempts_file = grid.out / "cells" / f"{cell.name}.attempts.json"
    attempts = json.loads(attempts_file.read_text()) if attempts_file.is_file() else []
    launcher = [sys.executable, "-m", "recurrl"]
    own_s = 0.0
    if not (run_dir / "results.json").is_file():
        # A run that wrote its config resumes from its newest complete checkpoint (or from step 0 if it
        # was killed before the first); a directory without one counts as new for the trainer.
        resume = (run_dir / "config.json").is_file()
        code, wall, rss = execute(launcher + grid.train_args(cell, resume), log)
        own_s += wall
        attempts.append({"resumed": resume, "exit_code": code, "wall_time_s": wall, "peak_rss_mib": rss})
        write_json_atomic(attempts_file, attempts)
        if code != 0 or not (run_dir / "results.json").is_file():
            raise CellFailed(f"training exited with code {code}; see {log}")
    code, measure_s, _ = execute([sys.executable, *grid.measure_args(cell)], log)
    own_s += measure_s
    if code != 0 or not grid.cell_file(cell).is_file():
        raise CellFailed(f"measuring exited with code {code}; see {log}")
    row = json.loads(grid.cell_file(cell).read_text())
    trained = [a for a in attempts if a["exit_code"] == 0] or attempts
    row.update(
        task=cell.task,
        backbone=cell.backbone,
        seed=cell.seed,
        wall_time_s=sum(a["wall_time_s"] for a in attempts) if attempts else row.get("wall_time_s"),
        peak_rss_mib=max((a["peak_rss_mib"] for a in trained), default=None),
        attempts=len(attempts),
        measure_time_s=measure_s,
    )
    write_json_atomic(grid.cell_file(cell), row)
    return row, own_s


@dataclass
class GridRun:
    """What one `recurrl compare` invocation did."""

    done: list[Cell]
    failed: list[tuple[Cell, str]]
    elapsed_s: float  # wall time of the whole invocation's cell phase
    cells_own_s: float  # sum over the cells run now of their own commands' wall time (train + measure)
    workers: int

    def overhead_line(self) -> str | None:
        """The runner's cost on top of the cells' own time: workers x elapsed against the cells' sum. An
        upper bound with several workers (a worker idle at the end of the grid counts as overhead)."""
        if not self.cells_own_s:
            return None
        overhead = self.workers * self.elapsed_s / self.cells_own_s - 1.0
        return (
            f"time: {self.elapsed_s:.0f} s with {self.workers} worker(s); the cells' own commands "
            f"{self.cells_own_s:.0f} s; runner overhead {100 * overhead:.1f}%"
            + (" (upper bound: idle workers at the end count)" if self.workers > 1 else "")
        )


def run_grid(grid: Grid, workers: int, progress: bool = True) -> GridRun:
    """Run every unfinished cell, `workers` at a time. A failed cell does not stop the grid; re-running
    the command retries it."""
    todo = [c for c in grid.cells() if not grid.cell_file(c).is_file()]
    total = len(grid.cells())
    done_before = total - len(todo)
    print(f"compare: {total} cells, {done_before} already done, {len(todo)} to run with {workers} worker(s)")
    done: list[Cell] = []
    failed: list[tuple[Cell, str]] = []
    start, own_s = time.perf_counter(), 0.0
    bar = tqdm(total=total, initial=done_before, desc="cells", unit="cell", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_cell, grid, cell): cell for cell in todo}
        for future in as_completed(futures):
            cell = futures[future]
            try:
                row, cell_s = future.result()
            except (CellFailed, OSError, ValueError, json.JSONDecodeError) as error:
                failed.append((cell, str(error)))
                tqdm.write(f"FAILED {cell.name}: {error}")
            else:
                done.append(cell)
                own_s += cell_s
                tqdm.write(f"done {cell.name}: {format_row(row)}")
            bar.update(1)
    bar.close()
    return GridRun(done, failed, time.perf_counter() - start, own_s, workers)


def format_row(row: dict[str, Any]) -> str:
    if "final_return" in row:  # online
        return f"return {row['final_return']:.1f}, {row.get('env_steps_per_s') or 0:.0f} env steps/s"
    score = row.get("last_stateful_score")
    what = f"score {score:.1f}" if score is not None else f"return {row['last_stateful_return']:.1f}"
    return f"{what} (last, stateful), {row.get('train_steps_per_s') or 0:.1f} steps/s, {row['wall_time_s']:.0f} s"


def grid_from_json(out: Path) -> dict[str, Any]:
    path = out / "grid.json"
    if not path.is_file():
        raise ValueError(f"{out} is not a compare folder (no grid.json); run `recurrl compare ... --out {out}` first")
    return read_json(path)
