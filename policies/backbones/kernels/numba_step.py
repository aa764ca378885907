"""The whole minGRU / minLSTM backbone tick as one compiled call (numba): the acting path on CPU.

At the batch sizes agents act with (1 to a few dozen envs) an eager `step` of a 3-layer backbone is
~40 small torch ops, each costing microseconds of dispatch whatever its size; the arithmetic is the
small part. Here the input projection, every residual block (LayerNorm, the cell's projection, the
gated update, the output projection, the MLP) and the final LayerNorm run in one kernel call.

Same math as the eager `MinRNNBackbone._step` and tested against it; the sums run in another order
than torch's matmuls, so outputs agree to float rounding, not bit for bit. The backbone uses it only
where nothing needs torch: CPU, fp32, no autograd, no active dropout, no autocast (see
`MinRNNBackbone._step`).

The kernel reads the parameters in place, through a table of their storage addresses
(`StepWeights`), so an optimizer step or `load_state_dict` (both write into the same storage) is seen
at the next tick. The table is rebuilt when a parameter's storage changes (compared on every call,
~2 us) and when the module is moved or loaded with `assign=True` (the backbone drops it in `_apply` /
`_load_from_state_dict`); it holds the parameters themselves, so their storage outlives every call.
An address table rather than a tuple of arrays: the kernel's signature is then the same for every
architecture, so it compiles once (~5 s, then cached on disk), not once per number of layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from torch import Tensor, nn

# Compiled as numpy would run it: a division by zero or a NaN gives inf/NaN (as the eager torch step
# does), never a ZeroDivisionError (numba's default, Python's error model). The fast-math flags leave
# out nnan/ninf: with them LLVM may assume no NaN/inf exist and turn a NaN input into anything.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# The layout tables hold indices into the table of parameter addresses (-1: absent).
# Per block: one row of SLOTS entries.
NORM1_W, NORM1_B, PROJ_W, PROJ_B, OUT_W, NORM2_W, NORM2_B, UP_W, UP_B, DOWN_W, DOWN_B = range(11)
SLOTS = 11
# Around the blocks: input projection and final LayerNorm.
IN_W, IN_B, NORM_W, NORM_B = range(4)
GRU, LSTM = 0, 1

Entry = tuple[nn.Module | None, str]  # (module, parameter name): one parameter a kernel reads


@intrinsic
def _pointer(typingctx, address):  # type: ignore[no-untyped-def]
    """int64 address -> void*, for `carray` to view a tensor's storage in place."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@njit(cache=True, error_model="numpy")
