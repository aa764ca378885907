"""The baseline backbones (LSTM, GRU, Mamba, Transformer): scan/step agreement, resets, caches, references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mambapy.pscan import pscan

from recurrl.policies.backbones import make_backbone
from recurrl.policies.backbones.rnn import LSTMBackbone

D_IN, HIDDEN = 5, 16

# (name, options): the transformer runs with a window shorter than the test sequences, and with RoPE.
CONFIGS = [
    ("lstm", {}),
    ("gru", {}),
    ("mamba", {}),
    ("mamba", {"d_conv": 3, "d_state": 4, "expand": 1}),
    ("transformer", {}),
    ("transformer", {"max_context": 6, "n_heads": 2}),
    ("transformer", {"max_context": 5, "n_heads": 4, "positions": "rope"}),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add spin-wait overhead (50x on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in opts.items()) or 'default'}" for name, opts in CONFIGS]


def _model(name: str, num_layers: int = 2, dtype: torch.dtype = torch.float64, **options):
    torch.manual_seed(0)
    return make_backbone(name, D_IN, HIDDEN, num_layers, **options).to(dtype).eval()


def _data(batch: int, length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and episode starts with resets at t=0, mid-sequence, back to back, near the end, and none."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, D_IN, dtype=torch.float64, generator=generator)
    starts = torch.rand(batch, length, generator=generator) < 0.15
    starts[0] = False  # one row carries its state through the whole sequence
    if batch >= 3:
        starts[1, 0] = True
        starts[1, length // 2] = starts[1, length // 2 + 1] = True
        starts[2, length - 2] = True
    return x, starts


def _prefix_state(model, batch: int, seed: int = 7):
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.randn(batch, 9, D_IN, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        return model(prefix)[1]


def _assert_states_close(a, b, tol: float = 1e-10) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        assert sa.dtype == sb.dtype and sa.shape == sb.shape
        torch.testing.assert_close(sa, sb, rtol=tol, atol=tol)


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_forward_equals_step_loop(name, options):
    model = _model(name, **options)
    batch, length = 4, 23
    x, starts = _data(batch, length)
    state0 = _prefix_state(model, batch)
    assert any(bool(s.abs().sum() > 0) for s in state0), "the prefix must leave a non-trivial state"
    with torch.no_grad():
        y_seq, state_seq = model(x, state0, starts)
        state, outputs = state0, []
        for t in range(length):
            y_t, state = model.step(x[:, t], state, starts[:, t])
            outputs.append(y_t)
    torch.testing.assert_close(y_seq, torch.stack(outputs, dim=1), rtol=1e-10, atol=1e-10)
    _assert_states_close(state_seq, state)


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("cut", [1, 2, 11, 22])
def test_forward_in_two_pieces_equals_whole(name, options, cut):
    model = _model(name, **options)
    batch, length = 4, 23
    x, starts = _data(batch, length, seed=3)
    state0 = _prefix_state(model, batch)
    with torch.no_grad():
        y_whole, state_whole = model(x, state0, starts)
        y_a, state_a = model(x[:, :cut], state0, starts[:, :cut])
        y_b, state_b = model(x[:, cut:], state_a, starts[:, cut:])
    torch.testing.assert_close(torch.cat([y_a, y_b], dim=1), y_whole, rtol=1e-10, atol=1e-10)
    _assert_states_close(state_b, state_whole)


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_gradients_reach_every_parameter_and_the_initial_state(name, options):
    model = make_backbone(name, D_IN, HIDDEN, 2, **options)
    x, starts = _data(3, 14, seed=4)
    state0 = tuple(
        torch.randn_like(s, requires_grad=True) if s.is_floating_point() else torch.full_like(s, 2)
        for s in model.initial_state(3)
    )
    starts[0] = False  # row 0 keeps its initial state, so the state must get a gradient through it
    y, state = model(x.float(), state0, starts)
    loss = y.square().mean() + sum(s.float().square().mean() for s in state if s.is_floating_point())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"{name}: no gradient for {missing}"
    for s in state0:
        if s.is_floating_point():
            assert s.grad is not None and s.grad[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("path", ["_forward_packed", "_forward_chunks"])
def test_rnn_reset_paths_match_the_plain_call(name, path):
    """Both reset paths (packed: CUDA, chunks: CPU) must equal the plain nn call on each episode piece."""
    model = _model(name)
    reset_path = getattr(model, path)
    x, _ = _data(3, 12, seed=5)
    state0 = _prefix_state(model, 3)
    with torch.no_grad():
        # With no reset inside the sequence the path must reproduce the single plain call ...
        fast, fast_state = model(x, state0)
        y, state = reset_path(x, state0, torch.zeros(3, 12, dtype=torch.bool))
        torch.testing.assert_close(y, fast, rtol=1e-12, atol=1e-12)
        _assert_states_close(state, fast_state, tol=1e-12)
        # ... and with resets (one at t=0), the plain call run piece by piece.
        starts = torch.zeros(3, 12, dtype=torch.bool)
        starts[0, 4] = starts[2, 4] = starts[2, 9] = starts[1, 0] = True
        y, state = reset_path(x, state0, starts)
        y_a, state_a = model(x[:, :4], state0, starts[:, :4])
        y_b, state_b = model(x[:, 4:9], state_a, starts[:, 4:9])
        y_c, state_c = model(x[:, 9:], state_b, starts[:, 9:])
    torch.testing.assert_close(y, torch.cat([y_a, y_b, y_c], dim=1), rtol=1e-12, atol=1e-12)
    _assert_states_close(state, state_c, tol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_rnn_nn_calls_per_forward(name):
    """Packed path: one nn call whatever the resets; CPU chunks: one per distinct reset time, plus one."""
    model = _model(name)
    calls = []
    model.rnn.register_forward_hook(lambda *args: calls.append(1))
    x, starts = _data(4, 30, seed=6)
    distinct = int(starts[:, 1:].any(dim=0).sum())
    assert distinct >= 3
    with torch.no_grad():
        model._forward_packed(x, model.initial_state(4), starts)
        assert len(calls) == 1
        model(x, None, starts)  # CPU input: the chunked path
        assert len(calls) == 1 + distinct + 1
        model(x, None, torch.zeros(4, 30, dtype=torch.bool))
        assert len(calls) == 1 + distinct + 1 + 1


def test_lstm_step_uses_the_sequence_weights():
    model = _model("lstm", num_layers=1)
    assert isinstance(model, LSTMBackbone)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(2.0)  # a change to the nn module must show in step as well
        x = torch.randn(2, 3, D_IN, dtype=torch.float64)
        y, _ = model(x)
        y_step, _ = model.step(x[:, 0], model.initial_state(2))
    torch.testing.assert_close(y_step, y[:, 0])


def test_mamba_matches_mambapy_blocks():
    """Fresh state, no resets: our reset-aware scan and masked conv must equal mambapy's own forward."""
    model = _model("mamba", num_layers=2)
    x, _ = _data(2, 13, seed=8)
    with torch.no_grad():
        y, _ = model(x)
        h = model.input_proj(x)
        for layer in model.layers:
            h = layer(h)  # mambapy.mamba.ResidualBlock.forward (Conv1d + pscan)
        reference = model.norm_f(h)
    torch.testing.assert_close(y, reference, rtol=1e-10, atol=1e-10)


