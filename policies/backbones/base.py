"""The Backbone interface: train by scan (`forward`), act by step (`step`).

Every backbone maps `[B, T, input_dim] -> [B, T, hidden_dim]` and carries a recurrent *state*.

State convention (all backbones): a state is a tuple of tensors, each with the batch on dim 0.
The all-zeros state is the fresh state, so "reset env i" is always "zero row i of every tensor"
(`mask_state`). Generic code (PPO's per-sequence initial states, evaluation's per-env resets) relies
only on this, never on what a backbone keeps inside. The states `initial_state`/`forward`/`step`
return are `BackboneState`s: tuples that also record which backbone configuration made them, so a
state of the right shapes from another backbone is refused; a plain tuple (e.g. one generic code
rebuilt) is checked tensor by tensor.

Subclasses implement `_forward`, `_step`, `state_shapes`; the public `forward`/`step` validate
inputs first, so every backbone rejects bad shapes, dtypes (the parameters' dtype, unless autocast
is on), empty sequences, devices and foreign states the same way, with a ValueError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, ...]


class BackboneState(tuple):
    """A backbone's state (a tuple of tensors) whose class records `made_by`: the configuration that made
    it. One subclass per configuration (`state_type`), so making a state per tick costs what a tuple does."""

    __slots__ = ()
    made_by: ClassVar[tuple[Any, ...] | None] = None

    def __reduce__(self) -> Any:  # copies and pickles keep the record
        return _rebuild_state, (tuple(self), self.made_by)


_STATE_TYPES: dict[tuple[Any, ...], type[BackboneState]] = {}


def state_type(made_by: tuple[Any, ...]) -> type[BackboneState]:
    """The BackboneState subclass of states made by one backbone configuration."""
    cls = _STATE_TYPES.get(made_by)
    if cls is None:
        cls = type(f"{made_by[0]}State", (BackboneState,), {"__slots__": (), "made_by": made_by})
        _STATE_TYPES[made_by] = cls
    return cls


def _rebuild_state(tensors: tuple[Tensor, ...], made_by: tuple[Any, ...] | None) -> tuple[Tensor, ...]:
    return tensors if made_by is None else state_type(made_by)(tensors)


class Backbone(nn.Module, ABC):
    """Sequence model with a parallel `forward` and a per-tick `step` that agree."""

    name: ClassVar[str] = ""
    # Attributes derived from the parameters, reset to None whenever those may have changed and left out
    # of copies and pickles (a subclass lists its own; these are always included).
    _cache_attrs: ClassVar[tuple[str, ...]] = ("_param_device", "_param_dtype", "_state_type")

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
        # The parameters' device and floating dtype, found once (see `_device`); None = not looked up yet.
        self._param_device: torch.device | None = None
        self._param_dtype: torch.dtype | None = None
        self._state_type: type[BackboneState] | None = None  # the class of this backbone's states

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
        return self._wrap_state(
            tuple(torch.zeros((batch_size, *shape), dtype=dtype, device=device) for shape, dtype in self.state_shapes())
        )

    def forward(
        self, x: Tensor, state: State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x: [B, T, input_dim] -> (y [B, T, hidden_dim], final state).

        `episode_starts[b, t]` True forgets everything before step t of sequence b (including `state`).
        """
        self._check_x(x, 3, "[B, T, input_dim]")
        batch, length = x.shape[0], x.shape[1]
        if length == 0:
            raise ValueError(
                f"{type(self).__name__}: empty sequence: x has shape {tuple(x.shape)} (T=0); forward needs "
                "at least one step per sequence"
            )
        if state is not None:
            self.check_state(state, batch, x.device)
        if episode_starts is not None:
            episode_starts = self._check_starts(episode_starts, (batch, length), x.device)
        y, new_state = self._forward(x, state, episode_starts)
        return y, self._wrap_state(new_state)

    def step(self, x: Tensor, state: State, episode_starts: Tensor | None = None) -> tuple[Tensor, State]:
        """One tick. x: [B, input_dim], state from `initial_state`/`forward`/`step` -> (y [B, hidden_dim], state)."""
        self._check_x(x, 2, "[B, input_dim]")
        batch = x.shape[0]
        self.check_state(state, batch, x.device)
        if episode_starts is not None:
            episode_starts = self._check_starts(episode_starts, (batch,), x.device)
            state = mask_state(state, episode_starts)
        y, new_state = self._step(x, state)
        return y, self._wrap_state(new_state)

    def num_parameters(self) -> int:
        return count_parameters(self)

    # ----------------------------------------------------------------- validation
    def check_state(self, state: State, batch_size: int, device: torch.device) -> None:
        """Reject a state from another backbone, configuration or batch size with a clear message."""
        made_by = getattr(state, "made_by", None)
        if made_by is not None and type(state) is not self._state_type and made_by != self._made_by():
            raise ValueError(
                f"{self._describe()}: this state was made by another backbone, {_format_made_by(made_by)}; "
                "use this backbone's initial_state() (or the state its own forward/step returned)"
            )
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

    def _made_by(self) -> tuple[Any, ...]:
        """What a state records about the backbone that made it: class, widths, per-sample state shapes."""
        shapes = tuple(shape for shape, _ in self.state_shapes())
        return (type(self).__name__, self.input_dim, self.hidden_dim, self.num_layers, shapes)

    def _wrap_state(self, state: State) -> BackboneState:
        cls = self._state_type
        if cls is None:
            cls = self._state_type = state_type(self._made_by())
        return cls(state)

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
        param_dtype = self._param_dtype or self._dtype()  # (the attribute first: this runs every tick)
        if param_dtype is not None and x.dtype != param_dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"{name}: expected {param_dtype} input (the parameters' dtype), got {x.dtype}; convert the input "
                f"(x.to({param_dtype})) or the model (model.to({x.dtype})), or run under torch.autocast"
            )
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
        """The parameters' device. Cached: walking `parameters()` on every per-tick step costs more
        than the check itself. Moving the module (.to / .cuda / .cpu / .double ... all go through
        `_apply`) and loading weights (`load_state_dict(assign=True)` may swap tensors) forget it."""
        if self._param_device is None:
            self._param_device = next((p.device for p in self.parameters()), torch.device("cpu"))
        return self._param_device

    def _dtype(self) -> torch.dtype | None:
        """The parameters' floating dtype (None: no floating parameters), cached like `_device`."""
        if self._param_dtype is None:
            floats = (p.dtype for p in self.parameters() if p.is_floating_point())
            self._param_dtype = next(floats, None)
        return self._param_dtype

    def _forget_caches(self) -> None:
        """Drop what was derived from the parameters (`_cache_attrs`): after a move or a load."""
        for name in {*self._cache_attrs, *Backbone._cache_attrs}:
            setattr(self, name, None)

    def _apply(self, fn: Any, recurse: bool = True) -> Backbone:
        self._forget_caches()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._forget_caches()
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles start without the caches: they describe the original's tensors."""
        state = dict(super().__getstate__())
        state.update(dict.fromkeys({*self._cache_attrs, *Backbone._cache_attrs}))
        return state


