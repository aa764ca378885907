"""Bad inputs on disk for tests/test_bad_input.py: datasets, configs, checkpoints, run and compare folders,
and an env whose observations do not match its observation_space. `make_bad_inputs(root)` -> paths by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from recurrl.envs.datasets import export_hdf5, load_dataset

BAD_SHAPE_ENV = "recurrl-test/BadShape-v0"


class BadShapeEnv(gym.Env):
    """Says it observes 4 numbers and returns 5."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):  # noqa: ANN001, ANN201
        super().reset(seed=seed)
        return np.zeros(5, np.float32), {}

    def step(self, action):  # noqa: ANN001, ANN201
        return np.zeros(5, np.float32), 0.0, False, False, {}


def register_bad_shape_env() -> None:
    if BAD_SHAPE_ENV not in gym.registry:
        gym.register(BAD_SHAPE_ENV, entry_point=BadShapeEnv, max_episode_steps=10)


def _hdf5(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, str]) -> str:
    with h5py.File(path, "w") as file:
        for key, value in arrays.items():
            file.create_dataset(key, data=value)
        for key, value in attrs.items():
            file.attrs[key] = value
    return str(path)


def make_datasets(root: Path, good: Path) -> dict[str, str]:
    """Variants of the tiny Hopper file `good`, each wrong in one way."""
    with h5py.File(good, "r") as file:
        base = {key: file[key][()] for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    n = len(base["rewards"])
    hopper = {"env_id": "Hopper-v5"}

    def variant(name: str, attrs: dict[str, str] = hopper, **arrays: np.ndarray) -> str:
        return _hdf5(root / name, {**base, **arrays}, attrs)

    outside = base["actions"].copy()
    outside[5, 0] = 3.0
    nan_obs = base["observations"].copy()
    nan_obs[7, 2] = np.nan
    cart = {
        "observations": np.zeros((n, 4), np.float32),
        "actions": np.zeros((n, 3), np.float32),
        "rewards": base["rewards"],
        "terminals": base["terminals"],
        "timeouts": base["timeouts"],
    }
    garbage = root / "garbage.hdf5"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    (root / "not-minari").mkdir()
    return {
        "good": str(good),
        "noenv": variant("noenv.hdf5", {}),
        "unregistered": variant("unregistered.hdf5", {"env_id": "NoSuchEnv-v9"}),
        "walker": variant("walker.hdf5", {"env_id": "Walker2d-v5"}),
        "cartpole_obs": variant("cartpole-obs.hdf5", {"env_id": "CartPole-v1"}),
        "cartpole_actions": _hdf5(root / "cartpole-actions.hdf5", cart, {"env_id": "CartPole-v1"}),
        "outside": variant("outside.hdf5", actions=outside),
        "nobounds": variant("nobounds.hdf5", terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool)),
        "lunar": variant("lunar.hdf5", {"env_id": "LunarLander-v3"}),
        "nan_obs": variant("nan-obs.hdf5", observations=nan_obs),
        "no_rewards": _hdf5(root / "no-rewards.hdf5", {k: v for k, v in base.items() if k != "rewards"}, hopper),
        "short_actions": variant("short-actions.hdf5", actions=base["actions"][:-3]),
        "garbage": str(garbage),
        "not_minari": str(root / "not-minari"),
    }


def make_configs(root: Path) -> dict[str, str]:
    files = {
        "bad_yaml": "steps: [1, 2\n",
        "list_yaml": "- steps\n- 2\n",
        "unknown_yaml": "no_such_key: 1\n",
    }
    out = {}
    for name, text in files.items():
        (root / f"{name}.yaml").write_text(text)
        out[name] = str(root / f"{name}.yaml")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00steps: 1")
    out["binary_yaml"] = str(root / "binary.yaml")
    return out


def corrupt_checkpoints(root: Path, good: Path) -> dict[str, str]:
    """Copies of the checkpoint `good`, each broken in one way."""
    out = {}

    def copy(name: str) -> Path:
        path = root / name
        shutil.copytree(good, path)
        out[name] = str(path)
        return path

    (copy("meta_list") / "meta.json").write_text("[1, 2, 3]")
    (copy("meta_binary") / "meta.json").write_bytes(b"\xff\xfe\x00{}")
    (copy("meta_truncated") / "meta.json").write_text('{"kind": "decis')
    weights = copy("weights_truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    meta_path = copy("unknown_kind") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "kind": "dqn"}))
    (copy("no_weights") / "model.safetensors").unlink()
    return out


def make_run_folders(root: Path) -> dict[str, str]:
    """Run and compare folders whose JSON files are not objects."""
    run = root / "run-list-config"
    run.mkdir()
    (run / "config.json").write_text("[]")
    binary = root / "run-binary-config"
    binary.mkdir()
    (binary / "config.json").write_bytes(b"\xff\xfe")
    grid = root / "grid-list"
    grid.mkdir()
    (grid / "grid.json").write_text('"a string"')
    return {"run_list_config": str(run), "run_binary_config": str(binary), "grid_list": str(grid)}


def make_bad_inputs(root: Path, tiny_hopper: Path, decision_ckpt: Path, ppo_run: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {"root": str(root), "decision": str(decision_ckpt), "ppo_run": str(ppo_run)}
    paths["ppo"] = str(ppo_run / "checkpoints" / "last")
    for sub, make in (("data", None), ("configs", make_configs), ("ckpts", None), ("runs", make_run_folders)):
        (root / sub).mkdir()
        if make is not None:
            paths.update(make(root / sub))
    good = export_hdf5(load_dataset(str(tiny_hopper)), root / "data" / "good.hdf5")
    paths.update(make_datasets(root / "data", good))
    paths.update(corrupt_checkpoints(root / "ckpts", decision_ckpt))
    a_file = root / "a-file.txt"
    a_file.write_text("not a directory")
    a_dir = root / "a-dir"
    a_dir.mkdir()
    paths.update(file=str(a_file), dir=str(a_dir), missing=str(root / "missing"))
    return paths
