"""recurrl: reinforcement-learning agents with recurrent policies (minGRU / minLSTM trained by scan,
run by step), offline Decision agents and recurrent PPO, compared against LSTM, GRU, Mamba and
Transformer backbones.

The repository's top-level folders install as this package's subpackages: `recurrl.agents`,
`recurrl.policies`, `recurrl.envs`, `recurrl.configs`, `recurrl.scripts` (pyproject's package-dir).
The public API below is imported lazily so that `import recurrl` (and the CLI's `--help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "make_backbone": "recurrl.policies.backbones",
    "hidden_dim_for_budget": "recurrl.policies.backbones",
    "BACKBONES": "recurrl.policies.backbones",
    "Backbone": "recurrl.policies.backbones",
    "DecisionModel": "recurrl.policies.decision",
    "DecisionModelConfig": "recurrl.policies.decision",
    "load_dataset": "recurrl.envs.datasets",
    "OfflineDataset": "recurrl.envs.episodes",
    "DecisionConfig": "recurrl.agents.decision.config",
    "DecisionTrainer": "recurrl.agents.decision.trainer",
    "PPOConfig": "recurrl.agents.ppo.config",
    "PPOTrainer": "recurrl.agents.ppo.ppo",
    "train_ppo": "recurrl.agents.ppo.ppo",
    "load_config": "recurrl.agents.config",
    "load": "recurrl.agents.agent",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'recurrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
