"""`recurrl export`: a trained agent's per-tick step as an ONNX graph, the recurrent state as explicit
inputs and outputs, plus a JSON beside it (OUT.json) saying what each input and output means.

The graph is one tick of `recurrl.load(...).predict` (agents/agent.py), traced from the same code:
- Decision: observation, the previous step's reward, episode_start, target_return and the state
  (return-to-go, timestep, previous action, backbone state) -> action and the next state. The
  return-to-go bookkeeping is inside the graph, so a caller only feeds back what it got.
- PPO: observation (normalized inside the graph with the checkpoint's frozen statistics),
  episode_start and the actor's state -> the deterministic action, the distribution's parameters
  (logits, or the Gaussian mean; its log-std is in the JSON) and the next state.
A fresh state is all zeros (with episode_start true), as everywhere in recurrl.

The minGRU/minLSTM step normally runs as a compiled numba kernel, which a tracer cannot see into: the
export traces the eager step (the same math, tested against the kernel). The graph is traced by
TorchScript (`dynamo=False`): `DecisionModel.step` branches on the data (`starts.all()`), which
torch.export refuses; traced with no episode start, the graph keeps the branch that is right for every
input (an action token fed where an episode starts is forgotten at the next token's reset).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recurrl.agents.agent import DecisionAgent, DecisionState, PPOAgent, decision_tick, fresh_decision_state

OPSET = 17  # LayerNormalization is an ONNX op from 17 on
BATCH = "batch"

# What each backbone's state tensors hold (policies/backbones/*.py), for the JSON.
STATE_MEANING = {
    "mingru": ["h of every layer [B, layers, inner]"],
    "minlstm": ["h of every layer [B, layers, inner]"],
    "lstm": ["h of every layer [B, layers, hidden]", "c of every layer [B, layers, hidden]"],
    "gru": ["h of every layer [B, layers, hidden]"],
    "transformer": [
        "KV cache keys [B, layers, max_context - 1, hidden], newest last",
        "KV cache values [B, layers, max_context - 1, hidden]",
        "tokens of the current episode in the cache [B] int64",
    ],
    "mamba": ["conv inputs [B, layers, inner, d_conv - 1]", "SSM state [B, layers, inner, d_state]"],
    "mlp": [],
}


def eager_copy(module: nn.Module) -> nn.Module:
    """A copy whose minGRU/minLSTM and Mamba steps run the eager torch ops (scan="loop" / "mambapy"), not
    the numba kernels a tracer cannot see into."""
    from recurrl.policies.backbones.mamba import MambaBackbone
    from recurrl.policies.backbones.minrnn import MinRNNBackbone

    module = copy.deepcopy(module).eval()
    for sub in module.modules():
        if isinstance(sub, (MinRNNBackbone, MambaBackbone)):
            sub.scan = "loop" if isinstance(sub, MinRNNBackbone) else "mambapy"
            sub._forget_caches()
    return module


class DecisionStep(nn.Module):
    """One Decision tick with the evaluator's bookkeeping (agents.agent.decision_tick), greedy actions.

    forward(observation, reward, episode_start, target_return, returns_to_go, timestep,
    [prev_action,] *backbone_state) -> (action, returns_to_go, timestep, [prev_action,] *backbone_state);
    prev_action only for models that read it (`previous_actions=False` leaves it out: the graph would
    not use it, and the exporter drops unused inputs).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.with_prev = bool(model.previous_actions)
        prev = fresh_decision_state(model, 1, "cpu").prev_action
        self.prev_shape, self.prev_dtype = tuple(prev.shape[1:]), prev.dtype

    def forward(self, observation: Tensor, reward: Tensor, episode_start: Tensor, target_return: Tensor,
                returns_to_go: Tensor, timestep: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:  # fmt: skip
        if self.with_prev:
            prev_action, backbone = rest[0], rest[1:]
        else:  # never read by the model
            prev_action = torch.zeros((observation.shape[0], *self.prev_shape), dtype=self.prev_dtype)
            backbone = rest
        state = DecisionState(tuple(backbone), prev_action, returns_to_go, timestep)
        pred, state = decision_tick(self.model, observation, reward, episode_start, target_return, state)
        if self.model.discrete:
            action = prev = pred.argmax(-1)
        else:
            action, prev = self.model.predictions_to_actions(pred), pred.float()
        return (
            action,
            state.returns_to_go,
            state.timestep,
            *((prev,) if self.with_prev else ()),
            *state.backbone,
        )


class PPOStep(nn.Module):
    """One PPO actor tick: frozen observation normalization, `policy.act`, the deterministic action.

    forward(observation, [episode_start,] *actor_state) -> (action, logits or mean, *actor_state);
    episode_start only where there is a state to reset (not for the MLP control).
    """

    def __init__(self, agent: PPOAgent, eager: bool = True) -> None:
        super().__init__()
        self.policy = eager_copy(agent.policy) if eager else agent.policy
        norm = agent.obs_norm
        self.normalize, self.clip = norm.enabled, float(norm.clip)
        # float64 as in ObsNormalizer (numpy), so the graph normalizes exactly as the evaluator does.
        self.register_buffer("mean", torch.as_tensor(norm.rms.mean, dtype=torch.float64))
        self.register_buffer("std", torch.as_tensor(np.sqrt(norm.rms.var + 1e-8), dtype=torch.float64))
        low, high = agent.action_low, agent.action_high
        self.clip_actions = low is not None
        if self.clip_actions:
            self.register_buffer("low", torch.as_tensor(low))
            self.register_buffer("high", torch.as_tensor(high))
        actor, critic = self.policy.split_state(self.policy.initial_state(1))
        self.n_actor = len(actor)
        self.critic_shapes = [tuple(s.shape[1:]) for s in critic]

    def forward(self, observation: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        x = observation.float()
        if self.normalize:
            x = ((observation.double() - self.mean) / self.std).clamp(-self.clip, self.clip).float()
        episode_start, actor_state = (rest[0], rest[1:]) if self.n_actor else (None, ())
        # A separate critic's state passes through `act` untouched; zeros here, pruned from the graph.
        critic = tuple(x.new_zeros((observation.shape[0], *shape)) for shape in self.critic_shapes)
        dist, _, state = self.policy.act(x, tuple(actor_state) + critic, episode_start)
        action = self.policy.deterministic_action(dist)
        if self.policy.spec.action_kind == "discrete":
            params = dist.logits
        else:
            params = dist.mean
            if self.clip_actions:
                action = torch.minimum(torch.maximum(action, self.low), self.high)
        return (action, params, *state[: self.n_actor])


def _io(name: str, shape: list[Any], dtype: str, meaning: str) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype, "meaning": meaning}


def _state_io(names: list[str], tensors: tuple[Tensor, ...], meanings: list[str]) -> tuple[list, list]:
    """state.NAME inputs and next.NAME outputs for each state tensor [1, ...] of the example state."""
    inputs, outputs = [], []
    for name, tensor, meaning in zip(names, tensors, meanings, strict=True):
        shape, dtype = [BATCH, *tensor.shape[1:]], str(tensor.dtype).removeprefix("torch.")
        inputs.append(_io(f"state.{name}", shape, dtype, f"{meaning}; zeros at the start"))
        outputs.append(_io(f"next.{name}", shape, dtype, f"feed back as state.{name}"))
    return inputs, outputs


def _action_io(discrete: bool, act_dim: int, meaning: str) -> dict[str, Any]:
    shape = [BATCH] if discrete else [BATCH, act_dim]
    return _io("action", shape, "int64" if discrete else "float32", meaning)


STARTS = _io("episode_start", [BATCH], "bool", "true where this observation is an episode's first")


def decision_step(agent: DecisionAgent, eager: bool = True) -> tuple[nn.Module, tuple, dict[str, Any]]:
    model = agent.model
    step = DecisionStep(eager_copy(model) if eager else model)
    state = agent.initial_state(1)
    args = (torch.zeros(1, model.state_dim), torch.zeros(1), torch.zeros(1, dtype=torch.bool))
    args += (torch.full((1,), agent.target_return), state.returns_to_go, state.timestep)
    names = ["returns_to_go", "timestep"]
    meanings = ["return-to-go of the previous tick", "timestep of the previous tick"]
    if step.with_prev:
        args += (state.prev_action,)
        names.append("prev_action")
        meanings.append("previous action in model units (index if discrete, else tanh output in [-1, 1])")
    args += state.backbone
    names += [f"backbone.{i}" for i in range(len(state.backbone))]
    meanings += STATE_MEANING.get(model.backbone_name, ["backbone state"] * len(state.backbone))
    state_in, state_out = _state_io(names, args[4:], meanings)
    inputs = [
        _io("observation", [BATCH, model.state_dim], "float32", "raw observation, flattened"),
        _io("reward", [BATCH], "float32", "reward of the previous step (any value at an episode start)"),
        STARTS,
        _io("target_return", [BATCH], "float32", "return new episodes are conditioned on"),
    ]
    act = "action index" if model.discrete else "action in the env's bounds"
    info = {"kind": "decision", "backbone": model.backbone_name, "env_id": agent.spec.env_id}
    info.update(target_return=agent.target_return, deterministic=True)
    info.update(
        inputs=inputs + state_in, outputs=[_action_io(model.discrete, model.act_dim, act), *state_out]
    )
    return step, args, info


def ppo_step(agent: PPOAgent, eager: bool = True) -> tuple[nn.Module, tuple, dict[str, Any]]:
    step, spec = PPOStep(agent, eager), agent.spec
    actor, _ = agent.policy.split_state(agent.initial_state(1))
    args = (torch.zeros(1, spec.obs_dim), *((torch.zeros(1, dtype=torch.bool), *actor) if actor else ()))
    backbone, discrete = agent.config.backbone, spec.action_kind == "discrete"
    meanings = STATE_MEANING.get(backbone, ["backbone state"] * len(actor))
    state_in, state_out = _state_io([f"actor.{i}" for i in range(len(actor))], actor, meanings)
    # A structured env's observation goes in flattened, as PPO's envs flatten it (predict does it itself).
    flat = "gymnasium.spaces.flatten(env.observation_space, obs)"
    raw = flat if agent.observation_space else "raw observation"
    inputs = [_io("observation", [BATCH, spec.obs_dim], "float32", f"{raw} (normalized inside the graph)")]
    params = (
        _io("logits", [BATCH, spec.action_dim], "float32", "categorical logits")
        if discrete
        else _io("mean", [BATCH, spec.action_dim], "float32", "Gaussian mean, unclipped (std: exp(log_std))")
    )
    act = _action_io(
        discrete, spec.action_dim, "deterministic action: argmax, or the mean clipped to the bounds"
    )
    info: dict[str, Any] = {"kind": "ppo", "backbone": backbone, "env_id": agent.config.env_id}
    if agent.policy.log_std is not None:
        info["log_std"] = agent.policy.log_std.detach().tolist()
    info.update(inputs=inputs + ([STARTS] if actor else []) + state_in, outputs=[act, params, *state_out])
    return step, args, info


def step_module(
    agent: DecisionAgent | PPOAgent, eager: bool = True
) -> tuple[nn.Module, tuple[Tensor, ...], dict[str, Any]]:
    """(the step as a module, example inputs at B=1 with no episode start, the JSON description).
    `eager=False` keeps the agent's own model (the compiled minGRU/minLSTM step): for timing only."""
    if isinstance(agent, DecisionAgent):
        return decision_step(agent, eager)
    return ppo_step(agent, eager)


def export_onnx(agent: DecisionAgent | PPOAgent, out: str | Path, checkpoint: str = "") -> dict[str, Any]:
    """Write the agent's step to `out` (.onnx) and its description to `out` with .json; -> the description.
    Both files appear together or not at all (written under temporary names, then renamed)."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"the output path must end in .onnx, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"the output path {str(out)!r} is a directory; give a file name ending in .onnx")
    try:
        import onnx  # noqa: F401  (torch.onnx needs it to write the model)
    except ImportError as error:
        raise ValueError(
            f"ONNX export needs the onnx package: pip install 'recurrl[export]' ({error})"
        ) from error
    module, args, info = step_module(agent)
    module.eval()  # (the exporter restores the mode it found, recursively: a training one would drop out)
    names_in = [i["name"] for i in info["inputs"]]
    names_out = [o["name"] for o in info["outputs"]]
    info = {
        "format": "recurrl ONNX step",
        "version": 1,
        "checkpoint": checkpoint,
        "opset": OPSET,
        **info,
        "usage": "call once per env tick; at an episode's first tick (or with a fresh, all-zeros state) set "
        "episode_start true; feed every next.* output back as the state.* input of the same name",
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write {str(out)!r}: {error}") from error
    tmp_onnx = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_json = out.with_name(f".{out.stem}.json.tmp-{os.getpid()}")
    try:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # The tracer warns about Python bools from tensors: the backbones' shape checks, and the
                # triple-token branch the module docstring explains. Neither changes the traced math.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    args,
                    str(tmp_onnx),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=names_in,
                    output_names=names_out,
                    dynamic_axes={n: {0: BATCH} for n in names_in + names_out},
                )
            check_graph(tmp_onnx, module, args, names_in)
        except OSError as error:
            raise ValueError(f"cannot write {str(out)!r}: {error}") from error
        except Exception as error:  # the exporter raises many types: one line naming the backbone and why
            text = str(error).strip()
            raise ValueError(
                f"the {info['backbone']!r} backbone ({info['kind']} agent) cannot be exported to ONNX: "
                f"{text.splitlines()[0] if text else type(error).__name__}"
            ) from error
        tmp_json.write_text(json.dumps(info, indent=2))
        os.replace(tmp_onnx, out)
        try:
            os.replace(tmp_json, out.with_suffix(".json"))
        except OSError:
            out.unlink(missing_ok=True)  # both files or neither
            raise
    except OSError as error:
        raise ValueError(f"cannot write {str(out)!r}: {error}") from error
    finally:
        tmp_onnx.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    return {**info, "json": str(out.with_suffix(".json"))}


def check_graph(path: Path, module: nn.Module, args: tuple[Tensor, ...], names: list[str]) -> None:
    """Run the written graph once with onnxruntime (when installed) on the example inputs, with and
    without an episode start, and compare with the traced module: a graph that traced a constant where
    it should have computed fails here instead of in the user's controller."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    missing = [n for n in names if n not in {i.name for i in session.get_inputs()}]
    if missing:
        raise RuntimeError(
            f"the traced graph does not read {', '.join(missing)}: its step computes outside the torch ops a "
            "tracer records (numpy, a compiled kernel?)"
        )
    for starts in (False, True) if "episode_start" in names else (False,):
        feed_args = list(args)
        if starts:
            index = names.index("episode_start")
            feed_args[index] = torch.ones_like(args[index])
        feed_args[0] = torch.randn_like(args[0])
        with torch.no_grad():
            want = module(*feed_args)
        got = session.run(None, {n: a.numpy() for n, a in zip(names, feed_args, strict=True)})
        for w, g in zip(want, got, strict=True):
            if not np.allclose(w.numpy(), g, rtol=1e-4, atol=1e-5):
                raise RuntimeError(
                    "its step computes outside the torch ops a tracer records (numpy, a compiled kernel?): "
                    "the traced graph's outputs differ from the PyTorch step's"
                )
