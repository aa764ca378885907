"""Evaluation episodes as videos (`recurrl evaluate CKPT --video DIR`), rendered headless.

The episodes are played by the one episode runner (agents.evaluation.run_episodes) in a vector env of
one env made with `render_mode="rgb_array"`, with the same actor the evaluation uses; `Filming` wraps
that actor and hands each tick's frame to an imageio writer (MP4 through imageio-ffmpeg, GIF through
Pillow), one file per episode, streamed so a long episode is not held in memory. A file is written
under a temporary name and renamed when complete, so a failure leaves no partial video behind.

MuJoCo renders offscreen through the backend named by MUJOCO_GL, which gymnasium reads when an env makes
its renderer: `headless_gl()` picks EGL when nothing is chosen and there is no display (measured on this
project's CPU machine: egl renders, osmesa is not installed, the default glfw needs a display).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from recurrl.agents.evaluation import Actor, run_episodes
from recurrl.envs.vector import make_vector_env

FORMATS = ("mp4", "gif")
GL_ADVICE = (
    "for MuJoCo envs set MUJOCO_GL=egl (EGL: a GPU driver or Mesa) or MUJOCO_GL=osmesa (CPU only; needs "
    "libosmesa, e.g. apt install libosmesa6)"
)


@dataclass(frozen=True)
class VideoRequest:
    directory: Path
    episodes: int = 1
    format: str = "mp4"
    seed: int = 0


def headless_gl() -> None:
    """Choose EGL for MuJoCo when no backend is chosen and there is no display (before any env renders)."""
    if not os.environ.get("MUJOCO_GL") and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"


def check_rendering(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """One rgb_array frame from `env_id`, or one ValueError saying what to set or install."""
    try:
        env = gym.make(env_id, **{**env_kwargs, "render_mode": "rgb_array"})
        try:
            env.reset(seed=0)
            frame = env.render()
        finally:
            env.close()
    except Exception as error:  # every rendering backend fails differently (ImportError, AttributeError, ...)
        text = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(
            f"cannot render {env_id} offscreen for --video ({type(error).__name__}: {text}); {GL_ADVICE} "
            f"(MUJOCO_GL is {os.environ.get('MUJOCO_GL', 'unset')})"
        ) from None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise ValueError(
            f"{env_id} gives no rgb_array frames (render returned {type(frame).__name__}); no video"
        )


def open_writer(path: Path, fps: float) -> Any:
    """An imageio writer for an .mp4 (imageio-ffmpeg) or .gif (Pillow) file."""
    import imageio.v2 as imageio

    if path.suffix == ".gif":
        return imageio.get_writer(path, format="GIF", duration=1000.0 / fps, loop=0)
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's own error would not say what to install)
    except ImportError as error:
        raise ValueError(
            "MP4 videos need imageio-ffmpeg: pip install imageio-ffmpeg (or --video-format gif)"
        ) from error
    # macro_block_size=1: any frame size (ffmpeg's default 16 would resize e.g. 500x500 frames, with a warning)
    return imageio.get_writer(path, format="FFMPEG", fps=fps, macro_block_size=1)


class Filming:
    """An Actor that records each tick's frame of env 0, one file per episode, up to `paths`' length."""

    def __init__(self, actor: Actor, envs: gym.vector.VectorEnv, paths: list[Path], fps: float) -> None:
        self.actor, self.envs, self.paths, self.fps = actor, envs, paths, fps
        self.writer: Any = None
        self.tmp: Path | None = None
        self.done: list[Path] = []

    def act(self, obs: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        if episode_starts[0]:
            self.finish()
            if len(self.done) < len(self.paths):
                path = self.paths[len(self.done)]
                self.tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
                self.writer = open_writer(self.tmp, self.fps)
        if self.writer is not None:
            self.writer.append_data(np.asarray(self.envs.render()[0]))
        return self.actor.act(obs, episode_starts)

    def observe(self, rewards: np.ndarray, ended: np.ndarray) -> None:
        self.actor.observe(rewards, ended)

    def finish(self) -> None:
        """Close the episode being filmed and give its file its name."""
        if self.writer is None or self.tmp is None:
            return
        self.writer.close()
        path = self.paths[len(self.done)]
        self.tmp.replace(path)
        self.done.append(path)
        self.writer = self.tmp = None

    def discard(self) -> None:
        """After a failure: close and delete the file being written."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001  (already failing: the first error is the one to report)
                pass
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def record_videos(
    env_id: str,
    env_kwargs: dict[str, Any],
    make_actor: Callable[[gym.vector.VectorEnv], Actor],
    request: VideoRequest,
    name: str,
) -> list[Path]:
    """Play `request.episodes` episodes with the actor `make_actor(envs)` builds and write one video each,
    DIR/NAME-episodeI.FORMAT -> their paths."""
    if request.format not in FORMATS:
        raise ValueError(f"--video-format must be one of {', '.join(FORMATS)}, got {request.format!r}")
    check_rendering(env_id, env_kwargs)
    request.directory.mkdir(parents=True, exist_ok=True)
    paths = [request.directory / f"{name}-episode{i}.{request.format}" for i in range(request.episodes)]
    envs = make_vector_env(env_id, 1, env_kwargs={**env_kwargs, "render_mode": "rgb_array"})
    fps = float(envs.metadata.get("render_fps") or 30)
    filming = None
    try:
        filming = Filming(make_actor(envs), envs, paths, fps)
        run_episodes(envs, filming, request.episodes, request.seed)
        filming.finish()
    except BaseException:
        if filming is not None:
            filming.discard()
        raise
    finally:
        envs.close()
    return filming.done


def video_name(checkpoint: Path) -> str:
    """runs/NAME/checkpoints/last -> NAME-last; any other checkpoint directory -> its name."""
    if checkpoint.parent.name == "checkpoints":
        return f"{checkpoint.parent.parent.name}-{checkpoint.name}"
    return checkpoint.name


def record_checkpoint_videos(
    path: Path,
    request: VideoRequest,
    *,
    target_return: float | None = None,
    mode: str = "stateful",
    context_length: int | None = None,
    deterministic: bool = True,
    device: str = "cpu",
) -> list[Path]:
    """Videos of a Decision (conditioned on `target_return`, default the checkpoint's first) or PPO
    checkpoint, acting as `recurrl evaluate` evaluates it."""
    import torch

    from recurrl.agents.agent import checkpoint_kind

    if checkpoint_kind(path) == "decision":
        from recurrl.agents.decision.evaluation import DecisionActor
        from recurrl.agents.decision.model_io import env_spec_from_meta, load_decision_checkpoint

        model, meta = load_decision_checkpoint(path, device)
        spec, config = env_spec_from_meta(meta), meta["config"]
        target = config["eval"]["target_returns"][0] if target_return is None else target_return
        k = context_length or config["context_length"]

        def decision_actor(envs: gym.vector.VectorEnv) -> Actor:
            spec.check_env(envs)
            return DecisionActor(model, 1, target, mode, k, torch.device(device))  # type: ignore[arg-type]

        with torch.inference_mode():
            return record_videos(spec.env_id, spec.env_kwargs, decision_actor, request, video_name(path))
    from recurrl.agents.ppo.evaluation import PPOActor, load_ppo_checkpoint

    policy, config, obs_norm = load_ppo_checkpoint(path, device)

    def ppo_actor(envs: gym.vector.VectorEnv) -> Actor:
        return PPOActor(policy, obs_norm, envs, config.env_id, deterministic, device)

    with torch.no_grad():
        return record_videos(config.env_id, {}, ppo_actor, request, video_name(path))
