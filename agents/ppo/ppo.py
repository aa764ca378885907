"""Recurrent PPO: roll out with `policy.act` (state carried per env, reset at episode starts), update
with `policy.forward` over whole per-env sequences (minibatches of whole sequences, each from the
policy state stored at its start). One loop for every backbone, the MLP control included.

A separate critic does not step during the rollout: its values for the whole rollout come from one
parallel `critic_forward` after it (forward and step agree), which halves the per-tick model cost.

Logs use Stable-Baselines3's TensorBoard tags so runs overlay SB3 runs. The run directory, checkpoints,
resume, progress, TensorBoard, stopping and results.json are the run loop's (agents/run_loop.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from recurrl.agents.checkpoint import load_weights_strict
from recurrl.agents.devices import fused_optimizer_options
from recurrl.agents.flat_params import FlatParameters
from recurrl.agents.ppo.config import PPOConfig
from recurrl.agents.ppo.evaluation import run_episodes
from recurrl.agents.ppo.loss import explained_variance, ppo_loss
from recurrl.agents.ppo.normalization import ObsNormalizer, RewardScaler
from recurrl.agents.ppo.policy import CHECKPOINT_KIND, build_policy, env_actions
from recurrl.agents.ppo.rollout import RolloutBatch, RolloutBuffer
from recurrl.agents.run_loop import Run
from recurrl.agents.run_spec import RunSpec, Snapshot, whole_iterations
from recurrl.envs.packages import import_env_packages
from recurrl.envs.vector import check_finite, make_vector_env
from recurrl.policies.actor_critic import SpaceSpec
from recurrl.policies.backbones.base import State

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# Config keys that may differ between the original run and `--resume` (everything else must match).
RESUMABLE_CHANGES = frozenset(
    {
        "total_steps",
        "checkpoint_every",
        "eval_every",
        "eval_episodes",
        "device",
        "num_threads",
        "vectorization",
        "run_dir",
        "progress_bar",
        "env_packages",  # where the env's id comes from, not what it is (a package may be renamed)
    }
)


class PPOTrainer:
    def __init__(self, config: PPOConfig, resume: bool = False) -> None:
        config.validate()
        self.config = config
        what = f"num_envs {config.num_envs} x num_steps {config.num_steps}"
        self.num_iterations = whole_iterations(config.total_steps, config.batch_size, what)
        spec = RunSpec(
            kind=CHECKPOINT_KIND,
            command="recurrl train-ppo",
            fresh_name="--run-dir DIR",
            resumable=RESUMABLE_CHANGES,
            total_steps=self.num_iterations * config.batch_size,
            steps_per_iteration=config.batch_size,
            checkpoint_every=config.checkpoint_every,
            progress=config.progress_bar,
            desc=f"ppo-{config.backbone} {config.env_id}",
            speed_tag="time/fps",
            postfix={"ep_rew_mean": "rollout/ep_rew_mean"},
            diverged_hint="try a lower learning_rate or max_grad_norm",
        )
        self.run = Run(config.run_dir, config, spec, resume)
        self.run_dir = self.run.dir.path
        self.checkpoint_dir = self.run.last
        try:
            self._build()
        except BaseException:
            self.run.abandon()
            raise

    def _build(self) -> None:
        config = self.config
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        self.rng = np.random.default_rng(config.seed)  # minibatch shuffling

        import_env_packages(config.env_packages, origin="config env_packages")
        self.envs = make_vector_env(config.env_id, config.num_envs, config.vectorization, flatten_obs=True)
        try:
            self.spec = SpaceSpec.from_spaces(
                self.envs.single_observation_space, self.envs.single_action_space
            )
            self.policy = build_policy(config, self.spec).to(self.device)
            self._build_training(config)
        except BaseException:
            self.envs.close()
            raise

    def _build_training(self, config: PPOConfig) -> None:
        # One buffer for all parameters and one for their gradients: the update's optimizer step, grad
        # clipping and zeroing are one op each instead of one per tensor (see agents/flat_params.py).
        self.flat = FlatParameters(self.policy)
        self.optimizer = torch.optim.Adam(
            [self.flat.param],
            lr=config.learning_rate,
            eps=1e-5,
            **fused_optimizer_options(self.device),
        )
        self.obs_norm = ObsNormalizer((self.spec.obs_dim,), config.normalize_obs, config.clip_obs)
        self.reward_scaler = RewardScaler(
            config.num_envs, config.gamma, config.normalize_reward, config.clip_reward
        )
        self.step = 0  # env steps over all envs
        self.episode_returns: deque[float] = deque(maxlen=100)
        self.episode_lengths: deque[float] = deque(maxlen=100)
        self.history: list[dict[str, float]] = []  # (step, ep_rew_mean) per iteration, for results.json
        self.evaluations: list[dict[str, float]] = []  # (step, mean_reward, std_reward) per eval_every
        self.run.resume(self)

        action_shape = () if self.spec.action_kind == "discrete" else (self.spec.action_dim,)
        self.buffer = RolloutBuffer(
            config.num_steps, config.num_envs, self.spec.obs_dim, action_shape, self.device
        )
        # Per-env running state of the rollout (not checkpointed: a resumed run starts fresh episodes).
        obs, _ = self.envs.reset(seed=config.seed + 10_000 * self.iteration)
        check_finite("observation", obs, config.env_id, self.step)
        self.next_obs = obs
        self.next_starts = np.ones(config.num_envs, dtype=bool)
        self.state: State = self.policy.initial_state(config.num_envs, self.device)
        self.running_return = np.zeros(config.num_envs)
        self.running_length = np.zeros(config.num_envs, dtype=np.int64)

    @property
    def global_step(self) -> int:
        """Env steps over all envs (SB3's num_timesteps)."""
        return self.step

    @property
    def iteration(self) -> int:
        """Whole iterations (rollout + update) done."""
        return self.step // self.config.batch_size

    # ----------------------------------------------------------------- rollout
    def _obs_tensor(self, obs: np.ndarray, update: bool) -> Tensor:
        return torch.as_tensor(self.obs_norm(obs, update=update), device=self.device)

    @torch.no_grad()
    def collect_rollout(self) -> None:
        """num_steps ticks of every env into the buffer (obs, actions, log-probs, values, rewards).

        With a separate critic the ticks only run the actor (`policy.act`); the values of the whole
        rollout, and of the final observations of truncated episodes, come after it from one parallel
        critic forward (`_critic_values`). With a shared backbone the values come with each tick.
        """
        cfg, buf = self.config, self.buffer
        buf.initial_state = tuple(s.clone() for s in self.state)
        truncations: list[tuple[int, Tensor, Tensor]] = []  # (t, env indices, their final obs), deferred
        for t in range(cfg.num_steps):
            obs = self._obs_tensor(self.next_obs, update=True)
            starts = torch.as_tensor(self.next_starts, device=self.device)
            dist, value, self.state = self.policy.act(obs, self.state, starts)
            action, buf.log_probs[t] = self.policy.sample(dist)
            buf.obs[t], buf.episode_starts[t], buf.actions[t] = obs, starts, action
            if value is not None:
                buf.values[t] = value

            next_obs, reward, terminated, truncated, infos = self.envs.step(
                env_actions(action, self.spec, self.envs.single_action_space)
            )
            self.step += cfg.num_envs
            check_finite("observation", next_obs, cfg.env_id, self.step)
            check_finite("reward", np.asarray(reward, dtype=np.float64)[:, None], cfg.env_id, self.step)
            done = np.logical_or(terminated, truncated)
            self._track_episodes(np.asarray(reward, dtype=np.float64), done)
            buf.rewards[t] = torch.as_tensor(
                self.reward_scaler(np.asarray(reward, dtype=np.float64), done), device=self.device
            )

            # Truncated episodes are bootstrapped with V(final_obs), computed from the critic state that
            # has seen the whole episode (the pre-reset state of this step).
            bootstrap = np.flatnonzero(np.logical_and(truncated, ~np.asarray(terminated)))
            if bootstrap.size:
                final_obs = np.stack([infos["final_obs"][i] for i in bootstrap])
                check_finite("final observation", final_obs, cfg.env_id, self.step)
                index = torch.as_tensor(bootstrap, device=self.device)
                final_x = self._obs_tensor(final_obs, update=False)
                if value is None:
                    truncations.append((t, index, final_x))
                else:
                    _, final_value, _ = self.policy.step(final_x, tuple(s[index] for s in self.state))
                    buf.rewards[t, index] += cfg.gamma * final_value
            buf.dones[t] = torch.as_tensor(done, dtype=torch.float32, device=self.device)
            self.next_obs, self.next_starts = next_obs, done
        if self.policy.separate_critic:
            self._critic_values(truncations)

    def _critic_values(self, truncations: list[tuple[int, Tensor, Tensor]]) -> None:
        """Separate critic: buffer values from one forward over the rollout's [N, T] sequences, from the
        state stored at its start, then gamma * V(final_obs) added to the truncated steps' rewards.

        V(final_obs) of env i truncated at tick t is the critic's output after obs[i, :t+1] followed
        by final_obs: one more batched forward over those prefixes (padded at the end, which a causal
        model never reads).
        """
        buf, gamma = self.buffer, self.config.gamma
        obs, starts = buf.obs.transpose(0, 1), buf.episode_starts.transpose(0, 1)  # [N, T, D], [N, T]
        values, critic_state = self.policy.critic_forward(obs, buf.initial_state, starts)
        buf.values.copy_(values.transpose(0, 1))
        actor_state, _ = self.policy.split_state(self.state)
        self.state = actor_state + critic_state
        if not truncations:
            return
        events = [
            (t, int(i), x) for t, index, final_x in truncations for i, x in zip(index, final_x, strict=True)
        ]
        length = max(t for t, _, _ in events) + 2
        seq = obs.new_zeros(len(events), length, obs.shape[-1])
        seq_starts = torch.zeros(len(events), length, dtype=torch.bool, device=obs.device)
        for e, (t, i, x) in enumerate(events):
            seq[e, : t + 1], seq[e, t + 1] = obs[i, : t + 1], x
            seq_starts[e, : t + 1] = starts[i, : t + 1]
        env_index = torch.as_tensor([i for _, i, _ in events], device=obs.device)
        initial = tuple(s[env_index] for s in buf.initial_state)
        final_values, _ = self.policy.critic_forward(seq, initial, seq_starts)
        ticks = torch.as_tensor([t for t, _, _ in events], device=obs.device)
        final_values = final_values[torch.arange(len(events), device=obs.device), ticks + 1]
        buf.rewards.index_put_((ticks, env_index), gamma * final_values, accumulate=True)

    def _track_episodes(self, reward: np.ndarray, done: np.ndarray) -> None:
        self.running_return += reward
        self.running_length += 1
        for i in np.flatnonzero(done):
            self.episode_returns.append(float(self.running_return[i]))
            self.episode_lengths.append(float(self.running_length[i]))
        self.running_return[done] = 0.0
        self.running_length[done] = 0

    @torch.no_grad()
    def _last_value(self) -> Tensor:
        obs = self._obs_tensor(self.next_obs, update=False)
        starts = torch.as_tensor(self.next_starts, device=self.device)
        _, value, _ = self.policy.step(obs, self.state, starts)
        return value

    # ----------------------------------------------------------------- update
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        per_minibatch = cfg.num_envs // cfg.num_minibatches
        stats: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "ent", "kl", "clip", "loss")}
        stop = False
        for _ in range(cfg.update_epochs):
            order = torch.as_tensor(self.rng.permutation(cfg.num_envs), device=self.device)
            for start in range(0, cfg.num_envs, per_minibatch):
                mb = batch.select(order[start : start + per_minibatch])
                dist, value, _ = self.policy(mb.obs, mb.initial_state, mb.episode_starts)  # [n, T]
                terms = ppo_loss(dist, value, mb, cfg)
                self.flat.zero_grad()
                terms.loss.backward()
                self.flat.clip_grad_norm_(cfg.max_grad_norm)
                self.optimizer.step()
                for key, val in zip(stats, terms.values(), strict=True):
                    stats[key].append(float(val.detach()))
                if cfg.target_kl is not None and terms.kl > cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        explained = explained_variance(batch.values, batch.returns)
        mean = {k: float(np.mean(v)) for k, v in stats.items()}
        out = {
            "train/policy_gradient_loss": mean["pg"],
            "train/value_loss": mean["vf"],
            "train/entropy_loss": -mean["ent"],
            "train/approx_kl": mean["kl"],
            "train/clip_fraction": mean["clip"],
            "train/loss": mean["loss"],
            "train/explained_variance": explained,
            "train/learning_rate": self.optimizer.param_groups[0]["lr"],
            "train/clip_range": cfg.clip_coef,
        }
        if self.policy.log_std is not None:
            out["train/std"] = float(self.policy.log_std.detach().exp().mean())
        return out

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Train to total_steps; the summary (results.json without its history)."""
        try:
            results = self.run.train(self)
        finally:
            self.envs.close()
        assert results is not None  # the whole budget ran (else KeyboardInterrupt)
        return {k: v for k, v in results.items() if k != "history"}

    def train_iteration(self) -> dict[str, float]:
        """One rollout of num_steps ticks in every env, then the PPO update."""
        cfg = self.config
        iteration = self.iteration + 1
        if cfg.anneal_lr:
            frac = 1.0 - (iteration - 1) / self.num_iterations
            self.optimizer.param_groups[0]["lr"] = frac * cfg.learning_rate
        self.policy.eval()
        self.collect_rollout()
        advantages, returns = self.buffer.compute_returns(self._last_value(), cfg.gamma, cfg.gae_lambda)
        self.policy.train()
        logs = self.update(self.buffer.batch(advantages, returns))
        logs.update({"time/iterations": iteration, "time/total_timesteps": self.step})
        if self.episode_returns:
            logs["rollout/ep_rew_mean"] = float(np.mean(self.episode_returns))
            logs["rollout/ep_len_mean"] = float(np.mean(self.episode_lengths))
            self.history.append({"step": self.step, "ep_rew_mean": logs["rollout/ep_rew_mean"]})
        return logs

    def results(self, writer: SummaryWriter) -> dict[str, Any]:
        cfg = self.config
        wall = self.run.session_wall_s()
        return {
            "env_id": cfg.env_id,
            "backbone": cfg.backbone,
            "seed": cfg.seed,
            "global_step": self.step,
            "ep_rew_mean": float(np.mean(self.episode_returns)) if self.episode_returns else None,
            "best_ep_rew_mean": max((h["ep_rew_mean"] for h in self.history), default=None),
            "evaluations": self.evaluations,
            "fps": (self.step - self.run.session_start_step) / max(wall, 1e-9),
            "wall_s": wall,
            "checkpoint": str(self.checkpoint_dir),
            "parameters": sum(p.numel() for p in self.policy.parameters()),
            "history": self.history,
        }

    def periodic_evaluation(self) -> dict[str, float]:
        """Every `eval_every` env steps: deterministic episodes in fresh envs (the training envs and the
        policy's rollout state are untouched; no torch RNG is drawn) -> eval/* logs, else {}."""
        cfg = self.config
        previous = self.step - cfg.batch_size
        if cfg.eval_every <= 0 or self.step // cfg.eval_every == previous // cfg.eval_every:
            return {}
        self.policy.eval()
        result = run_episodes(
            self.policy, self.obs_norm, cfg.env_id, cfg.eval_episodes, cfg.seed + 10_000, 4, self.device
        )
        self.evaluations.append(
            {
                "step": self.step,
                "mean_reward": result["return_mean"],
                "std_reward": result["return_std"],
            }
        )
        return {
            "eval/mean_reward": result["return_mean"],
            "eval/mean_ep_length": float(np.mean(result["lengths"])),
        }

    # ----------------------------------------------------------------- checkpoints
    def snapshot(self) -> Snapshot:
        meta = {
            "spaces": asdict(self.spec),
            "obs_norm": self.obs_norm.to_dict(),
            "global_step": self.step,
            "iteration": self.iteration,
        }
        state = {
            "shuffle_rng": self.rng.bit_generator.state,
            "reward_norm": self.reward_scaler.to_dict(),
            "episode_returns": list(self.episode_returns),
            "episode_lengths": list(self.episode_lengths),
            "history": self.history,
            "evaluations": self.evaluations,
        }
        return Snapshot(self.policy.state_dict(), meta, state)

    def restore(self, snapshot: Snapshot) -> None:
        state = snapshot.state
        load_weights_strict(self.policy, snapshot.policy, snapshot.source)
        self.rng.bit_generator.state = state["shuffle_rng"]
        self.obs_norm = ObsNormalizer.from_dict(snapshot.meta["obs_norm"])
        self.reward_scaler.load_dict(state["reward_norm"])
        self.episode_returns.extend(state["episode_returns"])
        self.episode_lengths.extend(state["episode_lengths"])
        self.history = list(state["history"])
        self.evaluations = list(state["evaluations"])


def train_ppo(config: PPOConfig, resume: bool = False) -> dict[str, Any]:
    """Train PPO as configured; returns a summary (also written to run_dir/results.json)."""
    return PPOTrainer(config, resume=resume).train()
