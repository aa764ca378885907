"""Checks a grid before any cell starts (names, presets, keys, datasets, envs), and fills in the
parameter-matched widths of `--match-params`. Every problem is one ValueError naming the culprit."""

from __future__ import annotations

import sys

from recurrl.agents.compare.grid import Grid
from recurrl.agents.config import load_config


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def check_offline(grid: Grid, configs: list[str]) -> None:
    """Presets and overrides load for every backbone, every dataset loads; widths for --match-params."""
    from recurrl.agents.decision.config import DecisionConfig
    from recurrl.agents.decision.model_io import build_model, model_kwargs
    from recurrl.envs.datasets import load_dataset
    from recurrl.policies.backbones.registry import largest_width

    grid.configs = configs
    per_backbone = {}
    for backbone in grid.backbones:
        config = load_config(DecisionConfig, configs, [*grid.overrides, f"model.backbone={backbone}"])
        config.validate()
        per_backbone[backbone] = config
    for task in grid.tasks:
        try:
            first = per_backbone[grid.backbones[0]]
            dataset = load_dataset(task, env_id=first.env_id, clip_actions=first.clip_actions)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"dataset {task!r}: {error}") from error
        if dataset.ref_min_score is None or dataset.ref_max_score is None:
            _say(f"note: dataset {task!r} has no reference scores: its cells report raw returns, not normalized scores")
        if not grid.match_params:
            continue

        def params(backbone: str, width: int, dataset=dataset) -> int:
            config = per_backbone[backbone]
            config.model.hidden_dim = width
            return build_model(model_kwargs(config, dataset)).num_parameters()

        first = grid.backbones[0]
        budget = params(first, per_backbone[first].model.hidden_dim)
        widths = {first: per_backbone[first].model.hidden_dim}
        for backbone in grid.backbones[1:]:
            multiple = _width_multiple(per_backbone[backbone])
            below = largest_width(lambda w, b=backbone: params(b, w), budget, multiple, what=backbone)
            # the width whose count is nearest the budget, from below or just above it
            above = below + multiple
            nearest = abs(params(backbone, above) - budget) < abs(params(backbone, below) - budget)
            widths[backbone] = above if nearest else below
        for backbone, width in widths.items():
            grid.widths[f"{task}|{backbone}"] = width
        counts = ", ".join(f"{b} {w} ({params(b, w):,})" for b, w in widths.items())
        _say(f"match-params on {task}: width (parameters): {counts}")
        for backbone in grid.backbones:  # params() changed the widths in place
            per_backbone[backbone].model.hidden_dim = widths[backbone]


def _width_multiple(config) -> int:
    heads = int(config.model.backbone_options.get("n_heads", 1)) if config.model.backbone == "transformer" else 1
    return max(4, heads)


def check_online(grid: Grid, configs: list[str]) -> None:
    """Every env id is registered and every backbone's PPO config loads."""
    import gymnasium as gym

    from recurrl.agents.ppo.config import PPOConfig
    from recurrl.configs import ppo_preset
    from recurrl.envs.packages import check_env_id, split_env_id

    grid.configs = configs
    for env_id in grid.tasks:
        check_env_id(env_id)  # imports the module of a 'module:EnvId' spelling
        bare = split_env_id(env_id)[1]
        if gym.spec(bare).reward_threshold is None:
            _say(f"note: {env_id} has no reward threshold: its cells report no steps-to-threshold")
        preset = ppo_preset(bare)
        for backbone in grid.backbones:
            paths = ([preset] if preset else []) + configs
            load_config(PPOConfig, paths, [*grid.overrides, f"env_id={env_id}", f"backbone={backbone}"])
