from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from recurrl.agents.config import load_config


@dataclass
class Model:
    hidden_dim: int = 32
    backbone: str = "mingru"


@dataclass
class Train:
    lr: float = 1e-3
    steps: int = 10
    targets: list[float] = field(default_factory=lambda: [1.0])
    model: Model = field(default_factory=Model)
    note: str | None = None


def test_files_merge_in_order_then_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 0.01\nmodel:\n  hidden_dim: 64\n")
    (tmp_path / "b.yaml").write_text("model:\n  backbone: lstm\n")
    cfg = load_config(
        Train,
        [tmp_path / "a.yaml", tmp_path / "b.yaml"],
        ["steps=5", "model.hidden_dim=16", "targets=[1, 2]"],
    )
    assert cfg == Train(lr=0.01, steps=5, targets=[1.0, 2.0], model=Model(16, "lstm"))


def test_unknown_key_lists_valid_ones(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 0.01\nbatch: 3\n")
    with pytest.raises(ValueError, match="unknown config key.*batch.*valid keys.*lr"):
        load_config(Train, [tmp_path / "a.yaml"])
    with pytest.raises(ValueError, match="model.width"):
        load_config(Train, [], ["model.width=3"])


def test_exponent_numbers_without_a_dot_are_numbers():
    # YAML 1.1 reads 3e-4 as a string; it must still set a float (and 1e3 an int) field.
    cfg = load_config(Train, [], ["lr=3e-4", "steps=1e3"])
    assert cfg.lr == 3e-4 and cfg.steps == 1000
    with pytest.raises(ValueError, match="expected an integer"):
        load_config(Train, [], ["steps=2.5e0"])


def test_wrong_types_and_bad_overrides_are_errors(tmp_path):
    with pytest.raises(ValueError, match="expected an integer"):
        load_config(Train, [], ["steps=ten"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(Train, [], ["steps"])
    with pytest.raises(ValueError, match="not found"):
        load_config(Train, [tmp_path / "missing.yaml"])


def test_a_renamed_key_is_read_under_its_new_name_with_a_warning(tmp_path):
    """A PPO config.json saved before torch_threads became num_threads still loads and resumes."""
    import json

    from recurrl.agents.config import RenamedKeyWarning
    from recurrl.agents.ppo.config import PPOConfig
    from recurrl.agents.resume_point import check_config

    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"torch_threads": 2, "env_id": "CartPoleNoVel-v1"}))
    with pytest.warns(RenamedKeyWarning, match="torch_threads is now called num_threads"):
        config = load_config(PPOConfig, [saved])
    assert config.num_threads == 2
    with pytest.warns(RenamedKeyWarning):
        assert load_config(PPOConfig, [saved], ["num_threads=3"]).num_threads == 3  # the new key wins
    check_config(tmp_path, {"torch_threads": 2}, config, frozenset({"num_threads"}), saved)  # no difference
