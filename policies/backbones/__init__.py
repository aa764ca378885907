"""Sequence backbones behind one interface: see base.Backbone."""

from .base import Backbone, State, count_parameters, mask_state
from .registry import BACKBONES, backbone_class, hidden_dim_for_budget, make_backbone

__all__ = [
    "BACKBONES",
    "Backbone",
    "State",
    "backbone_class",
    "count_parameters",
    "hidden_dim_for_budget",
    "make_backbone",
    "mask_state",
]
