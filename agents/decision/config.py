"""Configuration of the offline Decision agent (training + evaluation).

The defaults are the quick CPU run that `recurrl train` does with no arguments: DT-minGRU on the
embedded Hopper medium dataset, small width and budget (a few minutes on 2 CPU cores). The paper-
sized settings (width 128, 3 layers, 100k steps: GPU budgets) live in `configs/decision/*.yaml`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelConfig:
    backbone: str = "mingru"  # mingru | minlstm | lstm | gru | mamba | transformer
    hidden_dim: int = 64  # embedding width = backbone width (DT: 128)
    num_layers: int = 2  # backbone layers (DT: 3)
    backbone_options: dict[str, Any] = field(default_factory=dict)  # extra backbone kwargs (e.g. num_heads)
    # 3 tokens per timestep as DT ("triple", the presets' choice) or one fused token (3x fewer backbone
    # steps: the quick CPU default, measured 2.2x the training steps/s of triple at equal width)
    tokens: Literal["triple", "fused"] = "fused"
    # Feed a_{t-1} in the fused token (DT feeds every action). false leaves it out, so the model cannot
    # copy its last action and must read the state and return-to-go (fused tokens only).
    previous_actions: bool = True
    dropout: float = 0.1  # dropout on the token embeddings
    max_timestep: int = 1000  # size of the timestep embedding (longer episodes reuse the last one)
    return_scale: float = 1000.0  # returns-to-go are divided by this (DT: 1000 for MuJoCo)


@dataclass
class EvalConfig:
    # Empty: one target from the dataset (envs.scores.default_target_return): DT's for the D4RL envs
    # (hopper 3600, halfcheetah 6000, walker2d 5000), else the dataset's best episode return.
    target_returns: list[float] = field(default_factory=list)
    episodes: int = 10  # episodes per target return at the end of training
    num_envs: int = 10  # parallel envs (gymnasium SyncVectorEnv)
    every: int = 500  # evaluate (and maybe update the best checkpoint) every N steps; 0 = only at the end
    episodes_during_training: int = 5  # episodes per target in those periodic evaluations
    mode: Literal["stateful", "window"] = "stateful"  # carry the state (stateful) or re-encode K steps
    seed: int = 10_000  # env seeds are seed, seed+1, ... (kept apart from the training seed)


LR_SCHEDULES = ("constant", "cosine")


@dataclass
class DecisionConfig:
    dataset: str = "recurrl/hopper/medium-v0"  # dataset id or path (see `recurrl dataset`)
    env_id: str | None = None  # evaluation env for a dataset that names none (or another one); None: the dataset's
    clip_actions: bool = False  # clip actions outside the env's action space to its bounds (default: an error)
    # modules imported before the evaluation env is made (they register its id): `--env-package`
    env_packages: list[str] = field(default_factory=list)
    run_name: str | None = None  # runs/<run_name>; default: <dataset>-<backbone>-s<seed>-<time>
    runs_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    # torch CPU threads (0 = torch's default, all cores). 1 by default: these models are too small for
    # intra-op parallelism to pay, and on a busy machine 2 spinning threads ran ~20x slower than 1.
    num_threads: int = 1  # per process under torchrun
    # Processes training together: recorded from the launch (torchrun's WORLD_SIZE), not set here; a value
    # given is replaced. batch_size stays the global batch, so a config means the same at any world size.
    world_size: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    context_length: int = 20  # K timesteps per training segment
    burn_in: int = 0  # steps before each segment that only warm up the state (no loss)
    batch_size: int = 64
    steps: int = 2000  # optimizer steps (DT: 100k on a GPU)
    lr: float = 1e-3  # small models on a small budget like a larger lr than DT's 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200  # linear warmup (DT: 10k), then `lr_schedule`
    # After warmup: "constant" (DT) or "cosine" (decays to lr * min_lr_ratio at `steps`; extending a run
    # with --resume steps=N stretches the remaining decay over the new total).
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.25
    # > 0: keep an exponential moving average of the weights (e.g. 0.999) and evaluate, checkpoint and
    # deploy it instead of the raw weights; 0 = off. Averaging smooths the checkpoint-to-checkpoint swings
    # of the policy's return (the decay ramps up as min(ema_decay, (1 + step) / (10 + step))).
    ema_decay: float = 0.0
    log_every: int = 50
    checkpoint_every: int = 500
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        checks = [
            (self.context_length > 0, f"context_length must be positive, got {self.context_length}"),
            (self.burn_in >= 0, f"burn_in must be >= 0, got {self.burn_in}"),
            (self.num_threads >= 0, f"num_threads must be >= 0 (0 = torch default), got {self.num_threads}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (
                self.lr_schedule in LR_SCHEDULES,
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
            ),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1) (0 disables), got {self.ema_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}"),
            (self.log_every > 0, f"log_every must be positive, got {self.log_every}"),
            (self.checkpoint_every > 0, f"checkpoint_every must be positive, got {self.checkpoint_every}"),
            (self.eval.episodes > 0, f"eval.episodes must be positive, got {self.eval.episodes}"),
            (self.eval.num_envs > 0, f"eval.num_envs must be positive, got {self.eval.num_envs}"),
            (self.eval.every >= 0, f"eval.every must be >= 0, got {self.eval.every}"),
            (
                self.eval.episodes_during_training > 0,
                f"eval.episodes_during_training must be positive, got {self.eval.episodes_during_training}",
            ),
            (
                all(math.isfinite(t) for t in self.eval.target_returns),
                f"eval.target_returns must be finite numbers, got {self.eval.target_returns}",
            ),
            (self.model.hidden_dim > 0, f"model.hidden_dim must be positive, got {self.model.hidden_dim}"),
            (self.model.num_layers > 0, f"model.num_layers must be positive, got {self.model.num_layers}"),
            (0 <= self.model.dropout < 1, f"model.dropout must be in [0, 1), got {self.model.dropout}"),
            (self.model.return_scale > 0, f"model.return_scale must be positive, got {self.model.return_scale}"),
            (self.model.max_timestep > 0, f"model.max_timestep must be positive, got {self.model.max_timestep}"),
            (
                self.model.previous_actions or self.model.tokens == "fused",
                "model.previous_actions=false needs model.tokens=fused (triple tokens give each action a token)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
