from __future__ import annotations

import json

import pytest
import torch

from recurrl.agents.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    load_weights_strict,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_roundtrip_restores_weights_optimizer_and_rng(tmp_path):
    model, optimizer = _model_and_optimizer()
    opt_tensors, opt_plain = optimizer_state(optimizer)
    rng_tensors, rng_plain = rng_state()
    path = save_checkpoint(
        tmp_path / "ckpt",
        model.state_dict(),
        {"kind": "test", "optim": opt_plain, "rng": rng_plain},
        {**opt_tensors, **rng_tensors},
    )
    expected_draw = torch.rand(3)
    tensors, meta, train = load_checkpoint(path, with_train_state=True)
    fresh, fresh_opt = _model_and_optimizer()
    with torch.no_grad():
        fresh.weight.zero_()
    load_weights_strict(fresh, tensors, "test")
    load_optimizer_state(fresh_opt, train, meta["optim"])
    set_rng_state(train, meta["rng"])
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(
        fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    assert torch.equal(torch.rand(3), expected_draw)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    model, _ = _model_and_optimizer()
    save_checkpoint(tmp_path / "last", model.state_dict(), {"step": 1})
    save_checkpoint(tmp_path / "last", model.state_dict(), {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert load_checkpoint(tmp_path / "last")[1]["step"] == 2


def test_corrupt_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    model, _ = _model_and_optimizer()
    path = save_checkpoint(tmp_path / "c", model.state_dict(), {"step": 1})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a recurrl checkpoint"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path / "d", model.state_dict(), {"step": 1})
    (path / "meta.json").write_text(json.dumps({"format_version": 1})[:-3])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    tensors = load_checkpoint(save_checkpoint(tmp_path / "e", model.state_dict(), {}))[0]
    with pytest.raises(CheckpointError, match="another model configuration"):
        load_weights_strict(torch.nn.Linear(3, 5), tensors, "test")
