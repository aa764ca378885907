"""`recurrl probe`: the return-to-go sensitivity of a Decision model on dataset segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recurrl.agents.decision.config import DecisionConfig
from recurrl.agents.decision.data import SegmentSampler
from recurrl.agents.decision.model_io import EnvSpec, build_model, model_kwargs
from recurrl.agents.decision.probe import check_dataset_spaces, rtg_sensitivity
from recurrl.envs.datasets import load_dataset
from recurrl.envs.episodes import OfflineDataset


@pytest.fixture(scope="module")
def hopper(tiny_hopper_dataset_path: Path) -> OfflineDataset:
    return load_dataset(str(tiny_hopper_dataset_path))


def hopper_model(dataset: OfflineDataset, return_weight: float | None) -> torch.nn.Module:
    """A small untrained model; `return_weight` sets the return embedding's scale (0: the return-to-go
    never reaches the tokens), None keeps its init."""
    config = DecisionConfig()
    config.model.hidden_dim, config.model.num_layers = 16, 1
    torch.manual_seed(0)
    model = build_model(model_kwargs(config, dataset))
    if return_weight is not None:
        with torch.no_grad():
            # Random directions: a uniform shift of every channel would be removed by the LayerNorm.
            model.embed_return.weight.normal_(0.0, 1.0).mul_(return_weight)
            model.embed_return.bias.zero_()
    return model


def test_segments_is_what_sample_draws(hopper: OfflineDataset) -> None:
    a, b = SegmentSampler(hopper, 5, burn_in=3, seed=7), SegmentSampler(hopper, 5, burn_in=3, seed=7)
    drawn = a.sample(6)
    episode = b.rng.choice(len(b.lengths), size=6, p=b.episode_probs)
    start = (b.rng.random(6) * b.lengths[episode]).astype(np.int64)
    again = b.segments(episode, start)
    for name, value in drawn.__dict__.items():
        assert torch.equal(value, getattr(again, name)), name
    first = b.segments(np.array([0, 1]), np.array([0, 0]))
    assert (
        first.timesteps[:, 3].tolist() == [0, 0] and first.episode_starts[:, 3].all()
    )  # after the burn-in pad


def test_a_model_blind_to_the_return_to_go_has_ratio_one(hopper: OfflineDataset) -> None:
    rows = rtg_sensitivity(hopper_model(hopper, 0.0), hopper, segments=8, scales=(0.0, 3.0), context_length=6)
    assert [r["segments"] for r in rows] == ["episode starts", "random segments"]
    assert rows[0]["count"] == 8 and rows[1]["count"] == 8  # 12 episodes: 8 of their starts
    for row in rows:
        assert row["loss_recorded"] > 0
        assert row["ratio"] == {"x0": pytest.approx(1.0, abs=1e-6), "x3": pytest.approx(1.0, abs=1e-6)}


def test_a_model_that_reads_the_return_to_go_is_seen_to(hopper: OfflineDataset) -> None:
    model = hopper_model(hopper, 1.0)  # a large return embedding: the tokens change with the return-to-go
    rows = rtg_sensitivity(model, hopper, segments=64, scales=(1.0, 0.0), context_length=6)
    assert rows[0]["count"] == 12  # every episode start once
    for row in rows:
        assert row["ratio"]["x1"] == pytest.approx(1.0, abs=1e-6)
        assert abs(row["ratio"]["x0"] - 1.0) > 0.01
    assert model.training  # the probe restores the mode it found


def test_data_of_another_task_is_refused(hopper: OfflineDataset) -> None:
    from tests.test_decision_train import collect

    pendulum = collect("Pendulum-v1", 2, {"max_episode_steps": 10})
    with pytest.raises(ValueError, match="space of dataset 'random-Pendulum-v1'.*does not match"):
        check_dataset_spaces(EnvSpec.from_dataset(hopper), pendulum)
    with pytest.raises(ValueError, match="segments > 0"):
        rtg_sensitivity(hopper_model(hopper, None), hopper, segments=0)
