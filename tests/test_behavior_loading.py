"""Zoo behavior policies load without unpickling: config.yml + policy.pth (weights_only) + VecNormalize
statistics read data-only into a JSON cache; a pickle that needs more runs only with --trust-pickle."""

from __future__ import annotations

import io
import pickle
import types
from pathlib import Path

import numpy as np
import pytest

from recurrl.envs.behavior import behavior_policies_dir, load_behavior_policy, load_obs_normalizer
from recurrl.envs.zoo_files import (
    UnsafePickle,
    literal_policy_kwargs,
    read_vecnormalize_stats,
    read_zoo_config,
)

ZOO = behavior_policies_dir()
needs_zoo = pytest.mark.skipif(
    not (ZOO / "trpo" / "Hopper" / "vecnormalize.pkl").is_file(), reason="behavior policies not found"
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RECURRL_BEHAVIOR_CACHE", str(cache))
    monkeypatch.delenv("RECURRL_TRUST_PICKLE", raising=False)
    return cache


def _fake_agent(root: Path, vecnormalize: bytes) -> Path:
    """root/trpo/Hopper with the real zoo weights and config and the given vecnormalize.pkl."""
    folder = root / "trpo" / "Hopper"
    folder.mkdir(parents=True)
    for name in ("model.zip", "config.yml"):
        (folder / name).symlink_to(ZOO / "trpo" / "Hopper" / name)
    (folder / "vecnormalize.pkl").write_bytes(vecnormalize)
    return root


class _Payload:
    """Unpickling this would run `touch MARKER` (it must never be unpickled without --trust-pickle)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return os.system, (f"touch {self.marker}",)


@needs_zoo
def test_zoo_policy_loads_with_no_pickle_and_weights_only(monkeypatch: pytest.MonkeyPatch, private_cache: Path):
    import cloudpickle  # noqa: F401  (binds `loads = pickle.loads` on import: import it before the patch,
    import torch  # or a first import under the patch would keep `refuse` for every later test)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.load/loads called while loading a behavior policy")

    real_load, calls = torch.load, []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", spy)
    policy = load_behavior_policy("trpo", "Hopper-v5")
    assert calls == [True]
    assert policy.normalizer is not None and policy.normalizer.mean.shape == (11,)
    # The statistics were converted once: the JSON copy is what the next load reads.
    (converted,) = private_cache.glob("vecnormalize-*.json")
    monkeypatch.setattr("recurrl.envs.behavior.read_vecnormalize_stats", refuse)
    again = load_obs_normalizer(ZOO / "trpo" / "Hopper" / "vecnormalize.pkl")
    np.testing.assert_array_equal(again.mean, policy.normalizer.mean)
    obs = np.random.default_rng(0).normal(size=(4, 11))
    np.testing.assert_array_equal(load_behavior_policy("trpo", "Hopper-v5")(obs), policy(obs))
    assert converted.is_file()


@needs_zoo
def test_a_payload_in_vecnormalize_is_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "ran"
    root = _fake_agent(tmp_path / "zoo", pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"posix\.system|os\.system") as error:
        load_behavior_policy("trpo", "Hopper-v5", root=root)
    assert "--trust-pickle" in str(error.value)
    assert not marker.exists()


@needs_zoo
def test_trust_pickle_unpickles_says_so_and_caches_json(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Statistics in classes the data-only reader does not know: refused, then read with trust_pickle."""
    stats = types.SimpleNamespace(
        norm_obs=True,
        obs_rms=types.SimpleNamespace(mean=np.arange(11.0), var=np.ones(11)),
        clip_obs=5.0,
        epsilon=1e-8,
    )
    root = _fake_agent(tmp_path / "zoo", pickle.dumps(stats))
    with pytest.raises(ValueError, match="SimpleNamespace.*--trust-pickle"):
        load_behavior_policy("trpo", "Hopper-v5", root=root)
    policy = load_behavior_policy("trpo", "Hopper-v5", root=root, trust_pickle=True)
    assert "SECURITY: unpickling" in capsys.readouterr().err
    np.testing.assert_array_equal(policy.normalizer.mean, np.arange(11.0))
    # From now on the JSON copy is read: no trust needed, nothing said.
    load_behavior_policy("trpo", "Hopper-v5", root=root)
    assert "SECURITY" not in capsys.readouterr().err


@needs_zoo
def test_collect_cli_refuses_an_unsafe_pickle_in_one_line(tmp_path: Path, monkeypatch, capsys):
    from recurrl.scripts.cli import main

    marker = tmp_path / "ran"
    monkeypatch.setenv("RECURRL_BEHAVIOR_POLICIES", str(_fake_agent(tmp_path / "zoo", pickle.dumps(_Payload(marker)))))
    args = ["collect", "--env", "Hopper-v5", "--policy", "trpo", "--steps", "10", "--datasets-path", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "vecnormalize.pkl" in err and "--trust-pickle" in err and "Traceback" not in err
    assert not marker.exists()


def test_data_only_reader_reads_arrays_and_refuses_callables(tmp_path: Path):
    stats = {"obs_rms": types.SimpleNamespace(mean=np.zeros(3), var=np.ones(3))}
    path = tmp_path / "v.pkl"
    path.write_bytes(pickle.dumps(stats))
    with pytest.raises(UnsafePickle, match="SimpleNamespace"):
        read_vecnormalize_stats(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a VecNormalize pickle"):
        read_vecnormalize_stats(path)


def test_policy_kwargs_are_read_as_literals_only():
    from torch import nn

    text = "dict( log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, net_arch=[dict(pi=[256, 256], vf=[64])] )"
    kwargs = literal_policy_kwargs(text, "config.yml")
    assert kwargs == {
        "log_std_init": -2,
        "ortho_init": False,
        "activation_fn": nn.ReLU,
        "net_arch": [{"pi": [256, 256], "vf": [64]}],
    }
    for bad in ("__import__('os').system('true')", "dict(a=open('x'))", "dict(activation_fn=nn.Module)"):
        with pytest.raises(ValueError, match="evaluates nothing else"):
            literal_policy_kwargs(bad, "config.yml")


def test_zoo_config_yaml_tag_is_read_without_python_objects(tmp_path: Path):
    path = tmp_path / "config.yml"
    path.write_text(
        "!!python/object/apply:collections.OrderedDict\n- - - policy\n    - MlpPolicy\n  - - policy_kwargs\n"
        "    - dict(net_arch=[64, 64])\n"
    )
    assert read_zoo_config(path) == {"policy": "MlpPolicy", "policy_kwargs": {"net_arch": [64, 64]}}
    path.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match="config.yml"):
        read_zoo_config(path)


def test_unknown_pickle_layouts_are_a_clear_error(tmp_path: Path):
    path = tmp_path / "vecnormalize.pkl"
    buffer = io.BytesIO()
    pickle.dump({"norm_obs": False}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="no observation statistics in this VecNormalize"):
        load_obs_normalizer(path)
