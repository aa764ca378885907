"""The package installs as one `recurrl` namespace: the wheel holds nothing else at the top level, and an
installed wheel trains from a directory outside the repo (presets and the embedded dataset are package data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_exposes_version_and_api():
    import recurrl

    assert recurrl.__version__ == "0.1.0"
    from recurrl.policies.backbones import make_backbone

    assert recurrl.make_backbone is make_backbone
    assert {"load_dataset", "DecisionTrainer", "DecisionConfig", "PPOConfig"} <= set(dir(recurrl))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = recurrl.nope


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "recurrl", "--help"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "evaluate" in out.stdout


def test_every_subpackage_is_listed_for_the_wheel():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"recurrl"} | {
        "recurrl." + ".".join(p.parent.relative_to(REPO).parts)
        for p in REPO.glob("*/**/__init__.py")
        if p.parts[len(REPO.parts)] in ("agents", "policies", "envs", "configs", "scripts")
    }
    assert found == listed, found ^ listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)]
    had_build = (REPO / "build").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    if not had_build:  # setuptools leaves build/ in the source tree
        shutil.rmtree(REPO / "build", ignore_errors=True)
    (path,) = out.glob("recurrl-*.whl")
    return path


@pytest.mark.slow
def test_wheel_installs_only_recurrl(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"recurrl", f"recurrl-{wheel.name.split('-')[1]}.dist-info"}, tops
    assert "recurrl/configs/decision/hopper-medium.yaml" in names
    assert "recurrl/envs/data/hopper-medium-v0/data/main_data.hdf5" in names
    assert not any(name.startswith("recurrl/tests/") or "/.venv/" in name for name in names)


@pytest.mark.slow
def test_wheel_trains_outside_the_repo(wheel: Path, tmp_path: Path):
    # A fresh venv whose dependencies come from this one (a .pth line: no download, and no editable
    # finder, since .pth files in an added path are not run), with recurrl from the wheel only.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    zipfile.ZipFile(wheel).extractall(site)  # installing a pure wheel is unpacking it into site-packages
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [python, "-c", "import recurrl.agents, recurrl.configs; print(recurrl.agents.__file__)"],
        capture_output=True, text=True, cwd=work, check=True,
    ).stdout
    assert where.startswith(site), where
    run = subprocess.run(
        [python, "-m", "recurrl", "train", "--config", "hopper-medium", "--steps", "20", "--no-progress",
         "eval.every=0", "eval.episodes=1", "model.hidden_dim=16", "model.num_layers=1", "batch_size=8", "eval.target_returns=[3600]"],
        capture_output=True, text=True, cwd=work, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "normalized score (last checkpoint" in run.stdout
    assert (work / "runs").is_dir()
