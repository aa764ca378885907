"""Does a Decision model use its return-to-go? An offline probe with dataset segments.

A return-conditioned agent is steered by its target return only if its action predictions depend on
the return-to-go. On mixed data (medium + expert) a model can fit every action from the states and
past actions alone, which tell the behaviour policies apart, and learn to ignore the return-to-go:
then no target return steers it (the README's medium-expert analysis). This probe feeds dataset
segments with their recorded history (teacher forcing, no env) and compares the action loss with the
recorded returns-to-go to the loss with the returns-to-go scaled. A ratio near 1 means the model does
not read them there.

Two sets of segments: the first K steps of episodes, where behaviour policies that start from the same
states can only be told apart by the return-to-go, and segments at random positions, as in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recurrl.agents.decision.data import Batch, SegmentSampler
from recurrl.agents.decision.model_io import EnvSpec
from recurrl.envs.episodes import OfflineDataset
from recurrl.policies.decision import DecisionModel, action_loss


def check_dataset_spaces(spec: EnvSpec, dataset: OfflineDataset) -> None:
    """Raise ValueError when `dataset`'s spaces are not the ones the checkpoint was trained on."""
    spec.check_spaces(
        dataset.observation_space,
        dataset.action_space,
        f"dataset {dataset.name!r}",
        "probe with data of the task the model was trained on",
    )


def rtg_sensitivity(
    model: DecisionModel,
    dataset: OfflineDataset,
    *,
    segments: int = 512,
    scales: tuple[float, ...] = (0.0, 0.5, 2.0),
    context_length: int = 20,
    seed: int = 0,
    chunk: int = 256,
) -> list[dict[str, Any]]:
    """Action loss on `segments` episode-start and `segments` random segments, with the recorded
    returns-to-go and with them times each of `scales` -> one row per set of segments."""
    if segments <= 0 or context_length <= 0 or not scales:
        raise ValueError(
            f"the probe needs segments > 0, context_length > 0 and at least one scale "
            f"(got {segments}, {context_length}, {list(scales)})"
        )
    sampler = SegmentSampler(dataset, context_length, seed=seed)
    episodes = len(sampler.lengths)
    # Episode starts: every episode once when there are no more than `segments`, else a random subset.
    picked = (
        np.arange(episodes)
        if episodes <= segments
        else np.sort(sampler.rng.choice(episodes, segments, False))
    )
    sets = (
        ("episode starts", sampler.segments(picked, np.zeros(len(picked), dtype=np.int64))),
        ("random segments", sampler.sample(segments)),
    )
    was_training = model.training
    model.eval()
    rows = []
    try:
        for where, batch in sets:
            recorded = _action_loss(model, batch, 1.0, chunk)
            scaled = {f"x{scale:g}": _action_loss(model, batch, scale, chunk) for scale in scales}
            rows.append(
                {
                    "dataset": dataset.name,
                    "segments": where,
                    "count": int(batch.states.shape[0]),
                    "loss_recorded": recorded,
                    "loss_scaled": scaled,
                    "ratio": {
                        key: value / recorded if recorded > 0 else float("inf")
                        for key, value in scaled.items()
                    },
                }
            )
    finally:
        model.train(was_training)
    return rows


@torch.no_grad()
def _action_loss(model: DecisionModel, batch: Batch, scale: float, chunk: int) -> float:
    """Mean action loss over the real steps of `batch`, with its returns-to-go times `scale`."""
    total, steps = 0.0, 0.0
    device = next(model.parameters()).device
    for begin in range(0, batch.states.shape[0], chunk):
        part = Batch(**{k: v[begin : begin + chunk] for k, v in batch.__dict__.items()}).to(device)
        targets = model.normalize_actions(part.actions)
        pred, _ = model(part.returns_to_go * scale, part.states, targets, part.timesteps, part.episode_starts)
        count = float(part.loss_mask.sum())
        total += float(action_loss(model, pred.float(), targets, part.loss_mask)) * count
        steps += count
    return total / max(steps, 1.0)


def format_row(row: dict[str, Any]) -> str:
    scaled = " | ".join(
        f"{key}: {row['loss_scaled'][key]:.4f} ({row['ratio'][key]:.2f}x)" for key in row["loss_scaled"]
    )
    return (
        f"{row['dataset']} [{row['segments']}, {row['count']}]: action loss {row['loss_recorded']:.4f} with the "
        f"recorded return-to-go | return-to-go {scaled}"
    )
