"""Backbones by name. Each entry names the module and class, imported on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import Backbone, count_parameters

# name -> "module:Class" (relative to this package). Lazy, so `import policies` stays light.
BACKBONES: dict[str, str] = {
    "mingru": "mingru:MinGRU",
    "minlstm": "minlstm:MinLSTM",
    "lstm": "rnn:LSTMBackbone",
    "gru": "rnn:GRUBackbone",
    "mamba": "mamba:MambaBackbone",
    "transformer": "transformer:TransformerBackbone",
}


def backbone_class(name: str) -> type[Backbone]:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
    module_name, class_name = BACKBONES[name].split(":")
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, class_name)


def make_backbone(
    name: str, input_dim: int, hidden_dim: int, num_layers: int = 1, **options: Any
) -> Backbone:
    """Build a backbone by name. Options are the backbone's own keyword arguments (dropout, ...)."""
    cls = backbone_class(name)
    try:
        return cls(input_dim, hidden_dim, num_layers, **options)
    except TypeError as error:
        raise ValueError(f"backbone {name!r}: bad options {sorted(options)}: {error}") from error


def hidden_dim_for_budget(
    name: str, input_dim: int, param_budget: int, num_layers: int = 1, multiple_of: int = 8, **options: Any
) -> int:
    """Largest hidden_dim (a multiple of `multiple_of`) whose backbone has <= param_budget parameters."""

    def params(width: int) -> int:
        return count_parameters(make_backbone(name, input_dim, width, num_layers, **options))

    return largest_width(params, param_budget, multiple_of, what=f"backbone {name!r}")


def largest_width(params: Callable[[int], int], param_budget: int, multiple_of: int = 8, what: str = "model") -> int:
    """Largest width (a multiple of `multiple_of`) with params(width) <= param_budget.

    Parameter counts grow monotonically with width, so a binary search over widths suffices.
    """
    low, high = 1, 1
    while params(high * multiple_of) <= param_budget:
        low, high = high, high * 2
        if high > 1 << 14:
            break
    if params(low * multiple_of) > param_budget:
        raise ValueError(
            f"{what}: even width {multiple_of} has {params(multiple_of)} parameters, over the budget of {param_budget}"
        )
    while high - low > 1:
        mid = (low + high) // 2
        if params(mid * multiple_of) <= param_budget:
            low = mid
        else:
            high = mid
    return low * multiple_of
