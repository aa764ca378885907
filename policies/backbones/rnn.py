"""LSTM and GRU baselines on `torch.nn.LSTM` / `torch.nn.GRU` (cuDNN on a GPU).

Episode resets inside a sequence are the hard part for fused RNNs: one call runs a whole sequence
from one initial state. sb3-contrib falls back to a per-step Python loop whenever a reset falls
inside a sequence. Here, by cost:

- No reset after t=0 (a reset at t=0 only zeroes the initial state): one plain nn call.
- On CUDA: every row is cut at its episode starts and all segments of all rows go through the RNN
  in **one** call as a `PackedSequence` (a segment starts from zeros, except a row's first one,
  which starts from the carried state). cuDNN runs packed sequences natively, forward and backward.
- On CPU: PyTorch's packed RNN backward is quadratic in T there (it slices the packed data per step
  and each slice's backward allocates a full-size gradient: measured 45x slower than the plain call
  at B=64, T=256). So the sequence is split at the union of all rows' reset times and each chunk is
  one plain call, with rows that reset at the chunk's first step zeroed. Calls = distinct reset
  times + 1, at worst a per-step loop of T=1 calls.

Both reset paths are exact; tests check both on CPU against the step loop and the plain call.

State (batch first, zeros = fresh): LSTM `(h [B, L, H], c [B, L, H])`, GRU `(h [B, L, H],)`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .base import Backbone, State, mask_state


@functools.cache
def _cpu_bf16_rnn_supported() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _TorchRNNBackbone(Backbone):
    """Shared code of the LSTM and GRU backbones; subclasses pick the nn module and the state size."""

    rnn_class: type[nn.RNNBase]
    num_state_tensors: int

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(input_dim, hidden_dim, num_layers)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        # nn.LSTM/GRU apply dropout between stacked layers only (and warn with one layer), so a shared
        # config's dropout is a no-op for a single-layer RNN rather than an error.
        between = dropout if num_layers > 1 else 0.0
        self.rnn = self.rnn_class(input_dim, hidden_dim, num_layers, batch_first=True, dropout=between)

    def state_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        dtype = next(self.parameters()).dtype
        return [((self.num_layers, self.hidden_dim), dtype)] * self.num_state_tensors

    # The nn modules keep hidden states as [L, B, H]; ours are batch first.
    def _to_hx(self, state: State, dtype: torch.dtype) -> Tensor | tuple[Tensor, Tensor]:
        hx = tuple(s.transpose(0, 1).to(dtype).contiguous() for s in state)
        return hx if self.num_state_tensors == 2 else hx[0]

    def _from_hx(self, hx: Tensor | tuple[Tensor, Tensor], dtype: torch.dtype) -> State:
        parts = hx if isinstance(hx, tuple) else (hx,)
        return tuple(p.transpose(0, 1).to(dtype) for p in parts)

    def _forward(self, x: Tensor, state: State | None, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        # x: [B, T, D], state tensors: [B, L, H], episode_starts: [B, T] -> y [B, T, H]
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        state_dtype = state[0].dtype
        if episode_starts is None or not bool(episode_starts[:, 1:].any()):
            if episode_starts is not None:
                state = mask_state(state, episode_starts[:, 0])
            y, hx = self._run_rnn(x, self._to_hx(state, self._compute_dtype(x)))
            return y, self._from_hx(hx, state_dtype)
        if x.is_cuda:
            return self._forward_packed(x, state, episode_starts)
        return self._forward_chunks(x, state, episode_starts)

    def _forward_chunks(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        """One plain nn call per stretch between reset times (of any row). x: [B, T, D] -> y [B, T, H]."""
        length = x.shape[1]
        cuts = (episode_starts[:, 1:].any(dim=0).nonzero().squeeze(1) + 1).tolist()
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
        dtype, state_dtype = self._compute_dtype(x), state[0].dtype
        outputs, begin = [], 0
        # torch.split (not slicing) so that backward is one cat, not one full-size zero tensor per chunk.
        for chunk in torch.split(x, sizes, dim=1):
            state = mask_state(state, episode_starts[:, begin])
            y, hx = self._run_rnn(chunk, self._to_hx(state, dtype))
            state = self._from_hx(hx, state_dtype)
            outputs.append(y)
            begin += chunk.shape[1]
        return torch.cat(outputs, dim=1), state

    def _forward_packed(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        """One packed nn call over every episode segment of every row. x: [B, T, D] -> y [B, T, H]."""
        batch, length, _ = x.shape
        starts = episode_starts.clone()
        starts[:, 0] = True  # every row's first segment begins at t=0 (from the carried state)
        first = starts.reshape(-1).nonzero().squeeze(1)  # [S] flat start index b*T+t, in row-major order
        row = torch.div(first, length, rounding_mode="floor")
        next_first = torch.cat([first[1:], first.new_tensor([batch * length])])
        lengths = (
            torch.minimum(next_first, (row + 1) * length) - first
        )  # a segment ends at the next start or row end
        max_len = int(lengths.max())
        offsets = torch.arange(max_len, device=x.device)
        valid = offsets < lengths[:, None]  # [S, max_len]
        index = torch.where(valid, first[:, None] + offsets, 0)
        segments = x.reshape(batch * length, -1)[index]  # [S, max_len, D]

        # Only the first segment of a row continues the carried state (unless the row resets at t=0).
        keep = (first % length == 0) & ~episode_starts[row, 0]
        seg_state = tuple(s[row] * keep.view(-1, 1, 1).to(s.dtype) for s in state)
        packed = pack_padded_sequence(segments, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, hx = self._run_rnn(packed, self._to_hx(seg_state, self._compute_dtype(x)))
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=max_len)  # [S, max_len, H]
        # Segments tile each row in order, so the valid outputs in row-major order are y itself.
        y = out[valid].reshape(batch, length, -1)
        last = starts.sum(dim=1).cumsum(dim=0) - 1  # [B] index of each row's last segment
        final = self._from_hx(hx, state[0].dtype)
        return y, tuple(s[last] for s in final)

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        # x: [B, D], state tensors: [B, L, H] -> y [B, H]; the same nn module with T=1, so weights are shared.
        y, hx = self._run_rnn(x.unsqueeze(1), self._to_hx(state, self._compute_dtype(x)))
        return y[:, 0], self._from_hx(hx, state[0].dtype)

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        # nn.LSTM/GRU want hx in the input's dtype; under autocast the parameters' dtype is what they run in.
        return next(self.parameters()).dtype if torch.is_autocast_enabled(x.device.type) else x.dtype

    def _run_rnn(self, x: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, Tensor]) -> tuple:
        """`self.rnn(x, hx)`, in float32 where CPU bf16 autocast cannot run it.

        oneDNN's bf16 LSTM needs AVX-512 (`mkldnn._is_mkldnn_bf16_supported()`): on other CPUs (seen on an
        AVX2-only EPYC) autocast's bf16 LSTM raises "could not create a primitive descriptor", so there
        the RNN leaves autocast and runs in the parameters' dtype, as it would without autocast.
        """
        if torch.is_autocast_enabled("cpu") and not _cpu_bf16_rnn_supported():
            with torch.autocast("cpu", enabled=False):
                if isinstance(x, PackedSequence):
                    x = x._replace(data=x.data.float())
                else:
                    x = x.float()
                return self.rnn(x, hx)
        return self.rnn(x, hx)


class LSTMBackbone(_TorchRNNBackbone):
    """Stacked `torch.nn.LSTM`. Options: dropout (between stacked layers; no effect with one layer)."""

    name = "lstm"
    rnn_class = nn.LSTM
    num_state_tensors = 2


class GRUBackbone(_TorchRNNBackbone):
    """Stacked `torch.nn.GRU`. Options: dropout (between stacked layers; no effect with one layer)."""

    name = "gru"
    rnn_class = nn.GRU
    num_state_tensors = 1
