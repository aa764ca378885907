"""The bad-input table: every CLI command answers bad input with one line naming the culprit, exit code 2,
no traceback (issue 22). Classes: options, configs, datasets, checkpoints, run/compare folders, outputs,
envs, optional packages. Each case runs `recurrl` in-process; one runs it as a real process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs import BAD_SHAPE_ENV, make_bad_inputs, register_bad_shape_env
from tiny_agents import decision_checkpoint, ppo_checkpoint

from recurrl.scripts.cli import main

register_bad_shape_env()
MISSING = {name: importlib.util.find_spec(name) is None for name in ("Box2D", "huggingface_hub", "d3rlpy")}
R = "--runs-dir {root}/train-runs"  # train cases write nothing outside the test's folder
P = "--run-dir {root}/ppo-runs/x"
COLLECT = "collect --env Hopper-v5 --policy random --datasets-path {root}/minari"

# (id, command line, what the error line must name). {name}: a path from make_bad_inputs.
CASES: list[tuple[str, str, list[str]]] = [
    # ---- numeric options: checked when parsed
    ("train-steps-negative", "train --steps -1", ["--steps", "'-1'"]),
    ("train-seed-negative", "train --seed -3", ["--seed", "'-3'"]),
    ("train-target-nan", "train --target-return nan", ["--target-return", "'nan'"]),
    ("train-target-inf", "train --target-return inf", ["--target-return", "'inf'"]),
    ("evaluate-episodes-zero", "evaluate {decision} --episodes 0", ["--episodes", "'0'"]),
    ("evaluate-num-envs-negative", "evaluate {decision} --num-envs -2", ["--num-envs", "'-2'"]),
    ("evaluate-target-inf", "evaluate {decision} --target-returns 100 inf", ["--target-returns", "'inf'"]),
    ("evaluate-context-zero", "evaluate {decision} --context-length 0", ["--context-length"]),
    ("evaluate-seed-negative", "evaluate {decision} --seeds -1", ["--seeds", "'-1'"]),
    ("evaluate-threads-negative", "evaluate {decision} --threads -1", ["--threads"]),
    ("compare-workers-zero", "compare --datasets {good} --workers 0", ["--workers", "'0'"]),
    ("compare-episodes-zero", "compare --datasets {good} --episodes 0", ["--episodes"]),
    ("probe-segments-zero", "probe {decision} --segments 0", ["--segments"]),
    ("probe-scale-nan", "probe {decision} --scales 0 nan", ["--scales", "'nan'"]),
    ("ppo-total-steps-zero", "train-ppo --total-steps 0", ["--total-steps", "'0'"]),
    ("ppo-seed-negative", "train-ppo --seed -1", ["--seed"]),
    ("bench-ppo-repeats-zero", "bench ppo throughput --repeats 0", ["--repeats"]),
    ("collect-noise-negative", COLLECT + " --noise -0.1", ["--noise", "'-0.1'"]),
    ("collect-noise-nan", COLLECT + " --noise nan", ["--noise", "'nan'"]),
    ("collect-steps-zero", COLLECT + " --steps 0", ["--steps"]),
    ("collect-num-envs-zero", COLLECT + " --num-envs 0", ["--num-envs"]),
    ("collect-workers-zero", COLLECT + " --workers 0", ["--workers"]),
    ("bench-budget-nan", "bench backbones --budget nan", ["--budget", "'nan'"]),
    ("bench-repeats-zero", "bench backbones --repeats 0", ["--repeats"]),
    ("bench-seq-lens-zero", "bench backbones --seq-lens 0,64", ["--seq-lens", "0,64"]),
    ("bench-decision-batch-zero", "bench decision tick --batch 0", ["--batch"]),
    ("bench-decision-width-negative", "bench decision train --hidden-dim -4", ["--hidden-dim"]),
    ("bench-decision-widths-form", "bench decision train --widths lstm", ["--widths", "BACKBONE=WIDTH"]),
    ("bench-decision-widths-stray", "bench decision train --widths gru=8", ["--widths", "gru", "--backbones"]),
    ("bench-without-what", "bench", ["WHAT"]),
    ("export-ticks-zero", "export {decision} {root}/p.onnx --ticks 0", ["--ticks"]),
    ("export-target-nan", "export {decision} {root}/p.onnx --target-return nan", ["--target-return"]),
    ("unknown-option", "train --no-such-option", ["--no-such-option"]),
    # ---- configs: key=value overrides and YAML files
    ("config-lr-nan", f"train {R} lr=nan", ["lr", "finite"]),
    ("config-lr-negative", f"train {R} lr=-1", ["lr must be positive"]),
    ("config-dropout", f"train {R} model.dropout=1.5", ["model.dropout"]),
    ("config-batch-zero", f"train {R} batch_size=0", ["batch_size"]),
    ("config-target-inf", f"train {R} eval.target_returns=[.inf]", ["eval.target_returns", "finite"]),
    ("config-ppo-ent-negative", f"train-ppo {P} ent_coef=-0.1", ["ent_coef"]),
    ("config-ppo-gamma-nan", f"train-ppo {P} gamma=.nan", ["gamma", "finite"]),
    ("config-ppo-grad-norm-zero", f"train-ppo {P} max_grad_norm=0", ["max_grad_norm"]),
    ("config-unknown-key", f"train {R} no_such_key=1", ["no_such_key"]),
    ("config-wrong-type", f"train {R} model.hidden_dim=abc", ["model.hidden_dim", "'abc'"]),
    ("config-not-key-value", f"train {R} steps", ["'steps'", "key=value"]),
    ("config-bad-yaml", f"train {R} --config {{bad_yaml}}", ["bad_yaml.yaml", "YAML"]),
    ("config-list-yaml", f"train {R} --config {{list_yaml}}", ["list_yaml.yaml", "mapping"]),
    ("config-binary-yaml", f"train {R} --config {{binary_yaml}}", ["binary.yaml"]),
    ("config-unknown-yaml-key", f"train {R} --config {{unknown_yaml}}", ["no_such_key"]),
    ("config-missing", f"train {R} --config no-such-preset", ["no-such-preset"]),
    ("config-ppo-missing", f"train-ppo {P} --config {{missing}}.yaml", ["missing.yaml"]),
    # ---- datasets
    ("dataset-no-env-id", "dataset info {noenv}", ["noenv.hdf5", "--env-id"]),
    ("train-dataset-no-env-id", f"train {R} --dataset {{noenv}}", ["noenv.hdf5", "--env-id"]),
    ("dataset-unregistered-env", "dataset info {unregistered}", ["NoSuchEnv-v9", "not registered"]),
    ("train-dataset-unregistered-env", f"train {R} --dataset {{unregistered}}", ["NoSuchEnv-v9"]),
    ("dataset-env-id-unregistered", "dataset info {good} --env-id NoSuch-v0", ["NoSuch-v0"]),
    ("dataset-obs-mismatch", "dataset info {walker}", ["Walker2d-v5", "(11,)", "(17,)", "observation space"]),
    ("dataset-obs-mismatch-cartpole", "dataset info {cartpole_obs}", ["CartPole-v1", "(11,)", "(4,)"]),
    ("dataset-actions-vs-discrete", "dataset info {cartpole_actions}", ["(3,)", "Discrete(2)"]),
    ("dataset-actions-outside", "dataset info {outside}", ["action[0] = 3", "--clip-actions"]),
    ("train-actions-outside", f"train {R} --dataset {{outside}}", ["outside.hdf5", "--clip-actions"]),
    ("dataset-nan-observations", "dataset info {nan_obs}", ["nan-obs.hdf5", "NaN"]),
    ("dataset-missing-key", "dataset info {no_rewards}", ["no-rewards.hdf5", "rewards"]),
    ("dataset-mismatched-lengths", "dataset info {short_actions}", ["short-actions.hdf5", "mismatched lengths"]),
    ("dataset-corrupt-file", "dataset info {garbage}", ["garbage.hdf5", "corrupt"]),
    ("dataset-not-minari-dir", "dataset info {not_minari}", ["not-minari", "not a Minari dataset"]),
    ("dataset-missing-file", "dataset info {missing}.hdf5", ["missing.hdf5"]),
    ("dataset-unknown-id", "dataset info nobody/nothing-v0", ["nobody/nothing-v0", "not found"]),
    ("compare-dataset-no-env-id", "compare --datasets {noenv} --out {root}/cmp", ["noenv.hdf5", "--env-id"]),
    ("probe-dataset-other-env", "probe {decision} --dataset {walker}", ["Walker2d-v5"]),
    # ---- checkpoints and run directories
    ("ckpt-meta-not-object", "evaluate {meta_list}", ["meta.json", "not an object"]),
    ("ckpt-meta-not-utf8", "evaluate {meta_binary}", ["meta.json", "corrupt"]),
    ("ckpt-meta-truncated", "evaluate {meta_truncated}", ["meta.json", "corrupt"]),
    ("ckpt-weights-truncated", "evaluate {weights_truncated}", ["model.safetensors"]),
    ("ckpt-weights-missing", "evaluate {no_weights}", ["model.safetensors", "missing"]),
    ("ckpt-unknown-kind", "evaluate {unknown_kind}", ["'dqn'"]),
    ("ckpt-missing", "evaluate {missing}", ["missing", "does not exist"]),
    ("ckpt-is-a-file", "evaluate {file}", ["a-file.txt", "not a checkpoint"]),
    ("evaluate-stochastic-decision", "evaluate {decision} --stochastic", ["--stochastic", "PPO"]),
    ("probe-meta-not-object", "probe {meta_list}", ["meta.json", "not an object"]),
    ("probe-ppo-checkpoint", "probe {ppo}", ["ppo"]),
    ("export-meta-not-object", "export {meta_list} {root}/p.onnx", ["meta.json", "not an object"]),
    ("train-resume-ppo-run", f"train {R} --resume {{ppo_run}}", ["is a ppo run", "train-ppo --resume"]),
    ("train-resume-missing", "train --resume {missing}", ["missing"]),
    ("train-resume-list-config", "train --resume {run_list_config}", ["config.json", "not an object"]),
    ("ppo-resume-binary-config", "train-ppo --resume {run_binary_config}", ["config.json"]),
    ("plot-list-config", "plot {run_list_config} -o {root}/c.png", ["config.json", "not an object"]),
    ("plot-missing-run", "plot {missing} -o {root}/c.png", ["missing", "does not exist"]),
    ("compare-report-list-grid", "compare --report {grid_list}", ["grid.json", "not an object"]),
    ("compare-report-not-a-grid", "compare --report {dir}", ["a-dir", "grid.json"]),
    # ---- outputs: a file where a directory is expected, and the reverse
    ("train-runs-dir-is-file", "train --runs-dir {file}", ["a-file.txt"]),
    ("ppo-run-dir-is-file", "train-ppo --run-dir {file}", ["a-file.txt", "is a file"]),
    ("evaluate-output-is-dir", "evaluate {decision} --output {dir}", ["--output", "a-dir", "directory"]),
    ("evaluate-output-under-file", "evaluate {decision} --output {file}/r.json", ["a-file.txt", "is a file"]),
    ("evaluate-plot-not-png", "evaluate {decision} --plot {root}/s.jpg", [".png"]),
    ("probe-output-is-dir", "probe {decision} --output {dir}", ["--output", "a-dir"]),
    ("export-output-is-dir", "export {decision} {dir}", ["a-dir"]),
    ("export-output-not-onnx", "export {decision} {root}/p.txt", ["p.txt", ".onnx"]),
    ("dataset-export-to-dir", "dataset export {good} {dir}", ["a-dir", "directory"]),
    ("dataset-export-under-file", "dataset export {good} {file}/x.hdf5", ["a-file.txt", "is a file"]),
    ("plot-output-is-dir", "plot {ppo_run} -o {dir}", ["a-dir"]),
    ("plot-output-suffix", "plot {ppo_run} -o {root}/c.gif", ["c.gif"]),
    ("plot-run-is-file", "plot {file}", ["a-file.txt", "is a file"]),
    ("compare-out-is-file", "compare --datasets {good} --out {file}", ["--out", "a-file.txt"]),
    ("bench-out-is-file", "bench backbones --out {file}", ["--out", "a-file.txt"]),
    ("collect-datasets-path-is-file", "collect --env Hopper-v5 --policy random --datasets-path {file}", ["a-file.txt"]),
    ("collect-export-is-dir", COLLECT + " --export-hdf5 {dir}", ["--export-hdf5", "a-dir"]),
    ("evaluate-video-is-file", "evaluate {decision} --video {file}", ["--video", "a-file.txt"]),
    ("evaluate-video-episodes-zero", "evaluate {decision} --video {dir} --video-episodes 0", ["--video-episodes"]),
    ("collect-policy-not-sb3", COLLECT + " --policy {file}", ["a-file.txt", "not a Stable-Baselines3 model zip"]),
    ("collect-ref-score-alone", COLLECT + " --ref-max-score 10", ["--ref-min-score", "both"]),
    ("collect-ref-scores-equal", COLLECT + " --ref-min-score 1 --ref-max-score 1", ["must differ"]),
    # ---- envs
    ("ppo-unknown-env", f"train-ppo {P} --env NoSuchEnv-v0", ["NoSuchEnv-v0"]),
    ("ppo-wrong-obs-shape", f"train-ppo {P} --env {BAD_SHAPE_ENV} --backbone mlp", ["shape (5,)", "(4,)"]),
    ("collect-unknown-env", "collect --env NoSuch-v1 --policy random --steps 10", ["'NoSuch-v1'", "--env"]),
    ("collect-unknown-policy", COLLECT + " --policy nope", ["'nope'"]),
    ("collect-zoo-env", "collect --env Ant-v5 --policy sac --steps 10", ["Ant-v5"]),
    ("compare-online-unknown-env", "compare --online --envs NoSuchEnv-v0 --out {root}/cmp2", ["NoSuchEnv-v0"]),
    ("compare-unknown-backbone", "compare --datasets {good} --backbones rwkv --out {root}/cmp3", ["rwkv"]),
    ("train-unknown-backbone", f"train {R} --backbone rwkv", ["rwkv"]),
]
# Cases that depend on what is installed here.
if MISSING["Box2D"]:
    CASES += [
        ("dataset-env-missing-dependency", "dataset info {lunar}", ["LunarLander-v3", "Box2D"]),
        ("ppo-env-missing-dependency", f"train-ppo {P} --env LunarLander-v3", ["LunarLander-v3", "Box2D"]),
    ]
if MISSING["huggingface_hub"]:
    CASES.append(("download-extra", "dataset info nobody/nothing-v0 --download", ["recurrl[download]"]))
if MISSING["d3rlpy"]:
    CASES.append(("d3rlpy-missing", "bench decision d3rlpy --dataset {good}", ["d3rlpy"]))


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory, tiny_hopper_dataset_path: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    ckpt = decision_checkpoint(root / "decision", tiny_hopper_dataset_path, "mingru")
    ppo_checkpoint(root / "ppo-run")
    return make_bad_inputs(root / "inputs", tiny_hopper_dataset_path, ckpt, root / "ppo-run")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("recurrl"), err
    return lines[0]


@pytest.mark.parametrize(("command", "culprits"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit(command, culprits, paths, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything written by default goes here
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    before = set(Path(paths["root"]).rglob("*"))
    code, _, err = run_cli(command.format(**paths).split(), capsys)
    line = error_line(err)
    assert code == 2, err
    for culprit in culprits:
        assert culprit in line, f"{culprit!r} not in: {line}"
    leftovers = [p for p in set(Path(paths["root"]).rglob("*")) - before if ".tmp" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_the_table_covers_every_command_and_enough_cases():
    assert len(CASES) >= 60
    commands = {case[1].split()[0] for case in CASES}
    assert commands >= {"train", "evaluate", "compare", "probe", "train-ppo", "dataset", "collect", "bench",
                        "export", "plot"}  # fmt: skip


def test_missing_optional_package_names_its_extra(paths, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    code, _, err = run_cli(["export", paths["decision"], f"{paths['root']}/p.onnx"], capsys)
    assert code == 2 and "recurrl[export]" in error_line(err)


def test_warnings_are_one_line_and_the_load_goes_on(paths, capsys):
    code, out, err = run_cli(["dataset", "info", paths["nobounds"]], capsys)
    assert code == 0 and "episodes     1 " in out
    assert "recurrl dataset: warning:" in err and "'terminals' or 'timeouts'" in err and "Traceback" not in err
    code, out, err = run_cli(["dataset", "info", paths["outside"], "--clip-actions"], capsys)
    assert code == 0 and "clipped 1 action value(s)" in err


def test_env_id_option_names_the_env_of_a_dataset_without_one(paths, capsys):
    from recurrl.scripts.train import build_config

    code, out, _ = run_cli(["dataset", "info", paths["noenv"], "--env-id", "Hopper-v5", "--json"], capsys)
    assert code == 0 and '"env_id": "Hopper-v5"' in out
    from recurrl.agents.decision.trainer import load_training_dataset
    from recurrl.scripts.cli import build_parser

    args = build_parser().parse_args(["train", "--dataset", paths["noenv"], "--env-id", "Hopper-v5", "--clip-actions"])
    config, _ = build_config(args)
    assert (config.env_id, config.clip_actions) == ("Hopper-v5", True)
    assert load_training_dataset(config.dataset, config.env_id).env_id == "Hopper-v5"


def test_real_process_exit_code_and_debug_traceback(paths):
    """Exit code 2 and no traceback from the installed command; RECURRL_DEBUG=1 shows the traceback."""
    command = [sys.executable, "-m", "recurrl", "evaluate", paths["meta_list"]]
    env = {k: v for k, v in os.environ.items() if k != "RECURRL_DEBUG"}
    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("recurrl evaluate: error:")
    debug = subprocess.run(command, capture_output=True, text=True, env={**env, "RECURRL_DEBUG": "1"}, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def test_clip_actions_clips_to_the_bounds_and_warns(paths):
    import numpy as np

    from recurrl.envs.dataset_checks import DataWarning
    from recurrl.envs.datasets import load_dataset

    with pytest.warns(DataWarning, match="clipped 1 action value"):
        dataset = load_dataset(paths["outside"], clip_actions=True)
    actions = np.concatenate([e.actions for e in dataset.episodes])
    assert actions.max() == 1.0 and actions.min() >= -1.0
    with pytest.warns(DataWarning, match="read as one episode"):
        assert len(load_dataset(paths["nobounds"]).episodes) == 1
