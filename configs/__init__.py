"""YAML presets (values only): configs/decision/*.yaml, configs/decision/backbones/*.yaml, configs/ppo/<env>.yaml."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent


def ppo_preset(env_id: str) -> Path | None:
    """configs/ppo/<env_id>.yaml where it exists: the PPO preset `train-ppo --env ENV` starts from."""
    path = ROOT / "ppo" / f"{env_id}.yaml"
    return path if path.is_file() else None
