"""Videos of evaluation episodes (`mbrlax eval DIR --video out.mp4` or `.gif`).

Frames come from the env's offscreen ``rgb_array`` rendering; for MuJoCo envs that is
EGL or OSMesa (``MUJOCO_GL``): a value you set is kept, else EGL is used if it is
installed and works, else OSMesa (Debian/Ubuntu: ``apt-get install libosmesa6``). Frames are written
as they come (imageio; mp4 through imageio-ffmpeg), so long evaluations do not fill memory
(a GIF is the exception: Pillow keeps its frames until it is closed).
"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gymnasium
import numpy as np

from mbrlax import envs
from mbrlax.config import ConfigError

SUFFIXES = (".mp4", ".gif")
_BACKENDS = (("egl", "EGL"), ("osmesa", "OSMesa"))  # MUJOCO_GL value, library


def _works(backend: str) -> bool:
    """Whether MuJoCo can make an offscreen context with `backend` (probed in a subprocess: a failed
    attempt would fix PyOpenGL's platform for this process)."""
    probe = (f"from mujoco.{backend} import GLContext\n"
             "c = GLContext(8, 8); c.make_current(); c.free()")
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # JAX's fork warning: the child only execs
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=60).returncode == 0


def gl_backend() -> str:
    """Choose MUJOCO_GL for offscreen rendering (before the first GL context) and return it: yours if set,
    else the first of EGL and OSMesa that is installed and works."""
    chosen = os.environ.get("MUJOCO_GL") or os.environ.get("PYOPENGL_PLATFORM")
    if not chosen:
        chosen = next((name for name, lib in _BACKENDS if ctypes.util.find_library(lib) and _works(name)), None)
    if not chosen:
        raise ConfigError(
            "a video needs offscreen OpenGL and neither EGL nor OSMesa works here: on Debian/Ubuntu "
            "`apt-get install libosmesa6` (software rendering) or `libegl1 libegl-mesa0` (EGL, e.g. with a GPU "
            "driver), or set MUJOCO_GL to a backend you have"
        )
    os.environ["MUJOCO_GL"] = chosen
    return chosen


class RecordFrames(gymnasium.Wrapper):
    """Passes the frame rendered after every reset and step to `writer.append_data`."""

    def __init__(self, env: gymnasium.Env, writer, env_id: str):
        super().__init__(env)
        self.writer, self.env_id, self.frames = writer, env_id, 0

    def _record(self) -> None:
        frame = self.env.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] not in (3, 4):
            got = type(frame).__name__ if not isinstance(frame, np.ndarray) else f"an array of shape {frame.shape}"
            raise ConfigError(f"env {self.env_id!r} rendered {got} with render_mode='rgb_array'; a video needs "
                              "[height, width, 3] uint8 frames")
        self.writer.append_data(np.asarray(frame[..., :3], np.uint8))
        self.frames += 1

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self._record()
        return out

    def step(self, action):
        out = self.env.step(action)
        self._record()
        return out


def _writer(path: Path, fps: float):
    import imageio.v2 as imageio

    if path.suffix == ".gif":
        return imageio.get_writer(path, mode="I", duration=1000.0 / fps, loop=0)
    return imageio.get_writer(path, fps=fps, macro_block_size=16)


@contextmanager
def recording_env(env_id: str, seed: int, path: str | Path, size: tuple[int, int] | None = None
                  ) -> Iterator[RecordFrames]:
    """The env ``env_id`` (reset with ``seed``) writing every frame of its episodes to ``path``
    (.mp4 or .gif); ``size``: (width, height) of the frames (default: the env's)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"invalid video={str(path)!r}: the file must end in {' or '.join(SUFFIXES)}")
    if not path.parent.is_dir():
        raise ConfigError(f"invalid video={str(path)!r}: the directory {path.parent} does not exist")
    backend = gl_backend()
    kwargs = {"render_mode": "rgb_array", **({"width": size[0], "height": size[1]} if size else {})}
    try:
        env = envs.make(env_id, seed=seed, **kwargs)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 -- Gymnasium's or the env's own refusal
        raise ConfigError(f"env {env_id!r} cannot render offscreen frames with {kwargs}: "
                          f"{type(e).__name__}: {e}") from e
    fps = float(env.metadata.get("render_fps") or 30)
    writer = _writer(path, fps)
    recorder = RecordFrames(env, writer, env_id)
    try:
        yield recorder
    except Exception as e:
        if "GL" in type(e).__name__ or "OpenGL" in str(e) or "EGL" in str(e):
            raise ConfigError(f"offscreen rendering with MUJOCO_GL={backend} failed ({type(e).__name__}: {e}); "
                              f"try another backend, e.g. MUJOCO_GL={'osmesa' if backend == 'egl' else 'egl'}") from e
        raise
    finally:
        writer.close()
        env.close()
    print(f"mbrlax: wrote {path} ({recorder.frames} frames at {fps:g} fps, MUJOCO_GL={backend})")