def _param(ws: np.ndarray, i: int, shape: tuple) -> np.ndarray:
    """Parameter i (fp32, contiguous) as an array of `shape`, read in place from its address ws[i]."""
    return carray(_pointer(ws[i]), shape, np.float32)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _linear(ws: np.ndarray, w_i: int, b_i: int, x: np.ndarray, out_dim: int) -> np.ndarray:
    """x [B, in] -> x W^T + b [B, out]; W = parameter w_i [out, in], b = parameter b_i (-1: none)."""
    batch, in_dim = x.shape
    # 2-D indexing, not w[o * in_dim + i]: with computed flat indices numba keeps its negative-index
    # wraparound check in the inner loop, which stops LLVM vectorizing it (7-10x slower).
    weight = _param(ws, w_i, (out_dim, in_dim))
    y = np.empty((batch, out_dim), dtype=np.float32)
    blocked = out_dim - out_dim % 4
    for b in range(batch):
        # Four output rows at a time share each load of x[b, i] (~1.3x faster than one at a time).
        for o in range(0, blocked, 4):
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(in_dim):
                xi = x[b, i]
                a0 += weight[o, i] * xi
                a1 += weight[o + 1, i] * xi
                a2 += weight[o + 2, i] * xi
                a3 += weight[o + 3, i] * xi
            y[b, o], y[b, o + 1], y[b, o + 2], y[b, o + 3] = a0, a1, a2, a3
        for o in range(blocked, out_dim):
            acc = np.float32(0.0)
            for i in range(in_dim):
                acc += weight[o, i] * x[b, i]
            y[b, o] = acc
    if b_i >= 0:
        bias = _param(ws, b_i, (out_dim,))
        for b in range(batch):
            for o in range(out_dim):
                y[b, o] += bias[o]
    return y


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _layer_norm(ws: np.ndarray, w_i: int, b_i: int, x: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last dim of x [B, D] with parameters w_i (weight) and b_i (bias)."""
    batch, dim = x.shape
    gain, shift = _param(ws, w_i, (dim,)), _param(ws, b_i, (dim,))
    y = np.empty_like(x)
    for b in range(batch):
        mean = 0.0
        for i in range(dim):
            mean += x[b, i]
        mean /= dim
        var = 0.0
        for i in range(dim):
            d = x[b, i] - mean
            var += d * d
        inv = 1.0 / math.sqrt(var / dim + eps)
        for i in range(dim):
            y[b, i] = (x[b, i] - mean) * inv * gain[i] + shift[i]
    return y


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _log_sigmoid(v: float) -> float:
    # log(sigmoid(v)) = min(v, 0) - log1p(exp(-|v|)): no overflow at either end
    return min(v, 0.0) - math.log1p(math.exp(-abs(v)))


@njit(cache=True, error_model="numpy")
def _tick(
    ws: np.ndarray,
    layers: np.ndarray,
    top: np.ndarray,
    dims: np.ndarray,
    eps: float,
    x: np.ndarray,
    h: np.ndarray,
    h_new: np.ndarray,
) -> np.ndarray:
    """x [B, D], h [B, L, I] (already reset where episodes start) -> y [B, H]; writes h_new [B, L, I].

    ws: the parameters' addresses (int64); layers [L, SLOTS] and top [4] index into it; dims = [H, I, M,
    kind, gelu_tanh]: width, cell width, MLP width (0: none), GRU/LSTM, GELU's tanh approximation."""
    batch, num_layers = h.shape[0], h.shape[1]
    hidden, inner, mlp, kind, gelu_tanh = dims[0], dims[1], dims[2], dims[3], dims[4]
    u = _linear(ws, top[IN_W], top[IN_B], x, hidden)
    for layer in range(num_layers):
        slot = layers[layer]
        pre = _linear(
            ws, slot[PROJ_W], slot[PROJ_B], _layer_norm(ws, slot[NORM1_W], slot[NORM1_B], u, eps),
            (2 if kind == GRU else 3) * inner,
        )  # fmt: skip
        cell = np.empty((batch, inner), dtype=np.float32)
        for b in range(batch):
            for j in range(inner):
                if kind == GRU:
                    z = _sigmoid(pre[b, j])
                    p = pre[b, inner + j]
                else:  # minLSTM: z = i / (f + i) = sigmoid(log i - log f)
                    z = _sigmoid(_log_sigmoid(pre[b, inner + j]) - _log_sigmoid(pre[b, j]))
                    p = pre[b, 2 * inner + j]
                candidate = max(p + 0.5, _sigmoid(p))  # g(p), see scan.g_activation
                prev = h[b, layer, j]
                cell[b, j] = prev + z * (candidate - prev)
                h_new[b, layer, j] = cell[b, j]
        u = u + (_linear(ws, slot[OUT_W], -1, cell, hidden) if slot[OUT_W] >= 0 else cell)
        if mlp > 0:
            a = _linear(
                ws, slot[UP_W], slot[UP_B], _layer_norm(ws, slot[NORM2_W], slot[NORM2_B], u, eps), mlp
            )
            for b in range(batch):
                for j in range(mlp):
                    v = a[b, j]
                    if gelu_tanh:
                        a[b, j] = 0.5 * v * (1.0 + math.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
                    else:
                        a[b, j] = 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))
            u = u + _linear(ws, slot[DOWN_W], slot[DOWN_B], a, hidden)
    return _layer_norm(ws, top[NORM_W], top[NORM_B], u, eps)


def unsupported_reason(backbone: nn.Module) -> str | None:
    """Why this MinRNNBackbone's step cannot run fused (None: it can). Every one the library builds
    can; a hand-edited one (non-fp32 weights, a LayerNorm without affine weights, a Linear without
    bias, mixed LayerNorm eps) keeps the eager step."""
    norms = [backbone.norm] + [n for b in backbone.blocks for n in (b.norm1, b.norm2) if n is not None]
    linears = [backbone.input_proj] + [b.cell.proj for b in backbone.blocks]
    linears += [m[i] for b in backbone.blocks if (m := b.mlp) is not None for i in (0, 2)]
    if any(p.dtype != torch.float32 or not p.is_contiguous() for p in backbone.parameters()):
        return "parameters that are not contiguous fp32"
    if any(n.weight is None or n.bias is None for n in norms) or any(la.bias is None for la in linears):
        return "a LayerNorm without affine parameters or a Linear without bias"
    if len({n.eps for n in norms}) != 1:
        return "LayerNorms with different eps"
    if len({b.mlp is None for b in backbone.blocks}) != 1:
        return "blocks with and without an MLP"
    return None


