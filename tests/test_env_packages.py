"""Env packages (`--env-package MODULE`, `MODULE:ENV_ID`) and PPO on structured observations.

tests/envpkgs/tiny_structured_envs.py is an env package written for these tests (Dict, Tuple and Text
observations); popgym is a real one from PyPI (memory tasks with Discrete / MultiDiscrete / Tuple
observations). "Fresh" checks run in a new process, where nothing has imported the package yet: only
the checkpoint's recorded env_packages can bring it in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from tiny_agents import one_thread, ppo_checkpoint, single_env_returns, vector_env_returns

import recurrl
from recurrl.agents.compare.grid import Grid
from recurrl.agents.ppo.evaluation import evaluate_ppo_checkpoint
from recurrl.envs.packages import env_packages_for, import_env_packages, split_env_id
from recurrl.envs.vector import flatten_observations, make_vector_env
from recurrl.scripts.cli import main

PACKAGES = Path(__file__).parent / "envpkgs"
TINY = "tiny_structured_envs"
MISSING = "recurrl_no_such_env_package"
TINY_PPO = [
    "num_envs=4",
    "num_steps=16",
    "num_minibatches=2",
    "update_epochs=1",
    "hidden_dim=16",
    "head_hidden=16",
]


@pytest.fixture(scope="module", autouse=True)
def tiny_package_importable() -> Iterator[None]:
    """tests/envpkgs on sys.path for this module's in-process tests (subprocesses get PYTHONPATH)."""
    sys.path.insert(0, str(PACKAGES))
    with one_thread():
        yield
    sys.path.remove(str(PACKAGES))


