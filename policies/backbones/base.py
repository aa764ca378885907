"""The Backbone interface: train by scan (`forward`), act by step (`step`).

Every backbone maps `[B, T, input_dim] -> [B, T, hidden_dim]` and carries a recurrent *state*.

State convention (all backbones): a state is a tuple of tensors, each with the batch on dim 0.
The all-zeros state is the fresh state, so "reset env i" is always "zero row i of every tensor"
(`mask_state`). Generic code (PPO's per-sequence initial states, evaluation's per-env resets) relies
only on this, never on what a backbone keeps inside.

Subclasses implement `_forward`, `_step`, `state_shapes`; the public `forward`/`step` validate
inputs first, so every backbone rejects bad shapes, dtypes, devices and foreign states the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]


class Backbone(nn.Module, ABC):
    """Sequence model with a parallel `forward` and a per-tick `step` that agree."""

    name: ClassVar[str] = ""

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int = 1) -> None:
        super().__init__()
        if input_dim <= 0 or hidden_dim <= 0 or num_layers <= 0:
            raise ValueError(
                f"{type(self).__name__}: input_dim, hidden_dim and num_layers must be positive, "
                f"got input_dim={input_dim}, hidden_dim={hidden_dim}, num_layers={num_layers}"
            )
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers

    # ----------------------------------------------------------------- what subclasses provide
    @abstractmethod
    def state_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Per-sample shape and dtype of each state tensor (the batch dim is left out)."""

    @abstractmethod
    def _forward(self, x: Tensor, state: State | None, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        """x: [B, T, input_dim]; episode_starts: [B, T] bool or None -> y [B, T, hidden_dim], state."""

    @abstractmethod
    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x: [B, input_dim], state already reset where episodes start -> y [B, hidden_dim], state."""

    # ----------------------------------------------------------------- public API
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The fresh state: zeros of `state_shapes()` for `batch_size` sequences."""
        device = self._device() if device is None else torch.device(device)
        return tuple(
            torch.zeros((batch_size, *shape), dtype=dtype, device=device)
            for shape, dtype in self.state_shapes()
        )

    def forward(
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x: [B, T, input_dim] -> (y [B, T, hidden_dim], final state).

        `episode_starts[b, t]` True forgets everything before step t of sequence b (including `state`).
        """
        self._check_x(x, 3, "[B, T, input_dim]")
        batch, length = x.shape[0], x.shape[1]
        if state is not None:
            self.check_state(state, batch, x.device)
        if episode_starts is not None:
            episode_starts = self._check_starts(episode_starts, (batch, length), x.device)
        return self._forward(x, state, episode_starts)

    def step(self, x: Tensor, state: State, episode_starts: Tensor | None = None) -> tuple[Tensor, State]:
        """One tick. x: [B, input_dim], state from `initial_state`/`forward`/`step` -> (y [B, hidden_dim], state)."""
        self._check_x(x, 2, "[B, input_dim]")
        batch = x.shape[0]
        self.check_state(state, batch, x.device)
        if episode_starts is not None:
            episode_starts = self._check_starts(episode_starts, (batch,), x.device)
            state = mask_state(state, episode_starts)
        return self._step(x, state)

    def num_parameters(self) -> int:
        return count_parameters(self)

    # ----------------------------------------------------------------- validation
    def check_state(self, state: State, batch_size: int, device: torch.device) -> None:
        """Reject a state from another backbone, configuration or batch size with a clear message."""
        expected = self.state_shapes()
        if not isinstance(state, tuple) or len(state) != len(expected):
            got = f"tuple of {len(state)} tensors" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"{self._describe()}: state must be a tuple of {len(expected)} tensors shaped "
                f"{[(batch_size, *s) for s, _ in expected]}, got {got}; was it made by another backbone? "
                "Use this backbone's initial_state()."
            )
        for i, (tensor, (shape, dtype)) in enumerate(zip(state, expected, strict=True)):
            want = (batch_size, *shape)
            if not isinstance(tensor, Tensor) or tuple(tensor.shape) != want:
                got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                raise ValueError(
                    f"{self._describe()}: state[{i}] must have shape {want} (batch {batch_size}), got {got}; "
                    "a state from another backbone, configuration or batch size cannot be used."
                )
            if tensor.dtype != dtype and not (tensor.is_floating_point() and dtype.is_floating_point):
                raise ValueError(
                    f"{self._describe()}: state[{i}] must have dtype {dtype}, got {tensor.dtype}"
                )
            if tensor.device != device:
                raise ValueError(
                    f"{self._describe()}: state[{i}] is on {tensor.device} but the input is on {device}"
                )

    def _describe(self) -> str:
        """For error messages only (formatted on failure, not on every per-tick check)."""
        return f"{type(self).__name__}(name={self.name!r}, hidden_dim={self.hidden_dim}, num_layers={self.num_layers})"

    def _check_x(self, x: Tensor, ndim: int, layout: str) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: expected a tensor shaped {layout}, got {type(x).__name__}")
        if x.ndim != ndim or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"{name}: expected input shaped {layout} with input_dim={self.input_dim}, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point input shaped {layout}, got dtype {x.dtype}")
        param_device = self._device()
        if x.device != param_device:
            raise ValueError(
                f"{name}: input is on {x.device} but the parameters are on {param_device}; move one"
            )

    def _check_starts(self, starts: Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
        name = type(self).__name__
        if not isinstance(starts, Tensor) or tuple(starts.shape) != shape:
            got = tuple(starts.shape) if isinstance(starts, Tensor) else type(starts).__name__
            raise ValueError(f"{name}: episode_starts must have shape {shape} (bool), got {got}")
        if starts.device != device:
            raise ValueError(f"{name}: episode_starts is on {starts.device} but the input is on {device}")
        if starts.dtype != torch.bool:
            if starts.is_floating_point() or starts.dtype in (
                torch.int32,
                torch.int64,
                torch.uint8,
                torch.int8,
            ):
                starts = starts != 0
            else:
                raise ValueError(f"{name}: episode_starts must be bool, got {starts.dtype}")
        return starts

    def _device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")


def mask_state(state: State, episode_starts: Tensor) -> State:
    """Zero the state of every batch row whose episode starts now. episode_starts: [B] bool."""
    keep = ~episode_starts
    return tuple(s * keep.view(-1, *([1] * (s.ndim - 1))).to(s.dtype) for s in state)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters: needed for parameter-matched comparisons."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