def _reference_selective_scan_fn(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """mamba_ssm's documented selective_scan_fn semantics (u, delta, z: [B, ED, T]; B, C: [B, N, T])."""
    delta = delta + delta_bias[:, None]
    delta = F.softplus(delta) if delta_softplus else delta
    h, ys = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]), []
    for t in range(u.shape[2]):
        h = (
            torch.exp(delta[:, :, t, None] * A) * h
            + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        )
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = (torch.stack(ys, dim=-1) + D[:, None] * u) * F.silu(z)
    return (y, h) if return_last_state else y


def test_mamba_cuda_kernel_wiring_matches_the_pytorch_path(monkeypatch):
    """No GPU/mamba_ssm here: check the argument layout of the kernel call against a reference of its API."""
    import sys
    import types

    fake = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    fake.selective_scan_fn = _reference_selective_scan_fn
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", fake)
    model = _model("mamba", num_layers=1, use_cuda_kernels=True)
    mixer = model.layers[0].mixer
    generator = torch.Generator().manual_seed(14)
    xs = torch.randn(2, 7, model.d_inner, dtype=torch.float64, generator=generator)
    z = torch.randn(2, 7, model.d_inner, dtype=torch.float64, generator=generator)
    h0 = torch.zeros(2, model.d_inner, model.d_state, dtype=torch.float64)
    with torch.no_grad():
        y_kernel, last_kernel = model._selective_scan_cuda(mixer, xs, z)
        y, last = model._selective_scan(mixer, xs, z, h0, torch.zeros(2, 7, dtype=torch.bool))
    # The kernel takes A, D and the delta bias in fp32 (as mamba_ssm requires), hence 1e-6 and not 1e-10.
    torch.testing.assert_close(y_kernel, y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(last_kernel, last, rtol=1e-6, atol=1e-6)


def test_mamba_conv_does_not_see_across_a_reset():
    model = _model("mamba", num_layers=1)
    x, _ = _data(1, 10, seed=9)
    starts = torch.zeros(1, 10, dtype=torch.bool)
    starts[0, 6] = True
    state0 = _prefix_state(model, 1)
    changed = x.clone()
    changed[0, 4:6] += 1.0  # inputs just before the reset, inside the conv's reach
    with torch.no_grad():
        y, state = model(x, state0, starts)
        y_changed, state_changed = model(changed, state0, starts)
    assert (y[0, 4:6] - y_changed[0, 4:6]).abs().max() > 1e-3
    torch.testing.assert_close(y[0, 6:], y_changed[0, 6:], rtol=0, atol=0)
    _assert_states_close(state, state_changed, tol=0)


def test_pscan_is_the_scan_we_think():
    """h_t = a_t h_{t-1} + b_t with h_{-1}=0, and a zero coefficient forgets (our reset mechanism)."""
    a = torch.rand(2, 7, 3, 4, dtype=torch.float64)
    a[:, 3] = 0.0
    b = torch.randn(2, 7, 3, 4, dtype=torch.float64)
    h, expected = torch.zeros(2, 3, 4, dtype=torch.float64), []
    for t in range(7):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(pscan(a, b), torch.stack(expected, dim=1))


def _reference_causal_transformer(model, x):
    """A plain full-causal GPT stack over x [B, T, D] using the model's weights (T <= max_context)."""
    h = model.input_proj(x)
    for block in model.blocks:
        q, k, v = (model._heads(t) for t in block.qkv(block.ln_1(h)).chunk(3, dim=-1))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
        h = h + block.proj(attn)
        h = h + block.mlp(block.ln_2(h))
    return model.ln_f(h)


@pytest.mark.parametrize("n_heads", [1, 4])
def test_transformer_within_context_is_plain_causal_attention(n_heads):
    model = _model("transformer", num_layers=3, n_heads=n_heads, max_context=20)
    x, _ = _data(2, 20, seed=10)
    with torch.no_grad():
        y, state = model(x)
        reference = _reference_causal_transformer(model, x)
    torch.testing.assert_close(y, reference, rtol=1e-10, atol=1e-10)
    assert state[2].tolist() == [19, 19]  # the cache keeps max_context - 1 tokens


def test_transformer_window_bounds_what_a_token_sees():
    """One layer: token t sees tokens t-C..t only (C = max_context-1), in forward and in step."""
    window = 6
    model = _model("transformer", num_layers=1, max_context=window)
    x, _ = _data(1, 16, seed=11)
    changed = x.clone()
    changed[0, 2] += 1.0
    with torch.no_grad():
        y, _ = model(x)
        y_changed, _ = model(changed)
        state, outputs = model.initial_state(1), []
        for t in range(16):
            y_t, state = model.step(changed[:, t], state)
            outputs.append(y_t)
    assert (y[0, 2 + window - 1] - y_changed[0, 2 + window - 1]).abs().max() > 1e-4
    torch.testing.assert_close(y[0, 2 + window :], y_changed[0, 2 + window :], rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.stack(outputs, dim=1), y_changed, rtol=1e-10, atol=1e-10)
    assert state[2].tolist() == [window - 1]


def test_transformer_long_sequence_with_many_chunks():
    model = _model("transformer", num_layers=2, max_context=4, positions="rope", n_heads=2)
    x, starts = _data(3, 41, seed=12)
    state0 = _prefix_state(model, 3)
    with torch.no_grad():
        y, state = model(x, state0, starts)
        s, outputs = state0, []
        for t in range(41):
            y_t, s = model.step(x[:, t], s, starts[:, t])
            outputs.append(y_t)
    torch.testing.assert_close(y, torch.stack(outputs, dim=1), rtol=1e-10, atol=1e-10)
    _assert_states_close(state, s)


@pytest.mark.parametrize(
    ("name", "options", "other", "other_options"),
    [
        ("lstm", {}, "gru", {}),
        ("gru", {}, "lstm", {}),
        ("mamba", {}, "mamba", {"d_state": 8}),
        ("mamba", {}, "transformer", {}),
        ("transformer", {}, "transformer", {"max_context": 30}),
        ("transformer", {}, "mamba", {}),
    ],
)
def test_foreign_state_is_rejected(name, options, other, other_options):
    model = make_backbone(name, D_IN, HIDDEN, 2, **options)
    foreign = make_backbone(other, D_IN, HIDDEN, 2, **other_options).initial_state(2)
    with pytest.raises(ValueError, match="state"):
        model.step(torch.randn(2, D_IN), foreign)
    with pytest.raises(ValueError, match="state"):
        model(torch.randn(2, 3, D_IN), foreign)
    with pytest.raises(ValueError, match="batch 2"):
        model(torch.randn(2, 3, D_IN), model.initial_state(3))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("transformer", {"n_heads": 3}, "multiple of n_heads"),
        ("transformer", {"positions": "learned"}, "positions"),
        ("transformer", {"max_context": 0}, "max_context"),
        ("mamba", {"d_conv": 1}, "d_conv"),
        ("lstm", {"dropout": 1.5}, "dropout"),
        ("gru", {"hidden_size": 3}, "bad options"),
    ],
)
def test_bad_options_are_rejected(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_backbone(name, D_IN, HIDDEN, 2, **options)


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_bf16_autocast_on_cpu_runs_and_stays_finite(name, options):
    model = make_backbone(name, D_IN, HIDDEN, 2, **options)
    x, starts = _data(3, 12, seed=13)
    x = x.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = model(x, model.initial_state(3), starts)
        y_step, state = model.step(x[:, 0], state, starts[:, 0])
        y.float().square().mean().backward()
    assert y.shape == (3, 12, HIDDEN) and y_step.shape == (3, HIDDEN)
    assert torch.isfinite(y).all() and torch.isfinite(y_step).all()
    assert all(torch.isfinite(s.float()).all() for s in state)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.check_state(state, 3, x.device)  # the state keeps its declared dtypes under autocast


@pytest.mark.parametrize("resets", [False, True])
def test_transformer_fresh_segments_take_the_short_path_with_the_same_result(resets):
    # A fresh state with T <= max_context (every DT training segment) attends over the T tokens only;
    # passing the zero state explicitly runs the general windowed path: both must agree, state included.
    torch.manual_seed(0)
    model = make_backbone("transformer", D_IN, HIDDEN, 2, max_context=12).double()
    x = torch.randn(3, 10, D_IN, dtype=torch.float64)
    starts = torch.zeros(3, 10, dtype=torch.bool)
    starts[:, 0] = True
    if resets:
        starts[0, 4] = starts[2, 7] = True
    y_fast, state_fast = model(x, None, starts)
    y_general, state_general = model(x, model.initial_state(3), starts)
    torch.testing.assert_close(y_fast, y_general)
    for a, b in zip(state_fast, state_general, strict=True):
        torch.testing.assert_close(a, b)
