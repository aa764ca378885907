"""Offline training of the Decision agent: one loop for every backbone.

Run layout (`runs/<run_name>/`):
    config.json            the resolved config
    checkpoints/last       latest checkpoint (every `checkpoint_every` steps, at the end, on Ctrl-C)
    checkpoints/best       best periodic evaluation so far
    events.out.tfevents.*  TensorBoard: train/loss, train/lr, eval/return, eval/normalized_score,
                           time/steps_per_sec
    results.json           final evaluation of the last and the best checkpoint

`resume` restores model, optimizer, scheduler, RNG, sampler and step, so N straight steps and N/2 +
resume + N/2 give the same weights.

With `ema_decay > 0` the checkpoints' model weights are the moving average (what evaluation and
deployment use); the raw training weights travel in train.safetensors under `train_model/`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from recurrl.agents.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    load_weights_strict,
    optimizer_state,
    resumable_summary_writer,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json_atomic,
)
from recurrl.agents.config import from_dict, save_config, to_dict
from recurrl.agents.devices import fused_optimizer_options, resolve_device
from recurrl.agents.stopping import GracefulStop
from recurrl.envs.episodes import OfflineDataset
from recurrl.envs.scores import default_target_return
from recurrl.policies.decision import DecisionModel, action_loss

from .config import DecisionConfig
from .data import SegmentSampler
from .evaluation import evaluate_model, format_summary
from .model_io import KIND, EnvSpec, build_model, model_kwargs

# Keys that may differ between the original run and `--resume` (everything else must match).
RESUMABLE_CHANGES = {
    "steps",
    "log_every",
    "checkpoint_every",
    "eval",
    "device",
    "num_threads",
    "runs_dir",
    "run_name",
}


TRAIN_MODEL = "train_model/"  # prefix of the raw weights in train.safetensors when an EMA is kept


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_name(config: DecisionConfig) -> str:
    data = config.dataset.rstrip("/").replace("/", "-").replace(".", "_")
    return f"{data}-{config.model.backbone}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_training_dataset(source: str) -> OfflineDataset:
    from recurrl.envs.datasets import load_dataset  # lazy: the loaders pull in minari/h5py

    return load_dataset(source)


class DecisionTrainer:
    """Train a DecisionModel on an offline dataset; evaluate it; write checkpoints and results."""

    def __init__(
        self,
        config: DecisionConfig,
        dataset: OfflineDataset | None = None,
        resume: bool = False,
        show_progress: bool = True,
    ) -> None:
        config.validate()
        self.config = config
        self.show_progress = show_progress
        self.device = resolve_device(config.device)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.run_dir = Path(config.runs_dir) / (config.run_name or default_run_name(config))
        self.ckpt_dir = self.run_dir / "checkpoints"
        if not resume and self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise ValueError(
                f"run directory {str(self.run_dir)!r} already exists; pass --resume {self.run_dir} to continue it "
                "or choose another --run-name"
            )
        seed_everything(config.seed)
        self.dataset = dataset if dataset is not None else load_training_dataset(config.dataset)
        self.env_spec = EnvSpec.from_dataset(self.dataset)
        self._check_dataset_env()
        self._resolve_targets()
        self.model_kwargs = model_kwargs(config, self.dataset)
        self.model: DecisionModel = build_model(self.model_kwargs).to(self.device)
        # The weights that are evaluated, checkpointed and deployed: an average of the model's, or the model.
        self.ema: DecisionModel | None = None
        if config.ema_decay > 0:
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), lr=config.lr, betas=(0.9, 0.999), **fused_optimizer_options(self.device)
        )
        # Reads the config at every step, so extending a run (`--resume ... steps=N`) re-plans the decay.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(self.config, s)
        )
        self.sampler = SegmentSampler(self.dataset, config.context_length, config.burn_in, seed=config.seed)
        self.step = 0
        self.best_score = -math.inf
        self.best_step: int | None = None
        self.history: list[dict[str, Any]] = []
        if resume:
            self._restore(self.ckpt_dir / "last")
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.json")
        self.amp = config.amp and self.device.type == "cuda"

    # ------------------------------------------------------------------ setup helpers
    def _param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices only (nanoGPT/DT convention), not on biases, norms, embeddings."""
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            is_embedding = name.startswith("embed_timestep") or (
                self.model.discrete and name.startswith("embed_action")
            )
            (decay if param.ndim >= 2 and not is_embedding else no_decay).append(param)
        return [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def _resolve_targets(self) -> None:
        """No eval.target_returns given: one from the dataset, said out loud (and saved in config.json).
        A target far outside the dataset's episode returns (beyond one return range) is a warning."""
        returns = self.dataset.stats.returns
        low, high = float(returns.min()), float(returns.max())
        if not self.config.eval.target_returns:
            target, why = default_target_return(self.dataset.env_id, returns)
            self.config.eval.target_returns = [target]
            print(f"target return {target:g} ({why}); set another with --target-return or eval.target_returns=[...]")
        span = max(high - low, 1e-9)
        for target in self.config.eval.target_returns:
            if not low - span <= target <= high + span:
                print(f"warning: target return {target:g} is far outside the dataset's episode returns ({low:.1f} to {high:.1f})")

    def _check_dataset_env(self) -> None:
        """The dataset's spaces must be the evaluation env's (else evaluation would be meaningless)."""
        try:
            env = self.dataset.make_env()
        except Exception as error:  # gymnasium raises many types for unknown ids / bad kwargs
            raise ValueError(
                f"dataset {self.dataset.name!r}: cannot make its evaluation env {self.dataset.env_id!r}: {error}"
            ) from error
        try:
            self.env_spec.check_env(env)
        finally:
            env.close()

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "step": self.step,
            "config": to_dict(self.config),
            "model_kwargs": self.model_kwargs,
            "env": dataclasses.asdict(self.env_spec),
            "dataset": self.dataset.name,
            "dataset_stats": self.dataset.stats.to_json(),
            "num_parameters": self.model.num_parameters(),
            "best_score": self.best_score if math.isfinite(self.best_score) else None,
            "best_step": self.best_step,
        }

    def save(self, name: str = "last") -> Path:
        opt_tensors, opt_plain = optimizer_state(self.optimizer)
        rng_tensors, rng_plain = rng_state()
        raw_tensors = {}
        if self.ema is not None:
            raw_tensors = {TRAIN_MODEL + k: v for k, v in self.model.state_dict().items()}
        meta = self._meta()
        meta["train"] = {
            "optimizer": opt_plain,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_plain,
            "sampler": self.sampler.state_dict(),
            "history": self.history,
        }
        return save_checkpoint(
            self.ckpt_dir / name,
            self.policy.state_dict(),
            meta,
            train_tensors={**opt_tensors, **rng_tensors, **raw_tensors},
        )

    def _restore(self, path: Path) -> None:
        if not (path / "meta.json").is_file():
            raise ValueError(
                f"cannot resume: {str(path)!r} has no checkpoint (was the run ever checkpointed?)"
            )
        tensors, meta, train = load_checkpoint(path, with_train_state=True)
        if meta.get("kind") != KIND:
            raise CheckpointError(f"{path}: a {meta.get('kind')!r} checkpoint cannot resume a Decision run")
        saved = from_dict(DecisionConfig, meta["config"])
        self._check_same_run(saved)
        if meta["model_kwargs"] != _jsonable(self.model_kwargs):
            raise CheckpointError(
                f"{path}: checkpoint was made for another model or dataset (model arguments or normalization "
                "statistics differ); resume with the run's own config and dataset"
            )
        load_weights_strict(self.policy, tensors, str(path))
        if train is None or "train" not in meta:
            raise CheckpointError(f"{path}: no optimizer/RNG state, so the run cannot be resumed exactly")
        if self.ema is not None:
            raw = {k[len(TRAIN_MODEL) :]: v for k, v in train.items() if k.startswith(TRAIN_MODEL)}
            load_weights_strict(self.model, raw, f"{path} (raw training weights)")
        load_optimizer_state(self.optimizer, train, meta["train"]["optimizer"])
        self.scheduler.load_state_dict(meta["train"]["scheduler"])
        set_rng_state(train, meta["train"]["rng"])
        self.sampler.load_state_dict(meta["train"]["sampler"])
        self.history = list(meta["train"].get("history", []))
        self.step = int(meta["step"])
        self.best_score = -math.inf if meta.get("best_score") is None else float(meta["best_score"])
        self.best_step = meta.get("best_step")

    def _check_same_run(self, saved: DecisionConfig) -> None:
        old, new = to_dict(saved), to_dict(self.config)
        changed = sorted(k for k in old if k not in RESUMABLE_CHANGES and old[k] != new.get(k))
        if changed:
            details = ", ".join(f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in changed)
            raise ValueError(
                f"cannot resume {str(self.run_dir)!r} with a different config ({details}); only "
                f"{', '.join(sorted(RESUMABLE_CHANGES))} may change on resume"
            )

    # ------------------------------------------------------------------ training
    def train_step(self) -> float:
        batch = self.sampler.sample(self.config.batch_size).to(self.device)
        model = self.model
        model.train()
        targets = model.normalize_actions(batch.actions)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            pred, _ = model(batch.returns_to_go, batch.states, targets, batch.timesteps, batch.episode_starts)
        loss = action_loss(model, pred.float(), targets, batch.loss_mask)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged: loss is {loss.item()} at step {self.step + 1}; the last good checkpoint is "
                f"{self.ckpt_dir / 'last'} (try a lower lr or stronger grad_clip)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        return float(loss.item())

    @property
    def policy(self) -> DecisionModel:
        """The weights that are evaluated, checkpointed and deployed."""
        return self.model if self.ema is None else self.ema

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema is not None
        # Ramped decay: early on the average follows the fast-moving weights instead of the random init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)
        for average, buffer in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            average.copy_(buffer)

    def evaluate(
        self,
        episodes: int,
        mode: str | None = None,
        model: DecisionModel | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        ev = self.config.eval
        # Evaluation must not consume the training RNG (exact resume does not depend on when it ran).
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return evaluate_model(
                model or self.policy,
                self.env_spec,
                ev.target_returns,
                episodes,
                ev.num_envs,
                ev.seed if seed is None else seed,
                mode or ev.mode,
                self.config.context_length,
                self.device,
            )

    def train(self, until: int | None = None) -> dict[str, Any] | None:
        """Train to step `until` (default: config.steps). At config.steps, evaluate and write results.

        Returns the results (or None when stopped before config.steps). Ctrl-C or SIGTERM finishes the
        current step, saves `last`, then raises KeyboardInterrupt (see agents/stopping.py).
        """
        cfg = self.config
        until = cfg.steps if until is None else min(until, cfg.steps)
        writer = resumable_summary_writer(self.run_dir, self.step, flush_secs=30)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not self.show_progress, desc="train", unit="step"
        )
        last_log_time, last_log_step = time.perf_counter(), self.step
        losses: list[float] = []
        try:
            with GracefulStop() as stop:
                while self.step < until and stop.requested is None:
                    losses.append(self.train_step())
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == until:
                        now = time.perf_counter()
                        speed = (self.step - last_log_step) / max(now - last_log_time, 1e-9)
                        mean_loss = float(np.mean(losses))
                        writer.add_scalar("train/loss", mean_loss, self.step)
                        writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                        writer.add_scalar("time/steps_per_sec", speed, self.step)
                        bar.set_postfix(loss=f"{mean_loss:.4f}", sps=f"{speed:.1f}")
                        losses.clear()
                        last_log_time, last_log_step = time.perf_counter(), self.step
                    if cfg.eval.every and self.step % cfg.eval.every == 0:
                        self._periodic_eval(writer)
                        last_log_time = time.perf_counter()  # evaluation time is not training time
                    if self.step % cfg.checkpoint_every == 0 and self.step != until:
                        self.save("last")
                self.save("last")
            if stop.requested is not None and self.step < until:
                bar.close()
                print(
                    f"stopped at step {self.step}; checkpoint saved. Continue with: --resume {self.run_dir}"
                )
                raise KeyboardInterrupt
        finally:
            bar.close()
            writer.flush()
        try:
            if self.step < cfg.steps:
                return None
            return self.finish(writer)
        finally:
            writer.close()

    def _periodic_eval(self, writer: SummaryWriter) -> None:
        # Other env seeds than the final evaluation's, so picking the best checkpoint does not bias it.
        result = self.evaluate(
            self.config.eval.episodes_during_training, seed=self.config.eval.seed + 100_000
        )
        first = result["targets"][0]
        writer.add_scalar("eval/return", first["return_mean"], self.step)
        if first["normalized_score_mean"] is not None:
            writer.add_scalar("eval/normalized_score", first["normalized_score_mean"], self.step)
        self.history.append(
            {"step": self.step, "score": result["score"], "return_mean": first["return_mean"]}
        )
        if result["score"] > self.best_score:
            self.best_score, self.best_step = result["score"], self.step
            self.save("best")
        tqdm.write(f"step {self.step}: eval {format_summary(first)}")

    def finish(self, writer: SummaryWriter | None = None) -> dict[str, Any]:
        """Final evaluation of the last and the best checkpoint -> results.json."""
        from .model_io import load_decision_checkpoint

        cfg = self.config
        best_path = self.ckpt_dir / "best"
        if not (best_path / "meta.json").is_file():
            # No periodic evaluation ran: the last checkpoint is the only candidate.
            shutil.copytree(self.ckpt_dir / "last", best_path)
            self.best_step = self.step
        results: dict[str, Any] = {
            "kind": KIND,
            "run_dir": str(self.run_dir),
            "dataset": self.dataset.name,
            "backbone": cfg.model.backbone,
            "num_parameters": self.model.num_parameters(),
            "steps": self.step,
            "config": to_dict(cfg),
            "history": self.history,
            "checkpoints": {},
        }
        for name in ("last", "best"):
            model, meta = load_decision_checkpoint(self.ckpt_dir / name, self.device)
            result = self.evaluate(cfg.eval.episodes, model=model)
            result["step"] = int(meta["step"])
            results["checkpoints"][name] = result
            for summary in result["targets"]:
                print(f"[{name} @ step {meta['step']}] {format_summary(summary)}")
        if writer is not None:
            first = results["checkpoints"]["last"]["targets"][0]
            writer.add_scalar("eval/return", first["return_mean"], self.step)
            if first["normalized_score_mean"] is not None:
                writer.add_scalar("eval/normalized_score", first["normalized_score_mean"], self.step)
        write_json_atomic(self.run_dir / "results.json", results)
        return results


def _jsonable(value: Any) -> Any:
    """What `value` looks like after a JSON round trip (tuples become lists, ...)."""
    import json

    return json.loads(json.dumps(value))


def lr_factor(config: DecisionConfig, step: int) -> float:
    """Multiplier of config.lr for optimizer step `step` (0-based): linear warmup over warmup_steps, then
    constant, or a half cosine from 1 down to min_lr_ratio at config.steps."""
    warmup = max(config.warmup_steps, 1)
    if step + 1 < warmup:
        return (step + 1) / warmup
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(max(step + 1 - warmup, 0) / max(config.steps - warmup, 1), 1.0)
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
