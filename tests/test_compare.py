"""`recurrl compare`: a grid of ordinary runs, resumable cell by cell, with one report."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recurrl.agents.compare.report import fill_train_loss, summarize, write_markdown
from recurrl.scripts.cli import main

# A few seconds per cell: tiny model, short training, 2 evaluation episodes.
TINY = ["steps=40", "checkpoint_every=10", "eval.every=20", "eval.episodes=2", "eval.episodes_during_training=1",
        "model.hidden_dim=16", "model.num_layers=1", "batch_size=8"]  # fmt: skip


def compare(*args: str) -> int:
    return main(["compare", "--no-progress", *args])


@pytest.mark.slow
def test_offline_grid_end_to_end(tmp_path: Path, tiny_hopper_dataset_path: Path, capsys):
    out = tmp_path / "grid"
    data = str(tiny_hopper_dataset_path)
    code = compare("--datasets", data, "--backbones", "mingru", "lstm", "--seeds", "0", "1",
                   "--episodes", "2", "--workers", "2", "--out", str(out), *TINY)  # fmt: skip
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "all 4 cells done" in text and text.count("done ") >= 4
    # The runner's own cost is reported against the cells' commands (an upper bound with 2 workers).
    overhead = re.search(r"cells' own commands (\d+) s; runner overhead (-?[\d.]+)%", text)
    assert overhead and float(overhead.group(1)) > 0, text
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["backbone"], r["seed"]) for r in rows) == [("lstm", "0"), ("lstm", "1"), ("mingru", "0"), ("mingru", "1")]
    for row in rows:
        assert row["steps"] == "40"
        for key in ("last_stateful_score", "last_window_score", "best_stateful_score", "train_steps_per_s",
                    "tick_latency_us", "peak_rss_mib", "wall_time_s", "measure_time_s", "parameters",
                    "dataset_score", "final_train_loss"):  # fmt: skip
            assert float(row[key]) == float(row[key]), key  # present and not NaN
        assert float(row["peak_rss_mib"]) > 50 and float(row["tick_latency_us"]) > 0
        assert Path(row["run_dir"], "results.json").is_file()  # each cell is an ordinary train run
    md = (out / "summary.md").read_text()
    assert "| dataset | data | mingru | lstm |" in md and "mean over tasks" in md and "**" in md
    assert "## Training loss (mean of train/loss over the last quarter of the steps" in md
    assert (out / "summary.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"][f"{data}|mingru"]["last_stateful_score"]["n"] == 2

    # The same command again runs nothing; --report rebuilds the same summary from the finished cells.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert compare("--datasets", data, "--backbones", "mingru", "lstm", "--seeds", "0", "1",
                   "--episodes", "2", "--out", str(out), *TINY) == 0  # fmt: skip
    assert "4 already done, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps
    (out / "summary.json").unlink()
    assert compare("--report", str(out)) == 0
    assert json.loads((out / "summary.json").read_text()) == summary


def test_match_params_and_print_commands(tmp_path: Path, tiny_hopper_dataset_path: Path, capsys):
    code = compare("--datasets", str(tiny_hopper_dataset_path), "--backbones", "mingru", "lstm", "transformer",
                   "--seeds", "0", "3", "--match-params", "--print-commands", "--out", str(tmp_path / "g"), *TINY)  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 6 and all(line.startswith("recurrl train --dataset") for line in lines)
    assert all("&& python -m recurrl.agents.compare.measure" in line for line in lines)
    # widths within a few percent of minGRU's parameter count (width 16, one layer)
    counts = captured.err.split("width (parameters): ")[1].split("\n")[0]
    params = [int(part.split("(")[1].rstrip(")").replace(",", "")) for part in counts.split(", ")]
    assert all(abs(p - params[0]) / params[0] < 0.1 for p in params), counts
    assert "model.hidden_dim=16" in lines[0]
    assert not (tmp_path / "g").exists()  # printing commands runs nothing and writes nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbones", "mingru", "nope"], "unknown backbone(s) nope"),
        (["--backbones", "mlp"], "unknown backbone(s) mlp"),
        (["--seeds", "0", "0"], "--seeds names a value twice"),
        (["--workers", "0"], "argument --workers: expected a positive integer, got '0'"),
        (["--episodes", "-1"], "argument --episodes: expected a positive integer, got '-1'"),
        (["not_a_key=3"], "not_a_key"),
        (["--config", "no-such-preset"], "config 'no-such-preset' not found"),
        (["--envs", "CartPole-v1"], "give --datasets"),
    ],
)
def test_bad_grid_input_is_one_line_before_any_cell(tmp_path, tiny_hopper_dataset_path, capsys, args, message):
    out = tmp_path / "g"
    assert compare("--datasets", str(tiny_hopper_dataset_path), "--out", str(out), *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_unknown_dataset_and_env_are_refused(tmp_path, capsys, minari_path):
    assert compare("--datasets", "recurrl/nowhere/medium-v0", "--out", str(tmp_path / "g")) == 2
    assert "dataset 'recurrl/nowhere/medium-v0'" in capsys.readouterr().err
    assert compare("--online", "--envs", "NoSuchEnv-v0", "--out", str(tmp_path / "g")) == 2
    assert "unknown environment id 'NoSuchEnv-v0'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_folder_with_other_settings_is_refused(tmp_path, tiny_hopper_dataset_path, capsys):
    out = tmp_path / "g"
    common = ["--datasets", str(tiny_hopper_dataset_path), "--backbones", "mingru", "--seeds", "0", "--episodes", "1"]
    assert compare(*common, "--out", str(out), *TINY) == 0
    assert compare(*common, "--out", str(out), *TINY[:-1], "batch_size=16") == 2
    err = capsys.readouterr().err
    assert "holds a grid made with other settings" in err and "overrides" in err


@pytest.mark.slow
def test_dataset_without_reference_scores_reports_returns(tmp_path, tiny_pomdp_dataset_path, capsys):
    out = tmp_path / "g"
    assert compare("--datasets", str(tiny_pomdp_dataset_path), "--backbones", "mingru", "--seeds", "0",
                   "--episodes", "1", "--out", str(out), *TINY) == 0  # fmt: skip
    assert "has no reference scores: its cells report raw returns" in capsys.readouterr().err
    md = (out / "summary.md").read_text()
    assert "Return, last checkpoint" in md and "raw returns" in md


@pytest.mark.slow
def test_online_grid(tmp_path, capsys):
    out = tmp_path / "ppo"
    code = compare("--online", "--envs", "CartPoleNoVel-v1", "--backbones", "mingru", "mlp", "--seeds", "0",
                   "--episodes", "2", "--out", str(out), "total_steps=512", "eval_every=256", "eval_episodes=2")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["backbone"] for r in rows} == {"mingru", "mlp"}
    for row in rows:
        assert float(row["final_return"]) > 0 and float(row["env_steps_per_s"]) > 0
        assert row["reward_threshold"] == "475.0"
    assert "Env steps to the reward threshold" in (out / "summary.md").read_text()


def test_summary_marks_the_best_and_needs_every_task_for_the_mean():
    rows = [
        {"kind": "offline", "task": t, "backbone": b, "seed": s, "last_stateful_score": v, "last_window_score": v,
         "best_stateful_score": v, "dataset_score": 10.0}
        for t, b, s, v in [("a", "x", 0, 10.0), ("a", "x", 1, 20.0), ("a", "y", 0, 30.0), ("b", "x", 0, 5.0)]
    ]  # fmt: skip
    summary = summarize(rows)
    assert summary["cells"]["a|x"]["last_stateful_score"] == pytest.approx(
        {"n": 2, "mean": 15.0, "std": 7.0710678, "se": 5.0}
    )
    assert summary["mean_over_tasks"] == {"x": 10.0, "y": None}  # y has no cell on task b
    assert summary["seed_sd"] == pytest.approx({"cells": 1, "sd": 7.0710678})  # only a|x has two seeds


def test_paired_differences_use_only_pairs_both_backbones_have():
    # x - y on (a, 0): 10 - 30, (b, 0): 5 - 1, (b, 1): 8 - 4; (a, 1) has no y and is left out.
    cells = [("a", "x", 0, 10.0), ("a", "x", 1, 20.0), ("a", "y", 0, 30.0), ("b", "x", 0, 5.0), ("b", "y", 0, 1.0),
             ("b", "x", 1, 8.0), ("b", "y", 1, 4.0)]  # fmt: skip
    rows = [{"kind": "offline", "task": t, "backbone": b, "seed": s, "last_stateful_score": v, "last_window_score": v,
             "best_stateful_score": v, "dataset_score": 10.0} for t, b, s, v in cells]  # fmt: skip
    paired = summarize(rows)["paired"]["y"]
    diffs = [-20.0, 4.0, 4.0]
    assert paired["pairs"] == 3 and paired["mean"] == pytest.approx(sum(diffs) / 3)
    assert paired["se"] == pytest.approx(statistics.stdev(diffs) / 3**0.5)


@pytest.mark.slow
def test_killed_grid_resumes_without_rerunning_finished_cells(tmp_path, tiny_hopper_dataset_path):
    """Kill the compare process and its workers mid-grid; the same command finishes every cell,
    re-runs no finished one, and resumes the interrupted one from its checkpoint."""
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "recurrl", "compare", "--no-progress", "--datasets", str(tiny_hopper_dataset_path),
           "--backbones", "mingru", "gru", "--seeds", "0", "--episodes", "1", "--out", str(out),
           *TINY[1:], "steps=400", "eval.every=200"]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        done = list((out / "cells").glob("*__s0.json"))
        gru_ckpt = list((out / "runs").glob("*__gru__s0/checkpoints/last/meta.json"))
        if done and gru_ckpt:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the grid never reached its second cell's first checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)  # the compare process and every cell process with it
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in done}
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not re-run
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 and all(r["steps"] == "400" for r in rows)
    attempts = json.loads(next((out / "cells").glob("*__gru__s0.attempts.json")).read_text())
    assert attempts[-1]["resumed"] is True


def test_loss_table_bolds_the_lowest_and_old_cells_get_the_loss_from_their_run(tmp_path: Path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "runs" / "a__x__s0"
    with SummaryWriter(str(run)) as writer:
        for step in range(10, 110, 10):  # 10 .. 100: the last quarter is steps 80, 90, 100
            writer.add_scalar("train/loss", float(step), step)
    (tmp_path / "cells").mkdir()
    old = {"kind": "offline", "task": "a", "backbone": "x", "seed": 0, "run_dir": str(run)}
    (tmp_path / "cells" / "a__x__s0.json").write_text(json.dumps(old))
    rows = [dict(old)]
    assert fill_train_loss(tmp_path, rows) == 1
    assert rows[0]["final_train_loss"] == pytest.approx(90.0)
    assert json.loads((tmp_path / "cells" / "a__x__s0.json").read_text())["final_train_loss"] == pytest.approx(90.0)
    assert fill_train_loss(tmp_path, rows) == 0  # filled once

    scores = {"last_stateful_score": 1.0, "last_window_score": 1.0, "best_stateful_score": 1.0}
    rows += [{**old, **scores, "backbone": "y", "final_train_loss": 0.5}, {**old, **scores, "backbone": "z"}]
    rows[0].update(scores)
    write_markdown(summarize(rows), tmp_path / "summary.md", "t")
    md = (tmp_path / "summary.md").read_text()
    table = md.split("## Training loss")[1].split("##")[0]
    assert "| a | 90 ± 0 (n=1) | **0.5 ± 0 (n=1)** | – |" in table