def compiled_step(backbone: Any, x: Tensor, state: State, max_batch: int) -> Any:
    """The backbone's compiled-step table if this tick can run compiled, else None (the eager step).

    Compiled needs nothing from torch: autograd off, at most `max_batch` rows, fp32 input and state, no
    CPU autocast. The table (`backbone._fused_step`) is rebuilt by `backbone._build_fused_step(device)`
    when missing or stale (a parameter's storage replaced); a str there says why the step stays eager."""
    if (
        torch.is_grad_enabled()
        or x.shape[0] > max_batch
        or x.dtype != torch.float32
        or any(s.dtype != torch.float32 for s in state)
        or torch.is_autocast_enabled("cpu")
    ):
        return None
    fused = backbone._fused_step
    if fused is None or (not isinstance(fused, str) and not fused.current()):
        fused = backbone._fused_step = backbone._build_fused_step(x.device)
    return None if isinstance(fused, str) else fused


def _format_made_by(made_by: tuple[Any, ...]) -> str:
    try:
        cls, input_dim, hidden_dim, num_layers, shapes = made_by
    except (TypeError, ValueError):
        return repr(made_by)
    return f"{cls}(input_dim={input_dim}, hidden_dim={hidden_dim}, num_layers={num_layers}, state shapes {list(shapes)})"


