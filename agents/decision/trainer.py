"""Offline training of the Decision agent: one loop for every backbone.

Run layout (`runs/<run_name>/`):
    config.json            the resolved config
    checkpoints/last       latest checkpoint (every `checkpoint_every` steps, at the end, on Ctrl-C)
    checkpoints/best       best periodic evaluation so far
    events.out.tfevents.*  TensorBoard: train/loss, train/lr, eval/return, eval/normalized_score,
                           time/steps_per_sec
    results.json           final evaluation of the last and the best checkpoint

The directory, its lock, checkpoints, resume, progress, TensorBoard, stopping and results.json are the
run loop's (agents/run_loop.py); this file says what one training step and an evaluation are. `resume`
restores model, optimizer, scheduler, RNG, sampler and step, so N straight steps and N/2 + resume + N/2
give the same weights.

Under `torchrun --nproc_per_node N` (agents/distributed.py) every process draws the same global batch
from the same seeded sampler and trains on its contiguous batch_size / N rows; each loss is its share of
the whole batch's mean, DistributedDataParallel sums the gradients, so the weights follow a one-process
run to float tolerance (with dropout, each rank draws its own masks, seeded per step and rank). Rank 0
alone writes the run directory; evaluations split their env slots over the processes.

With `ema_decay > 0` the checkpoints' model weights are the moving average (what evaluation and
deployment use); the raw training weights travel in train.safetensors under `train_model/`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recurrl.agents.checkpoint import CheckpointError, load_weights_strict, read_meta
from recurrl.agents.config import to_dict
from recurrl.agents.distributed import Distributed
from recurrl.agents.run_dir import jsonable, timestamped
from recurrl.agents.run_loop import Run
from recurrl.agents.run_spec import RunSpec, Snapshot
from recurrl.envs.episodes import OfflineDataset
from recurrl.envs.packages import import_env_packages
from recurrl.envs.scores import default_target_return
from recurrl.policies.decision import DecisionModel, action_loss

from .config import DecisionConfig
from .data import SegmentSampler
from .evaluation import evaluate_model, format_summary
from .model_io import KIND, EnvSpec, build_model, load_decision_checkpoint, model_kwargs
from .optim import make_optimizer

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# Keys that may differ between the original run and `--resume` (everything else must match).
RESUMABLE_CHANGES = frozenset(
    {"steps", "log_every", "checkpoint_every", "eval", "device", "num_threads", "runs_dir", "run_name", "world_size"}
    | {"env_packages"}  # where the env's id comes from, not what it is (a package may be renamed)
)


TRAIN_MODEL = "train_model/"  # prefix of the raw weights in train.safetensors when an EMA is kept


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_name(config: DecisionConfig) -> str:
    data = config.dataset.rstrip("/").replace("/", "-").replace(".", "_")
    return timestamped(f"{data}-{config.model.backbone}-s{config.seed}")


def load_training_dataset(source: str, env_id: str | None = None, clip_actions: bool = False) -> OfflineDataset:
    from recurrl.envs.datasets import load_dataset  # lazy: the loaders pull in minari/h5py

    return load_dataset(source, env_id=env_id, clip_actions=clip_actions)


class DecisionTrainer:
    """Train a DecisionModel on an offline dataset; evaluate it; write checkpoints and results."""

    def __init__(
        self,
        config: DecisionConfig,
        dataset: OfflineDataset | None = None,
        resume: bool = False,
        show_progress: bool = True,
        dist: Distributed | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.dist = dist or Distributed.from_env(config.device)  # one process unless torchrun started more
        self.dist.check_batch(config.batch_size)
        config.world_size = self.dist.world_size
        self.device = self.dist.device
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.run_dir = Path(config.runs_dir) / (config.run_name or default_run_name(config))
        self.ckpt_dir = self.run_dir / "checkpoints"
        spec = RunSpec(
            kind=KIND,
            command=self.dist.resume_command("recurrl train"),
            fresh_name="--run-name NAME",
            resumable=RESUMABLE_CHANGES,
            total_steps=config.steps,
            checkpoint_every=config.checkpoint_every,
            log_every=config.log_every,
            progress=show_progress and self.dist.is_main,
            postfix={"loss": "train/loss"},
            diverged_hint="try a lower lr or a stronger grad_clip",
        )
        self.run = Run(self.run_dir, config, spec, resume, self.dist)
        try:
            self._build(dataset)
            self.run.resume(self)
        except BaseException:
            self.run.abandon()
            raise

    def _build(self, dataset: OfflineDataset | None) -> None:
        config = self.config
        seed_everything(config.seed)
        import_env_packages(config.env_packages, origin="config env_packages")  # before any env is made
        self.dataset = dataset if dataset is not None else load_training_dataset(config.dataset, config.env_id, config.clip_actions)
        self.env_spec = EnvSpec.from_dataset(self.dataset)
        self._check_dataset_env()
        self._resolve_targets()
        self.model_kwargs = model_kwargs(config, self.dataset)
        self.model: DecisionModel = build_model(self.model_kwargs).to(self.device)
        self.forward_model = self.dist.wrap(self.model)  # DistributedDataParallel under torchrun
        # The weights that are evaluated, checkpointed and deployed: an average of the model's, or the model.
        self.ema: DecisionModel | None = None
        if config.ema_decay > 0:
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.config, self.device)
        self.sampler = SegmentSampler(self.dataset, config.context_length, config.burn_in, seed=config.seed)
        self.step = 0
        self.best_score = -math.inf
        self.best_step: int | None = None
        self.history: list[dict[str, Any]] = []
        self.amp = config.amp and self.device.type == "cuda"

    # ------------------------------------------------------------------ setup helpers
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
    def snapshot(self) -> Snapshot:
        raw = {}
        if self.ema is not None:
            raw = {TRAIN_MODEL + k: v for k, v in self.model.state_dict().items()}
        meta = {
            "model_kwargs": self.model_kwargs,
            "env": dataclasses.asdict(self.env_spec),
            "dataset": self.dataset.name,
            "dataset_stats": self.dataset.stats.to_json(),
            "num_parameters": self.model.num_parameters(),
            "best_score": self.best_score if math.isfinite(self.best_score) else None,
            "best_step": self.best_step,
        }
        state = {
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "history": self.history,
        }
        return Snapshot(self.policy.state_dict(), meta, state, raw)

    def save(self, name: str = "last") -> Path:
        return self.run.save(self, name)

    def restore(self, snapshot: Snapshot) -> None:
        meta, state = snapshot.meta, snapshot.state
        if meta["model_kwargs"] != jsonable(self.model_kwargs):
            raise CheckpointError(
                f"{snapshot.source}: checkpoint was made for another model or dataset (model arguments or "
                "normalization statistics differ); resume with the run's own config and dataset"
            )
        load_weights_strict(self.policy, snapshot.policy, snapshot.source)
        if self.ema is not None:
            raw = {k[len(TRAIN_MODEL) :]: v for k, v in snapshot.tensors.items() if k.startswith(TRAIN_MODEL)}
            load_weights_strict(self.model, raw, f"{snapshot.source} (raw training weights)")
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.history = list(state["history"])
        self.best_score = -math.inf if meta.get("best_score") is None else float(meta["best_score"])
        self.best_step = meta.get("best_step")

    # ------------------------------------------------------------------ training
    def train_step(self) -> float:
        """One optimizer step; its loss (the run loop stops on a non-finite one, saving nothing). Under
        torchrun, this process's share of the loss (the run loop sums the shares)."""
        size, total_steps = self.config.batch_size, None
        if self.dist.enabled:
            batch, total_steps = self.sampler.sample_rows(size, self.dist.rows(size))
            self.dist.seed_step(self.config.seed, self.step)
        else:
            batch = self.sampler.sample(size)
        batch = batch.to(self.device)
        model = self.model
        model.train()
        targets = model.normalize_actions(batch.actions)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            pred, _ = self.forward_model(batch.returns_to_go, batch.states, targets, batch.timesteps, batch.episode_starts)
        loss = action_loss(model, pred.float(), targets, batch.loss_mask, total_steps)
        self.optimizer.zero_grad(set_to_none=True)
        with self.dist.collective("the gradient all-reduce"):  # DDP reduces the gradients in backward
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
                self.dist,
            )

    def train(self, until: int | None = None) -> dict[str, Any] | None:
        """Train to step `until` (default: config.steps). At config.steps, evaluate and write results.

        Returns the results (or None when stopped before config.steps). Ctrl-C or SIGTERM finishes the
        current step, saves `last`, then raises KeyboardInterrupt (see agents/run_loop.py).
        """
        return self.run.train(self, until)

    def close(self) -> None:
        """Under torchrun, after the last collective: drop DDP (it holds the process group), leave the group."""
        import gc

        self.forward_model = self.model
        gc.collect()  # DDP's hooks form reference cycles: free it now, not at interpreter exit
        self.dist.close()

    def train_iteration(self) -> dict[str, float]:
        loss = self.train_step()
        return {"train/loss": loss, "train/lr": self.scheduler.get_last_lr()[0]}

    def periodic_evaluation(self) -> dict[str, float]:
        """Every eval.every steps: evaluate, keep the best checkpoint. Other env seeds than the final
        evaluation's, so picking the best checkpoint does not bias it."""
        every = self.config.eval.every
        if not every or self.step % every:
            return {}
        result = self.evaluate(
            self.config.eval.episodes_during_training, seed=self.config.eval.seed + 100_000
        )
        first = result["targets"][0]
        self.history.append(
            {"step": self.step, "score": result["score"], "return_mean": first["return_mean"]}
        )
        if result["score"] > self.best_score:
            self.best_score, self.best_step = result["score"], self.step
            self.save("best")
        if self.dist.is_main:
            tqdm.write(f"step {self.step}: eval {format_summary(first)}")
        return _eval_scalars(first)

    def results(self, writer: SummaryWriter) -> dict[str, Any]:
        """Final evaluation of the last and the best checkpoint (results.json's own part)."""
        cfg = self.config
        if self.dist.is_main:
            try:
                read_meta(self.ckpt_dir / "best")
            except CheckpointError:
                # No periodic evaluation ran: the last checkpoint is the only candidate.
                self.run.copy_last_to("best")
                self.best_step = self.step
        results: dict[str, Any] = {
            "kind": KIND,
            "run_dir": str(self.run_dir),
            "dataset": self.dataset.name,
            "backbone": cfg.model.backbone,
            "num_parameters": self.model.num_parameters(),
            "steps": self.step,
            "world_size": self.dist.world_size,
            "config": to_dict(cfg),
            "history": self.history,
            "checkpoints": {},
        }
        for name in ("last", "best"):
            model, meta = self._load_checkpoint(name)
            result = self.evaluate(cfg.eval.episodes, model=model)
            result["step"] = int(meta["step"])
            results["checkpoints"][name] = result
            for summary in result["targets"] if self.dist.is_main else []:
                print(f"[{name} @ step {meta['step']}] {format_summary(summary)}")
        for tag, value in _eval_scalars(results["checkpoints"]["last"]["targets"][0]).items():
            writer.add_scalar(tag, value, self.step)
        return results

    def _load_checkpoint(self, name: str) -> tuple[DecisionModel, dict[str, Any]]:
        """checkpoints/NAME as an evaluation model; under torchrun rank 0 reads it and sends it to the
        others (only rank 0 touches the run directory, so other nodes need no shared disk)."""
        if not self.dist.enabled:
            return load_decision_checkpoint(self.ckpt_dir / name, self.device)
        loaded: list[DecisionModel] = []

        def read() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            model, meta = load_decision_checkpoint(self.ckpt_dir / name, self.device)
            loaded.append(model)
            return {k: v.cpu() for k, v in model.state_dict().items()}, meta

        tensors, meta = self.dist.from_main(read, f"reading checkpoints/{name}")
        if loaded:
            return loaded[0], meta
        model = build_model(meta["model_kwargs"])
        load_weights_strict(model, tensors, f"checkpoints/{name} from rank 0")
        return model.to(self.device).eval(), meta


def _eval_scalars(summary: dict[str, Any]) -> dict[str, float]:
    scalars = {"eval/return": summary["return_mean"]}
    if summary["normalized_score_mean"] is not None:
        scalars["eval/normalized_score"] = summary["normalized_score_mean"]
    return scalars