def recurrl_cli(*args: str, cwd: Path, with_packages: bool = True) -> subprocess.CompletedProcess:
    """`python -m recurrl ARGS` in a fresh process; tests/envpkgs importable only `with_packages`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RECURRL_DEBUG", None)
    env["PYTHONPATH"] = str(PACKAGES) if with_packages else ""
    cmd = [sys.executable, "-m", "recurrl", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def train_ppo_cli(tmp_path: Path, env: str, *extra: str, steps: int = 64) -> Path:
    run_dir = tmp_path / "run"
    args = ["train-ppo", "--env", env, *extra, "--run-dir", str(run_dir), "--no-progress"]
    assert main([*args, "--total-steps", str(steps), *TINY_PPO]) == 0
    return run_dir


# ----------------------------------------------------------------------------- importing
def test_module_names_from_options_and_env_ids() -> None:
    assert split_env_id("pkg.envs:My-v0") == ("pkg.envs", "My-v0")
    assert split_env_id("CartPole-v1") == (None, "CartPole-v1")
    assert env_packages_for("pkg.envs:My-v0", ["a", "pkg.envs"]) == ["a", "pkg.envs"]
    assert env_packages_for("a:My-v0", ["b"]) == ["b", "a"]
    assert import_env_packages([TINY, TINY]) == [TINY]
    assert "CueMemory-v0" in gym.registry


@pytest.mark.parametrize(
    "command",
    [
        ["train-ppo", "--env", "X-v0"],
        ["evaluate", "runs/none"],
        ["collect", "--env", "X-v0", "--policy", "random"],
        ["compare", "--online", "--envs", "X-v0"],
        ["train"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("module", [MISSING, "needs_missing_dependency"])
def test_a_missing_package_or_dependency_is_one_line(
    command: list[str],
    module: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere else
    assert main([*command, "--env-package", module]) == 2
    err = capsys.readouterr().err
    missing = MISSING if module == MISSING else "recurrl_test_absent_dependency"
    assert err == (
        f"recurrl {command[0]}: error: --env-package {module}: cannot import {module} "
        f"(No module named '{missing}'); install it or check the name\n"
    )
    assert not list(tmp_path.iterdir())


def test_an_unimportable_module_in_an_env_id_is_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    assert main(["train-ppo", "--env", f"{MISSING}:X-v0", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (
        f"recurrl train-ppo: error: env '{MISSING}:X-v0': module {MISSING}: cannot import {MISSING} "
        f"(No module named '{MISSING}'); install it or check the name"
    )


# ----------------------------------------------------------------------------- flattening
def test_observations_flatten_as_gymnasiums_wrapper_does() -> None:
    envs = make_vector_env("CueMemory-v0", 3, flatten_obs=True)
    raw_envs = make_vector_env("CueMemory-v0", 3)
    flat, _ = envs.reset(seed=4)
    raw, _ = raw_envs.reset(seed=4)
    space = raw_envs.single_observation_space
    assert envs.single_observation_space.shape == (5,)  # one-hot cue (3) + noise (2)
    np.testing.assert_array_equal(flatten_observations(space, raw), flat)  # a vector env's batch
    rows = [{"cue": raw["cue"][i], "noise": raw["noise"][i]} for i in range(3)]
    np.testing.assert_array_equal(flatten_observations(space, rows), flat)  # a list of observations
    np.testing.assert_array_equal(flatten_observations(space, rows[1]), flat[1])  # one
    assert flat[:, :3].sum(axis=1).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="not in the env's observation space"):
        flatten_observations(space, [{"cue": 7, "noise": np.zeros(2, np.float32)}])
    envs.close()
    raw_envs.close()


def test_a_text_part_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"but observation\['mission'\] \(Text\) is not one of them"):
        make_vector_env("Mission-v0", 2, flatten_obs=True)


@pytest.mark.parametrize("env_id", ["CueMemory-v0", "TupleSignal-v0"], ids=["dict-discrete", "tuple-box"])
def test_predict_on_raw_observations_matches_the_evaluator(tmp_path: Path, env_id: str) -> None:
    ckpt = ppo_checkpoint(tmp_path / "run", env_id, env_packages=[TINY])
    agent = recurrl.load(ckpt)
    assert agent.observation_space is not None  # the raw structured space, to flatten with
    ref = evaluate_ppo_checkpoint(ckpt, episodes=3, seeds=(2,), num_envs=1)["returns"]
    assert single_env_returns(agent, 3, seed=2) == ref  # one raw observation per predict
    ref = evaluate_ppo_checkpoint(ckpt, episodes=4, seeds=(1,), num_envs=2)["returns"]
    assert vector_env_returns(agent, make_vector_env(env_id, 2), 4, seed=1) == ref  # raw batches


def test_export_takes_the_flattened_observation(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from recurrl.agents.export import export_onnx

    agent = recurrl.load(ppo_checkpoint(tmp_path / "run", "CueMemory-v0", env_packages=[TINY]))
    info = export_onnx(agent, tmp_path / "step.onnx")
    assert info["inputs"][0]["shape"][1] == 5 and "spaces.flatten" in info["inputs"][0]["meaning"]
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    env = agent.make_env()
    obs, _ = env.reset(seed=0)
    state_shape = [1, *info["inputs"][2]["shape"][1:]]
    flat = gym.spaces.flatten(env.observation_space, obs).astype(np.float32)[None]
    feeds = {
        "observation": flat,
        "episode_start": np.array([True]),
        "state.actor.0": np.zeros(state_shape, np.float32),
    }
    action, _ = agent.predict(obs)
    assert session.run(None, feeds)[0][0] == action


# ----------------------------------------------------------------------------- the CLI end to end
def test_train_ppo_records_the_package_and_a_fresh_evaluate_imports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = train_ppo_cli(tmp_path, "CueMemory-v0", "--env-package", TINY)
    note = capsys.readouterr().err
    assert "note: no PPO preset for CueMemory-v0 (configs/ppo/); training with the PPOConfig defaults" in note
    assert "num_envs=4, num_steps=16" in note
    assert json.loads((run_dir / "config.json").read_text())["env_packages"] == [TINY]
    ckpt = str(run_dir / "checkpoints" / "last")
    done = recurrl_cli("evaluate", ckpt, "--episodes", "2", "--num-envs", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[ppo, CueMemory-v0, mingru, deterministic] return" in done.stdout
    # Where the package cannot be imported, the checkpoint's record of it says so in one line.
    done = recurrl_cli("evaluate", ckpt, cwd=tmp_path, with_packages=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (
        f"recurrl evaluate: error: {ckpt}: env package {TINY}: cannot import {TINY} "
        f"(No module named '{TINY}'); install it or check the name\n"
    )


def test_recurrl_load_in_a_fresh_process_imports_the_package(tmp_path: Path) -> None:
    ckpt = ppo_checkpoint(tmp_path / "run", "CueMemory-v0", env_packages=[TINY])
    script = f"""
