"""What a trainer and the run loop (agents/run_loop.py) say to each other.

A trainer describes its runs once (`RunSpec`), hands the loop its part of each checkpoint
(`Snapshot`) and implements the `Trainer` protocol the loop drives; the loop raises
`TrainingDiverged` when the loss stops being finite.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class RunSpec:
    """What differs between the trainers' runs, said once by each trainer."""

    kind: str  # the checkpoints' and results' "kind"
    command: str  # the CLI command, for "continue with: COMMAND --resume RUN_DIR"
    fresh_name: str  # the option that names another run directory, for the refusal message
    resumable: frozenset[str]  # config keys that may change on resume; every other key must match
    total_steps: int  # the budget, a whole number of iterations (see whole_iterations)
    steps_per_iteration: int = 1  # steps one train_iteration makes
    checkpoint_every: int = 1  # iterations between checkpoints (one is always written at the end)
    log_every: int = 1  # iterations between TensorBoard writes
    progress: bool = True  # the tqdm bar
    desc: str = "train"  # its label
    speed_tag: str = "time/steps_per_sec"  # TensorBoard tag of the training speed
    postfix: dict[str, str] = field(default_factory=dict)  # progress-bar label -> logged tag
    diverged_hint: str = ""  # what to try when the loss is not finite


@dataclass
class Snapshot:
    """A trainer's part of a checkpoint (the loop adds the common part), and what `restore` gets back."""

    policy: dict[str, torch.Tensor]  # the weights evaluation and deployment load: model.safetensors
    meta: dict[str, Any]  # what loading the policy needs: the trainer's own meta.json entries
    state: dict[str, Any] = field(default_factory=dict)  # its training state (JSON): in "train_state"
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # ... and its tensors
    source: str = ""  # restore only: the checkpoint's path, for messages


class Trainer(Protocol):
    step: int  # steps done, in the budget's unit
    optimizer: torch.optim.Optimizer

    def train_iteration(self) -> dict[str, float]:
        """One whole update (step advances); the scalars to log, including "train/loss"."""
        ...

    def periodic_evaluation(self) -> dict[str, float]:
        """Evaluate if one is due at this step (the loop times it as evaluation); scalars to log, or {}."""
        ...

    def snapshot(self) -> Snapshot: ...

    def restore(self, snapshot: Snapshot) -> None: ...

    def results(self, writer: SummaryWriter) -> dict[str, Any]:
        """The final evaluation and everything results.json holds of this trainer's own."""
        ...


def whole_iterations(total_steps: int, steps_per_iteration: int, what: str) -> int:
    """Iterations to run for a budget of `total_steps`: rounded up to whole iterations (as SB3 does),
    said out loud when that changes the budget. `what` explains the iteration size."""
    iterations = max(1, math.ceil(total_steps / steps_per_iteration))
    if iterations * steps_per_iteration != total_steps:
        print(
            f"note: total_steps={total_steps:,} is not a whole number of iterations of {steps_per_iteration:,} "
            f"steps ({what}); running {iterations:,} iterations = {iterations * steps_per_iteration:,} steps",
            file=sys.stderr,
        )
    return iterations
