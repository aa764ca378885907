"""Reading RL Baselines3 Zoo files without running their pickles.

A zoo agent folder holds `model.zip` (its `data` entry and `vecnormalize.pkl` are pickles, which run
code when unpickled), `config.yml` (the zoo hyperparameters) and the weights `policy.pth` inside the
zip. Here:
- `read_zoo_config`: config.yml with a YAML loader that only builds plain values (the zoo writes its
  OrderedDict with a Python tag; it becomes a dict), and `policy_kwargs`, a Python expression such as
  `dict(net_arch=[256, 256], activation_fn=nn.ReLU)`, evaluated by walking its syntax tree: literals,
  `dict(...)` and an allowlist of torch activation classes, nothing else.
- `read_policy_weights`: policy.pth with `torch.load(weights_only=True)` (tensors only).
- `read_vecnormalize_stats`: the observation statistics of a pickled VecNormalize, read by an
  unpickler that calls nothing but numpy's array constructors; every other class it names becomes an
  inert record of its attributes. A file that needs anything else is refused (`UnsafePickle`).
"""

from __future__ import annotations

import ast
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml


class UnsafePickle(ValueError):
    """The pickle names a callable outside the data-only reader's allowlist."""


# ----------------------------------------------------------------------------- config.yml
class _ZooConfigLoader(yaml.SafeLoader):
    """SafeLoader plus the zoo's `!!python/object/apply:collections.OrderedDict` as a plain dict."""


def _ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    pairs = loader.construct_sequence(node, deep=True)
    if len(pairs) == 1 and isinstance(pairs[0], list):  # apply's argument list: [[key, value], ...]
        pairs = pairs[0]
    return {str(key): value for key, value in pairs}


_ZooConfigLoader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", _ordered_dict)


def read_zoo_config(path: Path) -> dict[str, Any]:
    """The zoo's config.yml as a dict, `policy_kwargs` evaluated safely (see module doc)."""
    try:
        config = yaml.load(path.read_text(), Loader=_ZooConfigLoader)  # noqa: S506  (a safe loader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a zoo config.yml this reader understands ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameters, got {type(config).__name__}")
    kwargs = config.get("policy_kwargs")
    if isinstance(kwargs, str):
        config["policy_kwargs"] = literal_policy_kwargs(kwargs, path)
    return config


def _activations() -> dict[str, Any]:
    from torch import nn

    names = ("ReLU", "Tanh", "ELU", "LeakyReLU", "SiLU", "GELU", "Sigmoid", "Softplus", "Identity")
    return {name: getattr(nn, name) for name in names}


def literal_policy_kwargs(text: str, where: Path | str) -> dict[str, Any]:
    """`dict(a=1, activation_fn=nn.ReLU, net_arch=[dict(pi=[64], vf=[64])])` -> the dict, no eval."""
    activations = _activations()

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values, strict=True)}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
            return {kw.arg: value(kw.value) for kw in node.keywords}
        if isinstance(node, ast.Attribute) and node.attr in activations:  # nn.ReLU, th.nn.ReLU, torch.nn.ReLU
            return activations[node.attr]
        raise ValueError(
            f"{where}: policy_kwargs {text!r}: {ast.unparse(node)!r} is not a literal, dict(...) or a torch "
            f"activation ({', '.join(activations)}); this reader evaluates nothing else"
        )

    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"{where}: policy_kwargs {text!r} is not a Python expression ({error})") from error
    kwargs = value(tree.body)
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: policy_kwargs {text!r} is not a dict")
    return kwargs


# ----------------------------------------------------------------------------- policy.pth
def read_policy_weights(zip_path: Path) -> dict[str, Any]:
    """The policy's state dict from `policy.pth` inside the zoo zip, tensors only (weights_only=True)."""
    import torch

    try:
        with zipfile.ZipFile(zip_path) as archive:
            raw = archive.read("policy.pth")
        weights = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise ValueError(f"{zip_path}: cannot read policy.pth from it ({error})") from error
    except pickle.UnpicklingError as error:  # weights_only refused something that is not a tensor
        raise ValueError(f"{zip_path}: policy.pth holds more than tensors, refused ({error})") from error
    if not isinstance(weights, dict):
        raise ValueError(f"{zip_path}: policy.pth holds a {type(weights).__name__}, not a state dict")
    return dict(weights)


# ----------------------------------------------------------------------------- vecnormalize.pkl
class _Record:
    """Stands in for any class a data-only pickle names: keeps its attributes, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, dict | None) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) from __reduce_ex__(2)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state


def _numpy_allowlist() -> dict[tuple[str, str], Any]:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    functions = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.update({(module, name): fn for name, fn in functions.items()})
    return allowed


# Classes a VecNormalize pickle names whose state is only read, never run (they become _Records).
RECORDED_CLASSES = {
    ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
    ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
}
# Modules whose every name becomes an inert record: gym/gymnasium spaces, and numpy.random (a seeded env's
# np_random: newer numpy pickles its bit generator class and SeedSequence, `numpy.random._pcg64.PCG64`, ...).
RECORDED_MODULES = ("gym", "gymnasium", "numpy.random")


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path
        self.allowed = _numpy_allowlist()
        self.records: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self.allowed:
            return self.allowed[key]
        if key in RECORDED_CLASSES or any(module == m or module.startswith(m + ".") for m in RECORDED_MODULES):
            if key not in self.records:
                self.records[key] = type(name, (_Record,), {"_pickled_as": f"{module}.{name}"})
            return self.records[key]
        raise UnsafePickle(f"{self.path} names {module}.{name}, which the data-only reader does not load")


def read_vecnormalize_stats(path: Path) -> dict[str, Any]:
    """{mean, var, clip_obs, epsilon} of a pickled VecNormalize, read data-only (see module doc)."""
    try:
        with open(path, "rb") as file:
            vec_normalize = _DataOnlyUnpickler(file, path).load()
    except UnsafePickle:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a VecNormalize pickle this reader understands ({error})") from error
    return vecnormalize_stats(vec_normalize, path)


def vecnormalize_stats(vec_normalize: Any, path: Path) -> dict[str, Any]:
    """The observation statistics of a VecNormalize (a real one, or its _Record), as plain values."""
    if not getattr(vec_normalize, "norm_obs", True):
        raise ValueError(f"{path}: VecNormalize does not normalize observations; nothing to apply")
    try:
        rms = vec_normalize.obs_rms
        stats = {
            "mean": np.asarray(rms.mean, dtype=np.float64).tolist(),
            "var": np.asarray(rms.var, dtype=np.float64).tolist(),
            "clip_obs": float(vec_normalize.clip_obs),
            "epsilon": float(vec_normalize.epsilon),
        }
    except (AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: no observation statistics in this VecNormalize ({error})") from error
    if np.shape(stats["mean"]) != np.shape(stats["var"]) or not np.all(np.isfinite(stats["var"])):
        raise ValueError(f"{path}: malformed observation statistics (mean/var shapes or values)")
    return stats