import sys, recurrl
assert "{TINY}" not in sys.modules
agent = recurrl.load("{ckpt}")
assert "{TINY}" in sys.modules
env = agent.make_env()
obs, _ = env.reset(seed=0)
action, state = agent.predict(obs)
print(type(obs).__name__, int(action))
"""
    env = {**os.environ, "PYTHONPATH": str(PACKAGES), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    kind, action = done.stdout.split()
    assert kind == "dict" and action in ("0", "1")


def test_module_colon_env_id_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["train-ppo", "--env", f"{TINY}:TupleSignal-v0", "--no-progress", "--total-steps", "64"]
    assert main([*args, *TINY_PPO]) == 0
    (run_dir,) = (tmp_path / "runs" / "ppo").iterdir()
    assert run_dir.name.startswith("TupleSignal-v0-mingru-s1-")  # no 'module:' in the folder name
    done = recurrl_cli("evaluate", str(run_dir), "--episodes", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"[ppo, {TINY}:TupleSignal-v0, mingru, deterministic] return" in done.stdout


def test_compare_passes_the_packages_to_every_cell(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--online", "--env-package", TINY, "--envs", "CueMemory-v0", f"{TINY}:TupleSignal-v0"]
    assert main([*args, "--backbones", "mlp", "--seeds", "0", "--out", str(out), "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(f"--env-package {TINY} " in line for line in lines)
    grid = Grid(out=out, tasks=["CueMemory-v0"], backbones=["mlp"], seeds=[0], online=True)
    assert "env_packages" not in grid.settings()  # grid.json files from before the option still match
    grid.env_packages = [TINY]
    assert grid.settings()["env_packages"] == [TINY]
    cell = grid.train_args(grid.cells()[0], resume=True)
    assert cell[cell.index("--env-package") + 1] == TINY


def test_collect_and_the_decision_agent_with_a_package(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    collect = ["collect", "--env-package", TINY, "--policy", "random", "--episodes", "3", "--num-envs", "2"]
    collect += ["--datasets-path", str(tmp_path / "data"), "--no-progress"]
    assert main([*collect, "--env", "CueMemory-v0"]) == 2
    assert "collect records array observations" in capsys.readouterr().err
    assert main([*collect, "--env", f"{TINY}:CueBox-v0"]) == 0
    dataset = tmp_path / "data" / "recurrl" / "cuebox" / "random-v0"  # the bare id in the dataset id
    train = ["train", "--env-package", TINY, "--dataset", str(dataset), "--steps", "2", "--runs-dir", "runs"]
    train += ["--run-name", "dt", "--no-progress", "eval.every=0", "eval.episodes=1", "eval.num_envs=1"]
    assert main([*train, "batch_size=4", "context_length=4", "model.hidden_dim=16"]) == 0
    config = json.loads((tmp_path / "runs" / "dt" / "config.json").read_text())
    assert config["env_packages"] == [TINY]
    agent = recurrl.load(tmp_path / "runs" / "dt")
    assert agent.make_env().observation_space.shape == (3,)
    ckpt = str(tmp_path / "runs" / "dt" / "checkpoints" / "last")
    done = recurrl_cli("evaluate", ckpt, "--episodes", "1", "--num-envs", "1", cwd=tmp_path)  # fresh
    assert done.returncode == 0, done.stderr
    assert f"{ckpt} [stateful, step 2] target" in done.stdout


# ----------------------------------------------------------------------------- a package from PyPI
@pytest.mark.parametrize(
    "env_id", ["popgym-RepeatPreviousEasy-v0", "popgym-AutoencodeEasy-v0"], ids=["discrete", "tuple"]
)
def test_popgym_trains_and_evaluates_through_env_package(
    tmp_path: Path, capsys: pytest.CaptureFixture, env_id: str
) -> None:
    run_dir = train_ppo_cli(tmp_path, env_id, "--env-package", "popgym", steps=256)
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 256
    capsys.readouterr()
    assert (
        main(["evaluate", str(run_dir / "checkpoints" / "last"), "--episodes", "2", "--num-envs", "2"]) == 0
    )
    assert f"[ppo, {env_id}, mingru, deterministic] return" in capsys.readouterr().out
