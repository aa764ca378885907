"""Causal Transformer baseline: the GPT-style pre-norm block stack of the Decision Transformer.

Input projection to `hidden_dim` -> `num_layers` blocks (LayerNorm -> causal self-attention via
`F.scaled_dot_product_attention` -> residual; LayerNorm -> GELU MLP 4x -> residual) -> final LayerNorm.

Sliding-window semantics, so that `forward` and a loop of `step` agree and a tick's cost is bounded:
every token attends to itself and at most the previous `max_context - 1` tokens *of the same episode*
(`episode_starts` block attention across the boundary), including tokens carried in `state`.
With the DT defaults (max_context=60 tokens = 20 timesteps x 3 tokens) a window of 60 tokens is what
DT sees at evaluation time; training on segments of <= 60 tokens is then exactly DT's training.

As in any sliding-window Transformer (Longformer, Mistral), the window is per layer: layer l's
cached keys were computed from what layer l-1 saw, so a stack of L layers can carry information from
up to L * (max_context - 1) tokens back (never across an episode start). This differs from DT's own
evaluation, which re-runs the last K timesteps from scratch at every tick (cost ~K tokens x L layers
per tick); training on segments of <= max_context tokens from a fresh state is identical either way.

`step` is a KV cache: state `(keys [B, L, C, H], values [B, L, C, H], count [B] int64)` with
C = max_context - 1, right-aligned (newest token in the last slot); `count` says how many trailing
slots hold tokens of the current episode. Empty slots are zero, so zeros = fresh, as everywhere.
`forward` returns the same cache, so a rollout can continue a sequence by `step` or by `forward`.

Positions: `positions="none"` (default) adds no positional information, as in DT, whose timestep
embedding is added outside the backbone. `positions="rope"` rotates queries and keys (RoPE) by their
place inside the window; scores then depend only on the distance between tokens, so the cache can
hold un-rotated keys and no position counter is needed.

`forward` processes queries in chunks of `max_context` against windows of 2*max_context-1 keys, so
memory grows linearly with T (not T^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, MaskDropout, State, mask_dropout


class _Block(nn.Module):
    """Pre-norm Transformer block; attention is done by the caller (it depends on forward vs step)."""

    def __init__(self, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.proj = nn.Linear(hidden_dim, hidden_dim)
        self.ln_2 = nn.LayerNorm(hidden_dim)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, 4 * hidden_dim),
            nn.GELU(),
            nn.Linear(4 * hidden_dim, hidden_dim),
            MaskDropout(dropout),
        )
        self.resid_dropout = MaskDropout(dropout)


def _rope_tables(
    length: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos, sin [length, head_dim / 2] for positions 0..length-1 (computed in float64, then cast)."""
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float64)[:, None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on the last dim of x [..., P, d] with tables [P, d/2] (rotate-half convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class TransformerBackbone(Backbone):
    """Decision-Transformer-style causal Transformer with a sliding window and a KV-cache `step`.

    Options: n_heads (1, as DT), max_context (60 tokens), dropout (0.0), positions ("none" | "rope").
    """

    name = "transformer"

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_layers: int = 1,
        n_heads: int = 1,
        max_context: int = 60,
        dropout: float = 0.0,
        positions: str = "none",
    ) -> None:
        super().__init__(input_dim, hidden_dim, num_layers)
        if n_heads <= 0 or hidden_dim % n_heads != 0:
            raise ValueError(
                f"TransformerBackbone: hidden_dim={hidden_dim} must be a multiple of n_heads={n_heads}"
            )
        if max_context < 1:
            raise ValueError(f"TransformerBackbone: max_context must be >= 1 token, got {max_context}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TransformerBackbone: dropout must be in [0, 1), got {dropout}")
        if positions not in ("none", "rope"):
            raise ValueError(f"TransformerBackbone: positions must be 'none' or 'rope', got {positions!r}")
        if positions == "rope" and (hidden_dim // n_heads) % 2 != 0:
            raise ValueError(
                f"TransformerBackbone: RoPE needs an even head size, got hidden_dim/n_heads={hidden_dim // n_heads}"
            )
        self.n_heads = n_heads
        self.head_dim = hidden_dim // n_heads
        self.max_context = max_context
        self.cache_len = max_context - 1
        self.dropout = dropout
        self.positions = positions
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList([_Block(hidden_dim, dropout) for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(hidden_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 / nanoGPT: N(0, 0.02) linears, zero biases, residual projections scaled by 1/sqrt(2L).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.num_layers))

    def state_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        dtype = self.input_proj.weight.dtype
        cache = ((self.num_layers, self.cache_len, self.hidden_dim), dtype)
        return [cache, cache, ((), torch.int64)]

    # ----------------------------------------------------------------- helpers
    def _heads(self, x: Tensor) -> Tensor:
        """[B, P, H] -> [B, heads, P, d]."""
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)

    def _cache_valid(self, count: Tensor) -> Tensor:
        """count [B] -> [B, C] bool: the trailing `count` slots hold tokens of the current episode."""
        slots = torch.arange(self.cache_len, device=count.device)
        return slots >= (self.cache_len - count)[:, None]

    def _mlp_residual(self, block: _Block, h: Tensor, attn: Tensor) -> Tensor:
        h = h + block.resid_dropout(block.proj(attn))
        return h + block.mlp(block.ln_2(h))

    # ----------------------------------------------------------------- whole sequences
    def _forward(self, x: Tensor, state: State | None, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        # x: [B, T, D_in] -> y [B, T, H]; state (keys [B, L, C, H], values [B, L, C, H], count [B])
        batch, length, _ = x.shape
        if state is None and length <= self.max_context and self.positions == "none":
            return self._forward_fresh(x, episode_starts)
        if state is None:
            state = self.initial_state(batch, x.device)
        cache_k, cache_v, count = state
        if episode_starts is None:
            episode_starts = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
        window, cache_len = self.max_context, self.cache_len
        chunks = -(-length // window)
        pad = chunks * window - length

        # Episode ids along the extended sequence [cached slots | tokens | padding]: cached tokens of
        # the episode in progress are 0, empty slots -1; each episode start bumps the id; padding is -2
        # (padded queries then attend to themselves only, and real queries never see padding).
        segment = episode_starts.long().cumsum(dim=1)  # [B, T]
        cache_segment = torch.where(self._cache_valid(count), 0, -1)  # [B, C]
        pad_segment = segment.new_full((batch, pad), -2)
        query_segment = torch.cat([segment, pad_segment], dim=1).view(batch, chunks, window)
        key_segment = torch.cat([cache_segment, segment, pad_segment], dim=1)  # [B, C+Tp]
        key_segment = key_segment.unfold(1, cache_len + window, window)  # [B, n, C+W]
        # Within each chunk: query i sits at place C+i, key j at place j; allowed j in [i, C+i].
        q_place = torch.arange(window, device=x.device)[:, None] + cache_len
        k_place = torch.arange(cache_len + window, device=x.device)[None, :]
        in_window = (k_place <= q_place) & (k_place >= q_place - cache_len)  # [W, C+W]
        mask = in_window & (query_segment.unsqueeze(-1) == key_segment.unsqueeze(-2))  # [B, n, W, C+W]
        mask = mask.reshape(batch * chunks, 1, window, cache_len + window)
        # The next cache holds the last C tokens, kept only if they belong to the last token's episode.
        tail_valid = torch.cat([cache_segment, segment], dim=1)[:, length:] == segment[:, -1:]  # [B, C]
        if self.positions == "rope":
            cos, sin = _rope_tables(cache_len + window, self.head_dim, x.device, torch.float64)

        h = self.input_proj(x)  # [B, T, H]
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            q, k, v = block.qkv(block.ln_1(h)).chunk(3, dim=-1)  # [B, T, H] each
            ext_k = torch.cat([cache_k[:, i].to(k.dtype), k], dim=1)  # [B, C+T, H]
            ext_v = torch.cat([cache_v[:, i].to(v.dtype), v], dim=1)
            keep = tail_valid.unsqueeze(-1).to(ext_k.dtype)
            new_k.append((ext_k[:, length:] * keep).to(cache_k.dtype))
            new_v.append((ext_v[:, length:] * keep).to(cache_v.dtype))

            # Chunked attention: [B*n, heads, W, d] queries against [B*n, heads, C+W, d] key windows.
            qh = self._heads(F.pad(q, (0, 0, 0, pad)))  # [B, heads, Tp, d]
            qh = qh.unflatten(2, (chunks, window)).transpose(1, 2).flatten(0, 1)  # [B*n, heads, W, d]
            kh, vh = (
                self._heads(F.pad(t, (0, 0, 0, pad)))
                .unfold(2, cache_len + window, window)  # [B, heads, n, d, C+W]
                .permute(0, 2, 1, 4, 3)
                .flatten(0, 1)  # [B*n, heads, C+W, d]
                for t in (ext_k, ext_v)
            )
            if self.positions == "rope":
                qh = _rotate(qh, cos[cache_len:].to(qh.dtype), sin[cache_len:].to(qh.dtype))
                kh = _rotate(kh, cos.to(kh.dtype), sin.to(kh.dtype))
            attn = F.scaled_dot_product_attention(
                qh, kh, vh, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )  # [B*n, heads, W, d]
            attn = (
                attn.unflatten(0, (batch, chunks)).permute(0, 1, 3, 2, 4).reshape(batch, chunks * window, -1)
            )
            h = self._mlp_residual(block, h, attn[:, :length])
        new_count = tail_valid.sum(dim=1)
        return self.ln_f(h), (torch.stack(new_k, dim=1), torch.stack(new_v, dim=1), new_count)

    def _forward_fresh(self, x: Tensor, episode_starts: Tensor | None) -> tuple[Tensor, State]:
        """`_forward` from a fresh state on at most `max_context` tokens (every training segment of DT):
        plain causal attention over the T tokens, no empty cache slots or window chunks to attend past.
        The result equals the general path's; it only skips the keys that path masks out."""
        # x: [B, T, D_in] -> y [B, T, H]; state (keys [B, L, C, H], values [B, L, C, H], count [B])
        batch, length, _ = x.shape
        mask, segment = None, None
        if episode_starts is not None and bool(episode_starts[:, 1:].any()):
            segment = episode_starts.long().cumsum(dim=1)  # [B, T]: attention stays inside an episode
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            mask = (causal & (segment.unsqueeze(-1) == segment.unsqueeze(-2))).unsqueeze(1)  # [B, 1, T, T]
        # The next cache holds the last C tokens, right-aligned, kept if in the last token's episode.
        tail = min(length, self.cache_len)
        keep = None if segment is None else (segment[:, length - tail :] == segment[:, -1:]).unsqueeze(-1)
        h = self.input_proj(x)  # [B, T, H]
        # With attention dropout, SDPA on CPU takes its math path (safe softmax, a bernoulli mask, checks for
        # all-masked rows), which measured slower than doing those steps here; without dropout SDPA is faster.
        bias = self._causal_bias(mask, length, h) if self.training and self.dropout > 0 else None
        new_k, new_v = [], []
        for block in self.blocks:
            q, k, v = block.qkv(block.ln_1(h)).chunk(3, dim=-1)  # [B, T, H] each
            new_k.append(k[:, length - tail :])  # views; the cache is assembled once, after the loop
            new_v.append(v[:, length - tail :])
            if bias is not None:
                attn = self._dropout_attention(self._heads(q), self._heads(k), self._heads(v), bias)
            else:
                attn = F.scaled_dot_product_attention(
                    self._heads(q), self._heads(k), self._heads(v), attn_mask=mask, is_causal=mask is None
                )  # [B, heads, T, d]
            h = self._mlp_residual(block, h, attn.transpose(1, 2).reshape(h.shape))
        if keep is None:
            count = torch.full((batch,), tail, dtype=torch.long, device=x.device)
        else:
            count = keep.reshape(batch, tail).sum(dim=1)
        dtype = self.input_proj.weight.dtype
        cache_k, cache_v = (self._fresh_cache(tails, keep, dtype) for tails in (new_k, new_v))
        return self.ln_f(h), (cache_k, cache_v, count)

    def _fresh_cache(self, tails: list[Tensor], keep: Tensor | None, dtype: torch.dtype) -> Tensor:
        """Per-layer last tokens [B, tail, H] -> cache [B, L, C, H], right-aligned, zero-padded on the left;
        keep [B, tail, 1] zeroes tokens of an earlier episode (None: all are kept). One stack for all layers
        and no multiply by ones: the per-layer zero-fill-and-copy measured ~1% of a training step."""
        cache = torch.stack(tails, dim=1)  # [B, L, tail, H]
        if keep is not None:
            cache = cache * keep.unsqueeze(1).to(cache.dtype)
        cache = cache.to(dtype)
        empty = self.cache_len - cache.shape[2]
        return F.pad(cache, (0, 0, empty, 0)) if empty else cache

    def _causal_bias(self, allowed: Tensor | None, length: int, like: Tensor) -> Tensor:
        """Additive attention mask: 0 where a query may attend, -inf elsewhere. allowed [B, 1, T, T] bool, or
        None for plain causal -> [B * heads, T, T] (or [T, T], broadcast over the batch), `like`'s dtype."""
        if allowed is None:
            allowed = torch.ones(length, length, dtype=torch.bool, device=like.device).tril()
        bias = torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill_(~allowed, float("-inf"))
        if bias.ndim == 2:
            return bias
        return bias.expand(-1, self.n_heads, -1, -1).flatten(0, 1)

    def _dropout_attention(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """Training attention with dropout on the weights, as SDPA computes it: softmax(q k^T / sqrt(d) + bias),
        dropped out, times v. q, k, v [B, heads, T, d]; bias from `_causal_bias` -> [B, heads, T, d].
        Every query may attend to itself, so no row is all -inf (no NaN from the softmax)."""
        batch, heads = q.shape[:2]
        q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)  # [B * heads, T, d]
        # baddbmm adds the mask and applies the scale inside the matmul: no separate passes over the scores.
        scores = torch.baddbmm(bias.to(q.dtype), q, k.transpose(1, 2), alpha=1.0 / math.sqrt(self.head_dim))
        weights = mask_dropout(torch.softmax(scores, dim=-1), self.dropout)
        return torch.bmm(weights, v).unflatten(0, (batch, heads))

    # ----------------------------------------------------------------- one tick
    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        # x: [B, D_in] -> y [B, H]; state (keys [B, L, C, H], values [B, L, C, H], count [B])
        cache_k, cache_v, count = state
        valid = torch.cat(
            [self._cache_valid(count), count.new_ones(count.shape[0], 1, dtype=torch.bool)], dim=1
        )
        mask = valid[:, None, None, :]  # [B, 1, 1, C+1]
        if self.positions == "rope":
            cos, sin = _rope_tables(self.cache_len + 1, self.head_dim, x.device, torch.float64)
        h = self.input_proj(x)  # [B, H]
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            q, k, v = block.qkv(block.ln_1(h)).chunk(3, dim=-1)  # [B, H] each
            keys = torch.cat([cache_k[:, i].to(k.dtype), k.unsqueeze(1)], dim=1)  # [B, C+1, H]
            values = torch.cat([cache_v[:, i].to(v.dtype), v.unsqueeze(1)], dim=1)
            qh, kh, vh = self._heads(q.unsqueeze(1)), self._heads(keys), self._heads(values)
            if self.positions == "rope":
                qh = _rotate(qh, cos[-1:].to(qh.dtype), sin[-1:].to(qh.dtype))
                kh = _rotate(kh, cos.to(kh.dtype), sin.to(kh.dtype))
            attn = F.scaled_dot_product_attention(
                qh, kh, vh, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )  # [B, heads, 1, d]
            h = self._mlp_residual(block, h, attn.transpose(1, 2).reshape(h.shape))
            keep = valid[:, 1:].unsqueeze(-1).to(keys.dtype)  # drop the oldest slot; empty slots stay zero
            new_k.append((keys[:, 1:] * keep).to(cache_k.dtype))
            new_v.append((values[:, 1:] * keep).to(cache_v.dtype))
        new_count = torch.clamp(count + 1, max=self.cache_len)
        return self.ln_f(h), (torch.stack(new_k, dim=1), torch.stack(new_v, dim=1), new_count)
