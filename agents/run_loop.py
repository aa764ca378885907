"""The run loop both trainers share (SB3's `common/` idea): one place for the run directory and its lock
(agents/run_dir.py), the checkpoint schema, the resume rule, the progress bar, TensorBoard, graceful
stop, the NaN stop, results.json and the final summary.

A trainer (agents/decision/trainer.py, agents/ppo/ppo.py) keeps only what is its own: how to make one
training iteration, what to evaluate, what its checkpoints hold besides what is common. Its life:

    self.run = Run(run_dir, config, spec, resume)    # lock the directory, find the resume point
    ... build the model, optimizer, data ...
    self.run.resume(self)                            # restore the newest complete checkpoint, if any
    results = self.run.train(self)                   # the loop; results.json; the summary line

Checkpoint schema (meta.json): the trainer's own entries plus "kind", "step" (the steps the budget
counts: optimizer steps or env steps), "config" and "train_state" (everything an exact resume needs:
the optimizer, RNG states, the clock and the trainer's own state); tensors in train.safetensors.
Resume rule: every config key must match the run's, except the trainer's `RunSpec.resumable` keys.

Under torchrun (agents/distributed.py) every process runs this loop; rank 0 alone holds the directory,
writes checkpoints, config.json, TensorBoard and results.json, and reads the checkpoint it resumes from
(the others get it from rank 0). After each iteration the processes add up their loss shares and agree
on whether to stop, so a signal to any of them stops all at the same step.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recurrl.agents.checkpoint import (
    CheckpointError,
    copy_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json_atomic,
)
from recurrl.agents.config import to_dict
from recurrl.agents.distributed import Distributed, DistributedError, PeerFailed
from recurrl.agents.resume_point import resume_point
from recurrl.agents.run_dir import CHECKPOINTS, CONFIG, RESULTS, RunDir
from recurrl.agents.run_spec import RunSpec, Snapshot, Trainer, TrainingDiverged
from recurrl.agents.stopping import GracefulStop

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

LOSS = "train/loss"  # the scalar the NaN stop watches; averaged over each logging window


def resumable_summary_writer(run_dir: str | Path, step: int, **kwargs: Any) -> SummaryWriter:
    """A TensorBoard writer for a run that starts, or resumes from a checkpoint, at `step`.

    On resume, TensorBoard drops the events a killed run logged after its last checkpoint, so the
    resumed run replaces them instead of drawing a second line. Events at the checkpoint's own step
    were logged before it was saved and stay, hence step + 1.
    """
    from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and only training needs it

    return SummaryWriter(str(run_dir), purge_step=step + 1 if step > 0 else None, **kwargs)


class _NullWriter:
    """What the processes other than rank 0 log to: nothing."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Run:
    """One training run: its locked directory, its checkpoints, its loop."""

    def __init__(
        self, path: str | Path, config: Any, spec: RunSpec, resume: bool, dist: Distributed | None = None
    ) -> None:
        self.config, self.spec, self.path = config, spec, Path(path)
        self.dist = dist or Distributed()
        self.saved_step: int | None = None  # the step of checkpoints/last, once this process knows it
        self.stopped = False  # stopped by a signal after a whole step, the checkpoint saved
        self.clock = {"wall_s": 0.0, "eval_s": 0.0}  # of the sessions before this one (from the checkpoint)
        self._session_start, self._session_eval, self.session_start_step = time.perf_counter(), 0.0, 0
        self.dir: RunDir | None = None  # rank 0's: the only process that touches the directory
        self.resume_from: Path | None = self.dist.from_main(lambda: self._open(resume), "opening the run directory")

    def _open(self, resume: bool) -> Path | None:
        self.dir = RunDir(self.path, resume, self.spec.command, self.spec.fresh_name)
        try:
            return resume_point(self.dir, self.spec.kind, self.config, self.spec.resumable) if resume else None
        except BaseException:
            self.dir.close()
            raise

    @property
    def last(self) -> Path:
        return self.path / CHECKPOINTS / "last"

    def abandon(self) -> None:
        """The trainer failed to build: release the directory (and remove it if nothing was written)."""
        if self.dir is not None:
            self.dir.abandon()

    # ------------------------------------------------------------------ resume
    def resume(self, trainer: Trainer) -> None:
        """Restore `trainer` from the resume point (no-op for a new run): its own state, the optimizer,
        then the RNG states last (nothing after this may draw from them before training)."""
        if self.resume_from is None:
            return
        path = self.resume_from
        tensors, meta, train = self.dist.from_main(
            lambda: load_checkpoint(path, with_train_state=True), "reading the checkpoint to resume from"
        )
        if train is None or "train_state" not in meta:
            raise CheckpointError(
                f"{self.resume_from}: no training state, so the run cannot be resumed exactly"
            )
        state = meta["train_state"]
        trainer.step = int(meta["step"])
        try:
            trainer.restore(Snapshot(tensors, meta, state, train, str(self.resume_from)))
            load_optimizer_state(trainer.optimizer, train, state["optimizer"])
            set_rng_state(train, state["rng"])
        except KeyError as error:  # a checkpoint from before this schema: evaluate it, do not resume it
            raise CheckpointError(
                f"{self.resume_from}: its training state lacks {error}, so the run cannot be resumed exactly "
                "(the checkpoint can still be evaluated)"
            ) from error
        self.clock = dict(state.get("clock", self.clock))
        self.saved_step = trainer.step if self.resume_from == self.last else None

    # ------------------------------------------------------------------ checkpoints
    def save(self, trainer: Trainer, name: str = "last") -> Path:
        """Checkpoint `trainer` as checkpoints/NAME (crash-safe: agents/checkpoint.py); rank 0 only."""
        if self.dir is None:  # another rank: its state is rank 0's
            self.saved_step = trainer.step if name == "last" else self.saved_step
            return self.path / CHECKPOINTS / name
        self.dir.acquire()
        snap = trainer.snapshot()
        opt_tensors, opt_plain = optimizer_state(trainer.optimizer)
        rng_tensors, rng_plain = rng_state()
        train_state = {**snap.state, "optimizer": opt_plain, "rng": rng_plain, "clock": self._clock_now()}
        meta = {**snap.meta, "kind": self.spec.kind, "step": trainer.step, "config": to_dict(self.config)}
        meta["train_state"] = train_state
        tensors = {**opt_tensors, **rng_tensors, **snap.tensors}
        path = save_checkpoint(self.dir.checkpoints / name, snap.policy, meta, tensors)
        if name == "last":
            self.saved_step = trainer.step
        return path

    def copy_last_to(self, name: str) -> Path:
        if self.dir is None:
            return self.path / CHECKPOINTS / name
        return copy_checkpoint(self.last, self.dir.checkpoints / name)

    # ------------------------------------------------------------------ the loop
    def train(self, trainer: Trainer, until: int | None = None) -> dict[str, Any] | None:
        """Train to step `until` (default: the whole budget), then, at the end of the budget, write
        results.json and print the summary. Returns the results, or None when stopped before the end.

        Ctrl-C or SIGTERM finishes the current iteration, saves `last`, says how to resume, then raises
        KeyboardInterrupt (see agents/stopping.py). The directory stays locked until this returns.
        """
        until = self.spec.total_steps if until is None else min(until, self.spec.total_steps)
        try:
            return self._train(trainer, until)
        except PeerFailed:
            raise
        except DistributedError as error:  # a process died or hangs: the directory holds what was saved
            raise DistributedError(
                f"{error}; {self._last_good()}. Continue with: {self.spec.command} --resume {self.path}"
            ) from error

    def _train(self, trainer: Trainer, until: int) -> dict[str, Any] | None:
        if self.dir is not None:
            self.dir.acquire()
        self._session_start, self._session_eval = time.perf_counter(), 0.0
        self.session_start_step = trainer.step
        writer: Any = None
        try:
            if self.dir is not None:
                write_json_atomic(self.path / CONFIG, to_dict(self.config))
                writer = resumable_summary_writer(self.path, trainer.step, flush_secs=30)
            else:
                writer = _NullWriter()
            with GracefulStop() as stop:
                try:
                    stopped = self._iterate(trainer, writer, until, stop)
                except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, mid-iteration
                    self._say_how_to_resume(f"stopped at once; {self._last_good()}")
                    raise
                if self.saved_step != trainer.step:
                    self.save(trainer)
            if stopped and trainer.step < until:
                where = f"stopped at step {trainer.step:,}; checkpoint saved in {self.last}"
                signal = stop.requested or "a stop signal to another process of the run"
                self._say_how_to_resume(f"{signal}: {where}")
                self.stopped = True  # at a step every process agreed on (under torchrun)
                raise KeyboardInterrupt
            if trainer.step < self.spec.total_steps:
                return None
            try:
                return self._finish(trainer, writer)
            except KeyboardInterrupt:
                self._say_how_to_resume(
                    "interrupted in the final evaluation; training is done, and resuming writes the results"
                )
                raise
        finally:
            if writer is not None:
                writer.close()
            if self.dir is not None:
                self.dir.close()

    def _say_how_to_resume(self, what: str) -> None:
        if self.dist.is_main:
            print(f"{what}. Continue with: {self.spec.command} --resume {self.path}", file=sys.stderr)

    def _last_good(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was saved in this process yet"
        return f"the last good checkpoint is {self.last} (step {self.saved_step:,})"

    def _iterate(self, trainer: Trainer, writer: SummaryWriter, until: int, stop: GracefulStop) -> bool:
        """The iterations; whether a stop signal ended them."""
        from tqdm.auto import tqdm

        spec = self.spec
        bar = tqdm(
            total=spec.total_steps,
            initial=trainer.step,
            disable=not spec.progress,
            desc=spec.desc,
            unit="step",
        )
        window: list[dict[str, float]] = []
        agreed = False  # under torchrun: all processes agreed to stop after this iteration
        try:
            while trainer.step < until and not (agreed if self.dist.enabled else stop.requested is not None):
                logs = trainer.train_iteration()
                agreed = self._agree(logs, stop)
                self._check_finite(logs.get(LOSS, 0.0), trainer.step)
                window.append(logs)
                bar.update(spec.steps_per_iteration)
                evaluation_start = time.perf_counter()
                eval_logs = trainer.periodic_evaluation()
                self._session_eval += time.perf_counter() - evaluation_start
                iteration = trainer.step // spec.steps_per_iteration
                if iteration % spec.log_every == 0 or trainer.step >= until:
                    self._log(writer, bar, window, trainer.step)
                    window = []
                for tag, value in eval_logs.items():
                    writer.add_scalar(tag, value, trainer.step)
                if iteration % spec.checkpoint_every == 0:
                    self.save(trainer)
        finally:
            bar.close()
            writer.flush()
        return agreed if self.dist.enabled else stop.requested is not None

    def _agree(self, logs: dict[str, float], stop: GracefulStop) -> bool:
        """Under torchrun: the loss over all processes (each logs its share) and whether any of them
        was asked to stop. Every process stops at the same step, or some would wait for the others."""
        if not self.dist.enabled:
            return False
        loss, stops = self.dist.sum([logs.get(LOSS, 0.0), float(stop.requested is not None)], "sharing the loss")
        if LOSS in logs:
            logs[LOSS] = loss
        return stops > 0

    def _log(self, writer: SummaryWriter, bar: Any, window: list[dict[str, float]], step: int) -> None:
        """Write a logging window: the loss averaged over it, every other scalar as of its last iteration,
        and the training speed of this session (steps per second, evaluation excluded)."""
        scalars = dict(window[-1])
        if LOSS in scalars:
            scalars[LOSS] = float(np.mean([logs[LOSS] for logs in window]))
        train_s = time.perf_counter() - self._session_start - self._session_eval
        scalars[self.spec.speed_tag] = (step - self.session_start_step) / max(train_s, 1e-9)
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        postfix = {label: f"{scalars[tag]:.4g}" for label, tag in self.spec.postfix.items() if tag in scalars}
        bar.set_postfix(**postfix, sps=f"{scalars[self.spec.speed_tag]:.1f}")

    def _check_finite(self, loss: float, step: int) -> None:
        """The NaN stop: nothing is saved after a non-finite loss; the last good checkpoint stays."""
        if math.isfinite(loss):
            return
        where = self._last_good()
        if not self.dist.is_main:  # the loss is every rank's: rank 0 says it
            raise PeerFailed(f"rank {self.dist.rank}: training diverged at step {step}")
        raise TrainingDiverged(
            f"training diverged: loss is {loss} at step {step}; {where} ({self.spec.diverged_hint})"
        )

    # ------------------------------------------------------------------ the end
    def _finish(self, trainer: Trainer, writer: SummaryWriter) -> dict[str, Any]:
        evaluation_start = time.perf_counter()
        own = trainer.results(writer)
        self._session_eval += time.perf_counter() - evaluation_start
        clock = self._clock_now()
        train_s = max(clock["wall_s"] - clock["eval_s"], 1e-9)
        results = {
            "kind": self.spec.kind,
            "run_dir": str(self.path),
            "steps": trainer.step,
            "train_steps_per_s": trainer.step / train_s,
            "wall_time_s": clock["wall_s"],
            "eval_time_s": clock["eval_s"],
            **own,
        }
        path = self.path / RESULTS
        if self.dir is None:
            return results
        write_json_atomic(path, results)
        print(
            f"done: {trainer.step:,} steps, {results['train_steps_per_s']:,.1f} training steps/s (evaluation "
            f"excluded), wall time {_duration(clock['wall_s'])} ({_duration(clock['eval_s'])} evaluating); "
            f"results: {path}",
            file=sys.stderr,
        )
        return results

    def _clock_now(self) -> dict[str, float]:
        """Wall and evaluation seconds of the whole run so far: earlier sessions plus this one."""
        return {
            "wall_s": self.clock["wall_s"] + time.perf_counter() - self._session_start,
            "eval_s": self.clock["eval_s"] + self._session_eval,
        }

    def session_wall_s(self) -> float:
        """Seconds since this session's train() began."""
        return time.perf_counter() - self._session_start


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
