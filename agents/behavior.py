"""What `recurrl collect --policy` names, as something envs.record can build: a policy name (random,
scripted, a zoo algorithm), an SB3 model zip, or a recurrl PPO checkpoint.

The checkpoint adapter lives here, not in envs/, because loading a checkpoint is the agents' job
(imports point scripts -> agents -> envs). It records `recurrl.load(path).predict` through
envs.sb3_models.PredictPolicy: the recurrent state is carried per env and reset at episode starts.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import gymnasium as gym

from recurrl.envs.behavior import ALGOS
from recurrl.envs.record import PolicyFactory
from recurrl.envs.sb3_models import PredictPolicy, sb3_policy_factory

POLICY_NAMES = ("random", "scripted", *ALGOS)


def checkpoint_policy(
    path: str | Path, env_id: str, *, num_envs: int, noise: float = 0.0, seed: int | None = None
) -> PredictPolicy:
    """The recurrl PPO checkpoint (or run directory) at `path` acting on `env_id` (spaces checked)."""
    from recurrl.agents.agent import load
    from recurrl.policies.actor_critic import SpaceSpec

    agent = load(path)
    if agent.kind != "ppo":  # a Decision agent conditions on rewards, which PolicyFn is not given
        raise ValueError(f"{path} is a Decision-agent checkpoint; collect records PPO checkpoints")
    env = gym.make(env_id)
    spec = SpaceSpec.from_spaces(env.observation_space, env.action_space)
    action_space = env.action_space
    env.close()
    if spec != agent.spec:
        raise ValueError(f"{path} was trained on spaces {agent.spec}, but {env_id} has {spec}")
    return PredictPolicy(agent, action_space, f"recurrl:{path}", noise=noise, seed=seed)


def policy_source(
    policy: str, algo: str | None = None, vecnormalize: str | None = None
) -> tuple[str | PolicyFactory, str]:
    """`--policy` -> (what envs.record.make_policy takes, a short name for the dataset id)."""
    path = Path(policy)
    is_name = policy in POLICY_NAMES and not path.exists()
    if (algo or vecnormalize) and (is_name or path.is_dir()):
        raise ValueError(
            "--algo and --vecnormalize are for --policy PATH/model.zip (a Stable-Baselines3 model)"
        )
    if is_name:
        return policy, policy
    if path.is_file():
        return sb3_policy_factory(path, algo, vecnormalize), _id_part(path.stem)
    if path.is_dir():
        from recurrl.agents.agent import checkpoint_kind, checkpoint_path

        checkpoint = checkpoint_path(path)
        if checkpoint_kind(checkpoint) != "ppo":  # checked before any worker starts
            raise ValueError(f"{checkpoint} is a Decision-agent checkpoint; collect records PPO checkpoints")
        run = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else checkpoint.name
        return functools.partial(checkpoint_policy, str(checkpoint)), _id_part(f"ppo-{run}")
    if policy.endswith(".zip") or "/" in policy:
        raise FileNotFoundError(f"--policy {policy!r}: no such file or directory")
    raise ValueError(
        f"unknown --policy {policy!r}: give one of {', '.join(POLICY_NAMES)}, an SB3 model zip or a recurrl "
        "PPO checkpoint (or run directory)"
    )


def _id_part(text: str) -> str:
    """A name usable inside a Minari dataset id (letters, digits, '_', '.', '-')."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-").lower() or "policy"
