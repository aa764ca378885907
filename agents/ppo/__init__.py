"""Recurrent PPO (online): rollouts by `policy.step`, updates by `policy.forward` over whole sequences."""

from recurrl.agents.ppo.config import PPOConfig

__all__ = ["PPOConfig"]
