from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from recurrl.agents.checkpoint import (
    CheckpointError,
    copy_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    load_weights_strict,
    optimizer_state,
    read_meta,
    recover_checkpoint,
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


# ----------------------------------------------------------------------------- crash safety
def _save(path, step: int):
    model, _ = _model_and_optimizer()
    return save_checkpoint(path, model.state_dict(), {"step": step})


def test_recovery_puts_the_newest_complete_version_in_place(tmp_path):
    _save(tmp_path / "last", 1)
    # A save killed between its two renames: the old version aside, the new one complete under a temp name.
    os.replace(tmp_path / "last", tmp_path / ".last.old-aaaa")
    _save(tmp_path / "staging", 2)
    os.replace(tmp_path / "staging", tmp_path / ".last.tmp-bbbb")
    (tmp_path / ".last.tmp-cccc").mkdir()  # and an older save killed before it wrote anything
    recover_checkpoint(tmp_path / "last")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert read_meta(tmp_path / "last")["step"] == 2
    # A complete leftover that is older than `last` is dropped; a broken one too.
    _save(tmp_path / "staging", 1)
    os.replace(tmp_path / "staging", tmp_path / ".last.old-dddd")
    (tmp_path / ".last.tmp-eeee").mkdir()
    (tmp_path / ".last.tmp-eeee" / "meta.json").write_text('{"format_version": 1, "step": 9, "fi')
    recover_checkpoint(tmp_path / "last")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert read_meta(tmp_path / "last")["step"] == 2


def test_copy_replaces_a_partial_copy(tmp_path):
    source = _save(tmp_path / "last", 3)
    (tmp_path / "best").mkdir()  # what a kill during an earlier, plain copytree left: no meta.json
    shutil.copyfile(source / "model.safetensors", tmp_path / "best" / "model.safetensors")
    copy_checkpoint(source, tmp_path / "best")
    assert read_meta(tmp_path / "best")["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]
    with pytest.raises(CheckpointError, match="not a recurrl checkpoint"):
        copy_checkpoint(tmp_path / "nothing", tmp_path / "other")


def test_meta_that_is_not_a_json_object_is_refused(tmp_path):
    path = _save(tmp_path / "c", 1)
    (path / "meta.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="holds a list, not an object"):
        load_checkpoint(path)
    (path / "meta.json").write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