class ParamTable:
    """The storage addresses of a module's parameters, for a kernel to read them in place (see the module
    docstring), and whether they are still the parameters' storage. Subclasses add every parameter with
    `index`, then call `seal`."""

    def __init__(self) -> None:
        self.params: list[Tensor] = []  # kept alive: the kernel reads their storage

    def index(self, module: nn.Module | None, name: str) -> int:
        """Add the module's parameter `name` -> its index in the table (-1: no such parameter)."""
        tensor = None if module is None else module._parameters.get(name)
        if tensor is None:
            return -1
        self.params.append(tensor)
        return len(self.params) - 1

    def seal(self) -> None:
        """Record the addresses, once every parameter is in."""
        self.storage = self._storage()
        self.addresses = np.array(self.storage, dtype=np.int64)

    def pack(
        self, top: list[Entry], layers: list[list[Entry]], slots: int, dims: list[int], eps: float
    ) -> None:
        """What a backbone kernel reads, for a kernel called as `kernel(addresses, layers, top, dims, eps,
        x, *state)` (see `run`): `top` (the parameters around the blocks) and each block's row of `slots`
        entries become indices into the address table (-1: absent); then the addresses are recorded."""
        self.top = np.array([self.index(module, name) for module, name in top], dtype=np.int64)
        self.layers = np.full((len(layers), slots), -1, dtype=np.int64)
        for i, row in enumerate(layers):
            self.layers[i] = [self.index(module, name) for module, name in row]
        self.dims = np.array(dims, dtype=np.int64)
        self.eps = float(eps)
        self.seal()

    def run(self, kernel: Callable[..., np.ndarray], x: Tensor, *state: np.ndarray) -> Tensor:
        """One compiled tick of a packed backbone: x [B, input_dim] fp32 CPU -> y [B, hidden_dim]."""
        x_np = x.detach().contiguous().numpy()
        return torch.from_numpy(
            kernel(self.addresses, self.layers, self.top, self.dims, self.eps, x_np, *state)
        )

    def _storage(self) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in self.params)

    def current(self) -> bool:
        """The addresses are still the parameters' storage (False after e.g. `param.data = other`)."""
        return self._storage() == self.storage


class StepWeights(ParamTable):
    """What the kernel needs from one MinRNNBackbone: its parameters' addresses and the tables saying
    which address is which parameter."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        blocks = list(backbone.blocks)
        layers = []
        for block in blocks:
            up, down = (None, None) if block.mlp is None else (block.mlp[0], block.mlp[2])
            out = block.out if isinstance(block.out, nn.Linear) else None
            layers.append(
                [(block.norm1, "weight"), (block.norm1, "bias"), (block.cell.proj, "weight"),
                 (block.cell.proj, "bias"), (out, "weight"), (block.norm2, "weight"), (block.norm2, "bias"),
                 (up, "weight"), (up, "bias"), (down, "weight"), (down, "bias")]
            )  # fmt: skip
        top = [(backbone.input_proj, "weight"), (backbone.input_proj, "bias"),
               (backbone.norm, "weight"), (backbone.norm, "bias")]  # fmt: skip
        mlp = blocks[0].mlp
        dims = [
            backbone.hidden_dim,
            backbone.inner_dim,
            0 if mlp is None else mlp[0].out_features,
            LSTM if backbone.name == "minlstm" else GRU,
            int(mlp is not None and mlp[1].approximate == "tanh"),
        ]
        self.pack(top, layers, SLOTS, dims, backbone.norm.eps)

    def step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One compiled tick. x [B, input_dim] fp32 CPU, h [B, L, I] fp32, already reset where episodes
        start -> (y [B, hidden_dim], h_new [B, L, I])."""
        h_new = torch.empty_like(h, memory_format=torch.contiguous_format)
        return self.run(_tick, x, h.detach().contiguous().numpy(), h_new.numpy()), h_new
