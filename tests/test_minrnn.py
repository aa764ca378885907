"""minGRU / minLSTM layers and backbones: paper equations, forward == step, gradients, bad input."""

from __future__ import annotations

import pytest
import torch

from recurrl.policies.backbones import make_backbone
from recurrl.policies.backbones.mingru import MinGRU, MinGRULayer
from recurrl.policies.backbones.minlstm import MinLSTM, MinLSTMLayer

BACKBONES = ["mingru", "minlstm"]
BACKENDS = ["loop", "log", "numba"]


def paper_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def paper_mingru_step(layer: MinGRULayer, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The paper's minGRU equations written out, from the layer's weights."""
    pre_z, pre_h = layer.proj(x).chunk(2, dim=-1)
    z = torch.sigmoid(pre_z)
    return (1 - z) * h + z * paper_g(pre_h)


def paper_minlstm_step(layer: MinLSTMLayer, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The paper's minLSTM equations (normalized f' and i') written out."""
    pre_f, pre_i, pre_h = layer.proj(x).chunk(3, dim=-1)
    f, i = torch.sigmoid(pre_f), torch.sigmoid(pre_i)
    return f / (f + i) * h + i / (f + i) * paper_g(pre_h)


def stepped(model, x: torch.Tensor, state, starts: torch.Tensor | None):
    """Run `step` tick by tick: the reference that `forward` must reproduce."""
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, None if starts is None else starts[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize(
    ("layer_cls", "paper_step"), [(MinGRULayer, paper_mingru_step), (MinLSTMLayer, paper_minlstm_step)]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_is_the_paper_recurrence(layer_cls, paper_step, backend: str) -> None:
    torch.manual_seed(0)
    layer = layer_cls(4, 6, scan=backend).double()
    x = torch.randn(3, 25, 4, dtype=torch.float64) * 3
    h0 = torch.randn(3, 6, dtype=torch.float64)
    starts = torch.rand(3, 25) < 0.2
    h, h_last = layer(x, h0, starts)
    with torch.no_grad():
        state, expected = h0, []
        for t in range(25):
            state = state * (~starts[:, t]).double().unsqueeze(-1)
            # `step` is the paper's cell too, tick by tick
            torch.testing.assert_close(
                layer.step(x[:, t], state), paper_step(layer, x[:, t], state), rtol=1e-12, atol=1e-12
            )
            state = paper_step(layer, x[:, t], state)
            expected.append(state)
    expected = torch.stack(expected, dim=1)
    assert h.shape == (3, 25, 6) and h_last.shape == (3, 6)
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_last, expected[:, -1], rtol=1e-12, atol=1e-12)


def test_minlstm_saturated_gates_stay_finite() -> None:
    """f and i both underflow (pre-activations -120): f / (f + i) is 0/0, the layer must stay finite."""
    layer = MinLSTMLayer(2, 3)
    with torch.no_grad():
        layer.proj.weight.zero_()
        layer.proj.bias.fill_(-120.0)
    h, _ = layer(torch.randn(1, 5, 2))
    assert torch.isfinite(h).all()
    assert torch.isfinite(layer.step(torch.randn(1, 2), torch.zeros(1, 3))).all()


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_step_with_state_and_resets(name: str, backend: str) -> None:
    torch.manual_seed(1)
    model = make_backbone(name, 5, 12, num_layers=2, expansion_factor=1.5, mlp_ratio=2.0, scan=backend)
    model = model.double().eval()
    x = torch.randn(4, 30, 5, dtype=torch.float64)
    state = (torch.randn(4, 2, 18, dtype=torch.float64) * 0.5,)
    starts = torch.rand(4, 30) < 0.15
    starts[0, 0] = True
    y, final = model(x, state, starts)
    y_ref, final_ref = stepped(model, x, state, starts)
    assert y.shape == (4, 30, 12) and final[0].shape == (4, 2, 18)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final[0], final_ref[0], rtol=1e-10, atol=1e-10)
    # Without a state the fresh (zero) state is used, and forward can resume from its own final state.
    y1, mid = model(x[:, :13], None, starts[:, :13])
    y2, end = model(x[:, 13:], mid, starts[:, 13:])
    y_fresh, end_fresh = model(x, model.initial_state(4), starts)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_fresh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(end[0], end_fresh[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", BACKBONES)
def test_fp32_forward_matches_step_and_backends_agree(name: str) -> None:
    torch.manual_seed(2)
    model = make_backbone(name, 3, 16, num_layers=2, scan="loop").eval()
    x = torch.randn(2, 64, 3)
    starts = torch.rand(2, 64) < 0.1
    y, _ = model(x, None, starts)
    y_ref, _ = stepped(model, x, model.initial_state(2), starts)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for block in model.blocks:
        block.cell.scan = "log"
    torch.testing.assert_close(model(x, None, starts)[0], y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_every_parameter(name: str, backend: str) -> None:
    torch.manual_seed(3)
    model = make_backbone(
        name, 4, 8, num_layers=2, expansion_factor=2.0, mlp_ratio=1.0, dropout=0.1, scan=backend
    )
    x = torch.randn(3, 20, 4)
    state = (torch.randn(3, 2, 16, requires_grad=True),)
    y, final = model(x, state, torch.rand(3, 20) < 0.1)
    (y.square().mean() + final[0].mean()).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname
    assert state[0].grad is not None and state[0].grad.abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONES)
def test_bf16_autocast_runs_and_stays_finite(name: str) -> None:
    torch.manual_seed(4)
    model = make_backbone(name, 6, 16, num_layers=2)
    x = torch.randn(2, 50, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = model(x, None, torch.rand(2, 50) < 0.1)
        y_step, state_step = model.step(x[:, 0], state)
    assert torch.isfinite(y.float()).all() and torch.isfinite(y_step.float()).all()
    assert state[0].dtype == torch.float32 and state_step[0].dtype == torch.float32
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_options_and_shapes(cls) -> None:
    model = cls(7, 32, num_layers=3, expansion_factor=2.0, mlp_ratio=0)
    assert model.name in ("mingru", "minlstm")
    assert model.state_shapes() == [((3, 64), torch.float32)]
    assert all(block.mlp is None for block in model.blocks)
    y, state = model(torch.randn(2, 4, 7))
    assert y.shape == (2, 4, 32) and y.is_contiguous() and state[0].shape == (2, 3, 64)
    # mlp_ratio and expansion add parameters; the counter sees them
    assert cls(7, 32, mlp_ratio=2.0).num_parameters() > cls(7, 32, mlp_ratio=0).num_parameters()


def test_bad_input_raises_value_error() -> None:
    model = make_backbone("mingru", 4, 8, num_layers=2)
    with pytest.raises(ValueError, match="input_dim=4"):
        model(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="state"):
        model(torch.randn(2, 5, 4), (torch.zeros(2, 1, 8),))
    with pytest.raises(ValueError, match="episode_starts"):
        model(torch.randn(2, 5, 4), None, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="state"):
        model.step(torch.randn(2, 4), (torch.zeros(3, 2, 8),))
    for options in (
        {"scan": "fft"},
        {"expansion_factor": 0},
        {"mlp_ratio": -1},
        {"dropout": 1.0},
        {"width": 3},
    ):
        with pytest.raises(ValueError):
            make_backbone("minlstm", 4, 8, **options)
    layer = MinGRULayer(4, 8)
    with pytest.raises(ValueError, match=r"\[B, T, 4\]"):
        layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match="h0"):
        layer(torch.randn(2, 3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="episode_starts"):
        layer(torch.randn(2, 3, 4), None, torch.zeros(3, 2, dtype=torch.bool))


@pytest.mark.parametrize("layer_cls", [MinGRULayer, MinLSTMLayer])
def test_layer_gradients_exact_and_backends_agree(layer_cls) -> None:
    """gradcheck of the fused loop backward (float64), and loop == log gradients."""
    torch.manual_seed(5)
    layer = layer_cls(3, 4, scan="loop").double()
    x = (torch.randn(2, 10, 3, dtype=torch.float64) * 2).requires_grad_()
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    starts = torch.zeros(2, 10, dtype=torch.bool)
    starts[0, 3] = starts[1, 0] = starts[1, 7] = True
    assert torch.autograd.gradcheck(lambda x, h0: layer(x, h0, starts)[0], (x, h0))
    grads = {}
    for backend in BACKENDS:
        layer.scan = backend
        layer.zero_grad()
        h, _ = layer(x, h0, starts)
        (h * torch.linspace(-1, 1, 4, dtype=torch.float64)).sum().backward()
        grads[backend] = [p.grad.clone() for p in layer.parameters()]
    for backend in BACKENDS[1:]:
        for got, want in zip(grads[backend], grads["loop"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def module_block_step(block, u: torch.Tensor, h: torch.Tensor):
    """ResidualBlock.step written with plain module calls: what the functional fast path must equal."""
    h = block.cell.step(block.norm1(u), h)
    u = u + block.drop(block.out(h.to(u.dtype)))
    if block.mlp is not None:
        u = u + torch.nn.Sequential.forward(block.mlp, block.norm2(u))
    return u, h


@pytest.mark.parametrize(("expansion", "mlp_ratio"), [(1.0, 2.0), (1.5, 2.0), (2.0, 0.0)])
@pytest.mark.parametrize("training", [False, True])
def test_block_fast_path_equals_module_calls(expansion: float, mlp_ratio: float, training: bool) -> None:
    """Functional calls on the modules' parameters: same values and same dropout draws as calling the
    modules (with and without the output projection and the MLP, in eval and in training mode)."""
    torch.manual_seed(6)
    model = make_backbone(
        "mingru", 5, 12, num_layers=2, expansion_factor=expansion, mlp_ratio=mlp_ratio, dropout=0.2
    )
    model.train(training)
    block = model.blocks[0]
    u, h = torch.randn(3, 12), torch.randn(3, model.inner_dim)
    torch.manual_seed(7)
    got = block.step(u, h)
    torch.manual_seed(7)
    want = module_block_step(block, u, h)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if block.mlp is not None:
        x = torch.randn(2, 4, 12)
        torch.manual_seed(8)
        got_mlp = block.mlp(x)
        torch.manual_seed(8)
        torch.testing.assert_close(got_mlp, torch.nn.Sequential.forward(block.mlp, x), rtol=0, atol=0)
        assert [k for k, _ in block.mlp.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
