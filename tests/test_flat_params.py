from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from recurrl.agents.checkpoint import load_checkpoint, save_checkpoint
from recurrl.agents.flat_params import FlatParameters


def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))


def _loss(module: nn.Module, seed: int) -> torch.Tensor:
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(seed))
    return (module(x) ** 2).mean()


def _adam(params) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=1e-2, eps=1e-5, fused=True)


def _train_reference(module: nn.Module, optimizer: torch.optim.Optimizer, seeds: range) -> None:
    for seed in seeds:
        optimizer.zero_grad()
        _loss(module, seed).backward()
        nn.utils.clip_grad_norm_(module.parameters(), 0.05)
        optimizer.step()


def _train_flat(
    module: nn.Module, flat: FlatParameters, optimizer: torch.optim.Optimizer, seeds: range
) -> None:
    for seed in seeds:
        flat.zero_grad()
        _loss(module, seed).backward()
        flat.clip_grad_norm_(0.05)
        optimizer.step()


def test_parameters_become_views_and_gradients_fill_the_flat_buffer() -> None:
    module = _module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flat = FlatParameters(module)
    assert flat.param.numel() == sum(p.numel() for p in module.parameters())
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key])  # same values, new storage
    for p in module.parameters():
        assert p.untyped_storage().data_ptr() == flat.param.untyped_storage().data_ptr()

    reference = _module()
    _loss(reference, 0).backward()
    flat.zero_grad()
    _loss(module, 0).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    assert torch.allclose(flat.param.grad, expected)
    flat.zero_grad()
    assert not flat.param.grad.any() and all(not p.grad.any() for p in module.parameters())


def test_training_matches_per_tensor_adam_and_clipping() -> None:
    reference, module = _module(), _module()
    flat = FlatParameters(module)
    _train_reference(reference, _adam(reference.parameters()), range(20))
    _train_flat(module, flat, _adam([flat.param]), range(20))
    for (name, a), b in zip(reference.named_parameters(), module.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(module[0].weight, _module()[0].weight)  # it trained


def test_optimizer_state_from_per_tensor_checkpoints_continues_the_same_run() -> None:
    reference = _module()
    optimizer = _adam(reference.parameters())
    _train_reference(reference, optimizer, range(5))

    module = copy.deepcopy(reference)
    flat = FlatParameters(module)
    flat_optimizer = _adam([flat.param])
    flat_optimizer.load_state_dict(flat.flatten_optimizer_state(optimizer.state_dict()))

    _train_reference(reference, optimizer, range(5, 15))
    _train_flat(module, flat, flat_optimizer, range(5, 15))
    for a, b in zip(reference.parameters(), module.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_flatten_optimizer_state_rejects_another_module() -> None:
    other = nn.Linear(2, 2)
    flat = FlatParameters(_module())
    with pytest.raises(ValueError, match="expected one group of 6"):
        flat.flatten_optimizer_state(_adam(other.parameters()).state_dict())


def test_a_gradient_set_to_none_is_reported() -> None:
    module = _module()
    flat = FlatParameters(module)
    module.zero_grad()  # set_to_none: detaches the views from the flat gradient
    with pytest.raises(RuntimeError, match=r"call FlatParameters.zero_grad\(\) instead"):
        flat.zero_grad()


def test_mixed_dtypes_are_refused() -> None:
    module = _module()
    module[3].double()
    with pytest.raises(ValueError, match="share one dtype and device"):
        FlatParameters(module)


def test_views_into_one_buffer_save_as_separate_tensors(tmp_path) -> None:
    module = _module()
    FlatParameters(module)
    path = save_checkpoint(tmp_path / "ckpt", module.state_dict(), {"kind": "test"})
    tensors, _, _ = load_checkpoint(path)
    for key, value in module.state_dict().items():
        assert torch.equal(tensors[key], value)