def mask_state(state: State, episode_starts: Tensor) -> State:
    """Zero the state of every batch row whose episode starts now. episode_starts: [B] bool.

    One op per state tensor (it runs at every tick): where with a Python 0 keeps each tensor's dtype
    and measured faster on CPU than masked_fill (~3.9 vs ~4.5 us) or a multiply by the cast mask (~4.9);
    it also gives exact zeros where a state holds inf or NaN, which multiplying by 0 would not.
    """
    return tuple(torch.where(episode_starts.view(-1, *([1] * (s.ndim - 1))), 0, s) for s in state)


# ----------------------------------------------------------------- per-tick module calls
# At batch 1..10 a per-tick step is dominated by eager overhead, not arithmetic: Module.__call__
# (hook and tracing checks, ~5 us), attribute lookups (a parameter or submodule is reached through
# nn.Module.__getattr__ only after the normal lookup fails, ~0.7 us each), identity dropouts. These
# run the very functional op the module's own forward runs, on the module's own parameters (same
# math, same results, same state_dict); the one difference is that module hooks are not called.


def weight_and_bias(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """module.weight, module.bias (None if absent), read from the parameter dict when they live there."""
    params = module._parameters
    if "weight" in params:
        return params["weight"], params.get("bias")
    return module.weight, getattr(module, "bias", None)  # e.g. a parametrized weight (a property)


def run_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """layer(x): [..., in_features] -> [..., out_features]."""
    return F.linear(x, *weight_and_bias(layer))


def run_layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """norm(x): [..., *normalized_shape] -> same shape."""
    return F.layer_norm(x, norm.normalized_shape, *weight_and_bias(norm), norm.eps)


def run_dropout(drop: nn.Dropout, x: Tensor) -> Tensor:
    """drop(x), skipped outright where it is the identity (eval mode, or p == 0: no RNG draw either)."""
    if drop.training and drop.p > 0:
        if isinstance(drop, MaskDropout):
            return mask_dropout(x, drop.p)
        return F.dropout(x, drop.p, True, drop.inplace)
    return x


# ----------------------------------------------------------------- dropout from uniform draws
# On CPU, F.dropout draws its mask with `bernoulli_` (~3.4 ms on [64, 60, 128] at one thread), about
# twice what `rand_like` costs for the same tensor (~1.9 ms); with 10 dropout sites per DT training
# step that was ~10% of the step. Same distribution (inverted dropout: keep with probability 1 - p,
# scale kept values by 1 / (1 - p)), another RNG stream, still seeded by torch.manual_seed.


class _MaskDropout(torch.autograd.Function):
    """x * mask, mask = (u >= p) / (1 - p) with u ~ U[0, 1); backward multiplies by the same mask."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, p: float) -> Tensor:
        # float32 draws whatever x's dtype: bfloat16's [0, 1) grid is too coarse for a keep probability.
        mask = torch.rand(x.shape, device=x.device).ge_(p).mul_(1.0 / (1.0 - p))  # in place: no temporaries
        if mask.dtype != x.dtype:
            mask = mask.to(x.dtype)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def mask_dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode inverted dropout of x with drop probability p in [0, 1), from uniform draws."""
    return _MaskDropout.apply(x, p)


class MaskDropout(nn.Dropout):
    """nn.Dropout that draws its mask as `mask_dropout` does (faster on CPU; another RNG stream).
    Eval mode and p == 0 are the identity; `inplace` is ignored (the mask is saved for backward anyway)."""

    def forward(self, x: Tensor) -> Tensor:
        return mask_dropout(x, self.p) if self.training and self.p > 0 else x


def run_embedding(embedding: nn.Embedding, indices: Tensor) -> Tensor:
    """embedding(indices): [...] int -> [..., embedding_dim]."""
    e = embedding
    weight, _ = weight_and_bias(e)
    return F.embedding(
        indices, weight, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse
    )


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters: needed for parameter-matched comparisons."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
