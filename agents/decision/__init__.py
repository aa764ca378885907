"""The offline Decision agent: DT-style training on any backbone, stateful evaluation."""

from .config import DecisionConfig, EvalConfig, ModelConfig

__all__ = ["DecisionConfig", "EvalConfig", "ModelConfig"]
