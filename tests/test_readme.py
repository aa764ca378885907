"""The README's Python example runs end to end (with smaller budgets, so it fits the slow tier)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# The example's training budgets and what the test runs instead (same code path, fewer steps).
BUDGETS = {"DecisionConfig(steps=500)": "DecisionConfig(steps=20)", "total_steps=20_480": "total_steps=1_024"}


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path) -> None:
    code = readme_example()
    for budget, small in BUDGETS.items():
        assert budget in code, f"the README example changed: {budget!r} is gone; update BUDGETS"
        code = code.replace(budget, small)
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.strip().splitlines()
    # The dataset line (episodes, steps, normalized score) and the Decision agent's normalized score.
    episodes, steps, score = printed[0].split()
    assert int(episodes) > 0 and int(steps) > int(episodes) and float(score) == float(score)
    assert any(re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", line.strip()) for line in printed[1:]), printed
    assert (tmp_path / "runs/ppo/demo/checkpoints/last").is_dir()
