"""Our DT-Transformer against d3rlpy's Decision Transformer: training steps/s at DT's settings, side by side.

Both train on the same dataset in one process, one thread, interleaved rounds (medians): width 128,
3 layers, 1 head, triple tokens, batch 64, K=20, dropout 0.1 on embeddings, attention and residuals,
a GELU MLP (DT's; d3rlpy defaults to ReLU, so it is set), AdamW with weight decay 1e-4 and gradient
clipping 0.25. A step is what each library's own training loop does per optimizer step: ours
`DecisionTrainer.train_step()` (sample + forward + backward + AdamW), d3rlpy's `sample_trajectory_batch`
+ `update` (the body of its `fit`).

`recurrl bench decision d3rlpy` runs it. d3rlpy is not a dependency (it pins gymnasium 1.0): install it
for this benchmark only, e.g.
    pip install --no-deps d3rlpy==2.8.1 gym structlog colorama dataclasses-json marshmallow \
        typing-inspect mypy-extensions gym-notices cloudpickle scikit-learn click
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import numpy as np
import torch

from recurrl.agents.decision.config import DecisionConfig

from .timing import interleaved_rounds, median_ratio, medians, rate_per_s

DT_WIDTH, DT_LAYERS, DT_BATCH, DT_K, DT_DROPOUT = 128, 3, 64, 20, 0.1


def our_trainer(dataset: Any, runs_dir: str, dropout: float = DT_DROPOUT):
    from recurrl.agents.decision.trainer import DecisionTrainer

    config = DecisionConfig(dataset=dataset.name, context_length=DT_K, batch_size=DT_BATCH, lr=1e-4)
    config.runs_dir, config.run_name, config.eval.every, config.num_threads = runs_dir, "ours", 0, 1
    config.eval.target_returns = [3600.0]
    m = config.model
    m.backbone, m.hidden_dim, m.num_layers, m.tokens, m.dropout = (
        "transformer",
        DT_WIDTH,
        DT_LAYERS,
        "triple",
        dropout,
    )
    m.backbone_options = {"dropout": dropout, "n_heads": 1}
    return DecisionTrainer(config, dataset, show_progress=False)


def d3rlpy_algo(dataset: Any, dropout: float = DT_DROPOUT, activation: str = "gelu"):
    """d3rlpy's DT as its reproduction script configures it, on our episodes -> (algo, its replay buffer).
    `activation` is its MLP's: GELU by default, as DT (GPT-2) and our backbone; d3rlpy's own default is ReLU."""
    import d3rlpy

    observations = np.concatenate([e.observations for e in dataset.episodes])
    actions = np.concatenate([e.actions for e in dataset.episodes])
    rewards = np.concatenate([e.rewards for e in dataset.episodes])
    terminals = np.concatenate([e.terminations for e in dataset.episodes]).astype(np.float32)
    timeouts = np.concatenate([e.truncations for e in dataset.episodes]).astype(np.float32)
    ends = np.cumsum([len(e.rewards) for e in dataset.episodes]) - 1
    timeouts[ends] = np.maximum(timeouts[ends], 1.0 - terminals[ends])  # d3rlpy cuts episodes at these
    replay = d3rlpy.dataset.MDPDataset(observations, actions, rewards, terminals, timeouts)
    algo = d3rlpy.algos.DecisionTransformerConfig(
        batch_size=DT_BATCH,
        context_size=DT_K,
        learning_rate=1e-4,
        encoder_factory=d3rlpy.models.VectorEncoderFactory([DT_WIDTH], exclude_last_activation=True),
        optim_factory=d3rlpy.optimizers.AdamWFactory(weight_decay=1e-4, clip_grad_norm=0.25),
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(1e-3),
        num_heads=1,
        num_layers=DT_LAYERS,
        max_timestep=1000,
        attn_dropout=dropout,
        resid_dropout=dropout,
        embed_dropout=dropout,
        activation_type=activation,
    ).create(device="cpu:0")
    # One short fit builds the network and fits the scalers the way d3rlpy's own loop does.
    algo.fit(replay, n_steps=2, n_steps_per_epoch=2, show_progress=False, save_interval=10**9,
             logger_adapter=d3rlpy.logging.NoopAdapterFactory())  # fmt: skip
    return algo, replay


def bench_vs_d3rlpy(
    dataset_id: str, steps: int, rounds: int, dropout: float = DT_DROPOUT, d3rlpy_activation: str = "gelu"
) -> dict[str, Any]:
    from recurrl.agents.decision.trainer import load_training_dataset

    torch.set_num_threads(1)
    dataset = load_training_dataset(dataset_id)
    runs_dir = tempfile.mkdtemp(prefix="recurrl-d3rlpy-")
    try:
        ours = our_trainer(dataset, runs_dir, dropout)
        algo, replay = d3rlpy_algo(dataset, dropout, d3rlpy_activation)

        def theirs_step() -> None:
            algo.update(replay.sample_trajectory_batch(DT_BATCH, length=DT_K))

        sides = {"recurrl": ours.train_step, "d3rlpy": theirs_step}
        speeds = interleaved_rounds(
            {name: lambda s=step: rate_per_s(s, steps) for name, step in sides.items()}, rounds
        )
        return {
            "setup": {
                "width": DT_WIDTH,
                "layers": DT_LAYERS,
                "batch": DT_BATCH,
                "K": DT_K,
                "dropout": dropout,
                "activation": {"recurrl": "gelu", "d3rlpy": d3rlpy_activation},
                "tokens": "triple",
                "threads": 1,
                "steps_per_round": steps,
                "rounds": rounds,
            },  # fmt: skip
            "parameters": {
                "recurrl": ours.model.num_parameters(),
                "d3rlpy": sum(p.numel() for p in algo.impl.modules.transformer.parameters()),
            },  # fmt: skip
            "steps_per_sec_median": medians(speeds),
            "rounds": speeds,
            "recurrl_over_d3rlpy_median_ratio": median_ratio(speeds["recurrl"], speeds["d3rlpy"]),
        }
    finally:
        shutil.rmtree(runs_dir, ignore_errors=True)
