"""PPO configuration: one flat dataclass whose fields document themselves (CleanRL style).

Presets live in `configs/ppo/*.yaml` (values only); `key=value` overrides go on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class PPOConfig:
    # --- environment
    env_id: str = "CartPoleNoVel-v1"  # any gymnasium id or MODULE:ID; importing `envs` registers the POMDP ids
    # modules imported before the env is made (they register its id): `--env-package`, kept for evaluate/load
    env_packages: list[str] = field(default_factory=list)
    num_envs: int = 8  # parallel envs in the vector env
    vectorization: Literal["sync", "async"] = (
        "sync"  # gymnasium SyncVectorEnv / AsyncVectorEnv (subprocesses)
    )
    seed: int = 1
    # --- budget and rollouts
    total_steps: int = 200_000  # env steps over all envs
    num_steps: int = 128  # rollout length T per env per iteration (one training sequence per env)
    # --- model
    backbone: str = "mingru"  # mingru, minlstm, lstm, gru, mamba, transformer, or mlp (no-memory control)
    hidden_dim: int = 64
    num_layers: int = 1
    shared_backbone: bool = True  # one backbone for actor and critic, or one each
    head_hidden: int = 64  # width of the one hidden layer of the actor and critic heads (0: linear heads)
    backbone_options: dict = field(default_factory=dict)  # the backbone's own keyword arguments
    log_std_init: float = 0.0  # Gaussian policies only
    # --- optimization
    learning_rate: float = 1e-3
    anneal_lr: bool = True  # linear decay to 0 over total_steps
    num_minibatches: int = 4  # minibatches per epoch, each made of num_envs / num_minibatches whole sequences
    update_epochs: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = False  # clip the value loss around the old values (same clip_coef)
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True  # normalize advantages per minibatch
    target_kl: float | None = None  # stop the epoch loop early when approx_kl exceeds this
    # --- normalization (statistics are saved with the checkpoint)
    normalize_obs: bool = True  # running mean/std of observations, clipped to +-clip_obs
    clip_obs: float = 10.0
    normalize_reward: bool = False  # scale rewards by the running std of the discounted return (VecNormalize)
    clip_reward: float = 10.0
    # --- runtime and outputs
    device: str = "cpu"
    # torch.set_num_threads (process-wide); 0 leaves torch's default. One thread is fastest for these
    # small models on CPU: per-tick inference is latency-bound, and extra threads only add sync cost.
    num_threads: int = 1
    run_dir: str = "runs/ppo"  # TensorBoard events, checkpoints/last, config.json, results.json (one run)
    checkpoint_every: int = 10  # iterations between checkpoints (the final one is always written)
    # Periodic evaluation (SB3's EvalCallback): every eval_every env steps (0 = off), eval_episodes
    # deterministic episodes in fresh envs, logged as eval/mean_reward and eval/mean_ep_length.
    eval_every: int = 0
    eval_episodes: int = 10
    progress_bar: bool = True

    def validate(self) -> None:
        """Reject inconsistent values with a message that says what to change."""
        positive = (
            "num_envs",
            "total_steps",
            "num_steps",
            "hidden_dim",
            "num_layers",
            "num_minibatches",
            "update_epochs",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"PPO config: {name} must be positive, got {getattr(self, name)}")
        if self.num_envs % self.num_minibatches != 0:
            raise ValueError(
                f"PPO config: num_envs ({self.num_envs}) must be divisible by num_minibatches "
                f"({self.num_minibatches}): minibatches are made of whole env sequences"
            )
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(
                f"PPO config: need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma}, {self.gae_lambda}"
            )
        if self.learning_rate <= 0 or self.clip_coef <= 0:
            raise ValueError("PPO config: learning_rate and clip_coef must be positive")
        for name in ("ent_coef", "vf_coef", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"PPO config: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_grad_norm", "clip_obs", "clip_reward"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PPO config: {name} must be positive, got {getattr(self, name)}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"PPO config: target_kl must be positive (or null: no early stop), got {self.target_kl}")
        if self.head_hidden < 0 or self.checkpoint_every <= 0:
            raise ValueError("PPO config: head_hidden must be >= 0 and checkpoint_every > 0")
        if self.eval_every < 0 or self.eval_episodes <= 0:
            raise ValueError(
                f"PPO config: eval_every must be >= 0 (0 = no periodic evaluation) and eval_episodes > 0, "
                f"got {self.eval_every}, {self.eval_episodes}"
            )

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_iterations(self) -> int:
        """Whole iterations for total_steps, rounded up (as SB3 does; the trainer says when it rounds)."""
        return max(1, -(-self.total_steps // self.batch_size))
