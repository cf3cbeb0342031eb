"""`mbrlax eval DIR --video`: evaluation episodes of a real MuJoCo env rendered offscreen (EGL or OSMesa)
into .mp4 / .gif files, every frame present and none blank."""

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

import mbrlax
from mbrlax import envs
from mbrlax.algos.dyna import episode_returns
from mbrlax.cli import main
from mbrlax.config import ConfigError, preset
from mbrlax.video import recording_env

from test_dyna import TINY

SEED, EPISODES = 3, 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = preset("InvertedPendulum-v5", "sac", **{**TINY, "total_steps": 200,
                                                   "out": str(tmp_path_factory.mktemp("video") / "run")})
    return mbrlax.train(cfg).run_dir


def episode_frames(run_dir, episodes: int) -> tuple[int, float]:
    """Frames a recording of the evaluation must hold (a reset frame per episode, one per step) and its mean return."""
    policy, steps = mbrlax.load(run_dir), []

    def act(obs):
        steps.append(1)
        return policy.act(obs)

    mean, _ = episode_returns(envs.make("InvertedPendulum-v5", seed=SEED), act, episodes)
    return len(steps) + episodes, mean


def assert_not_blank(frames: np.ndarray) -> None:
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
    assert all(f.std() > 5.0 for f in frames), "a frame is blank (a single colour)"
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).max() > 30, "nothing moves"


def test_cli_eval_writes_every_frame_to_mp4(run_dir, tmp_path):
    video = tmp_path / "policy.mp4"
    cmd = [sys.executable, "-m", "mbrlax.cli", "eval", str(run_dir), "--episodes", str(EPISODES), "--seed", str(SEED),
           "--video", str(video), "--video-size", "96", "64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    n_frames, mean = episode_frames(run_dir, EPISODES)
    assert f"wrote {video} ({n_frames} frames" in proc.stdout
    assert f"eval_return {mean:.2f}" in proc.stdout  # recording does not change the episodes
    frames = np.stack(list(iio.imiter(video, plugin="FFMPEG")))
    assert frames.shape == (n_frames, 64, 96, 3)
    assert_not_blank(frames)


def test_gif_from_python(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # restored after the test (the run chooses one)
    gif = tmp_path / "policy.gif"
    mbrlax.load(run_dir).evaluate(episodes=1, seed=SEED, video=gif, video_size=(64, 64))
    frames = iio.imread(gif, index=None)[..., :3]
    n_frames, _ = episode_frames(run_dir, 1)
    assert 1 < len(frames) <= n_frames and frames.shape[1:] == (64, 64, 3)  # GIFs merge identical frames
    assert_not_blank(frames)


def test_video_errors(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(run_dir), "--video", str(tmp_path / "policy.avi")])
    assert e.value.code == 2 and "must end in .mp4 or .gif" in capsys.readouterr().err
    # An env that has no offscreen rendering (IcyRoad): a clear error, no file.
    with pytest.raises(ConfigError, match="cannot render offscreen frames"):
        with recording_env("IcyRoad-v0", 0, tmp_path / "icy.mp4"):
            pass
    assert not (tmp_path / "icy.mp4").exists()
