"""Python API: `train(config) -> Run`, `resume(run_dir)`, `load(run_dir) -> Policy`."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np

from mbrlax import envs
from mbrlax.algos.dyna import Dyna, RunState, episode_returns, init_run_state, run_loop, scale_action
from mbrlax.config import ConfigError, TrainConfig, config_from_dict, validate
from mbrlax.runtime import configure
from mbrlax.run.checkpoint import CheckpointError, has_checkpoint, load_checkpoint
from mbrlax.run.lock import run_lock
from mbrlax.run.metrics import MetricsLogger, read_metrics
from mbrlax.usage import ModelUsage, make_usage


@dataclass
class Run:
    """A finished (or stopped) run: its directory, config, final state and metrics."""

    run_dir: Path
    config: TrainConfig
    state: RunState

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        return read_metrics(self.run_dir)

    @property
    def policy(self) -> "Policy":
        return Policy(self.config, self.state.agent.params["actor"])


def env_dims(cfg: TrainConfig) -> tuple[int, int]:
    """Observation and action sizes of the config's env; checks the spaces are supported."""
    env = envs.make(cfg.env)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise ConfigError(f"invalid env={cfg.env!r}: mbpo/sac need a 1-D continuous (Box) action space, got {act_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(f"invalid env={cfg.env!r}: mbpo/sac need a 1-D Box observation space, got {obs_space}")
    return obs_space.shape[0], act_space.shape[0]


def prepare_env(cfg: TrainConfig) -> envs.EnvSpec:
    """The config's env with its --termination / --reward applied (importing `module:function` ids); your
    own env's functions are checked on a random rollout (ConfigError naming what is wrong)."""
    from mbrlax.envs.checks import check_functions

    spec = envs.resolve(cfg.env, cfg.termination, cfg.reward)
    if cfg.algo != "dam":
        env_dims(cfg)
    if spec.custom:
        check_functions(cfg.env, agent_actions=cfg.algo != "dam")
    if cfg.algo == "dam" and envs.episode_steps(cfg.env) is None:  # sizes DAM's data arrays
        raise ConfigError(f"invalid env={cfg.env!r}: dam needs the longest episode length; wrap the env in "
                          "gymnasium.wrappers.TimeLimit(env, max_episode_steps=...)")
    return spec


def new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.out is not None:
        run_dir = Path(cfg.out)
        if has_checkpoint(run_dir) or (run_dir / "metrics.csv").exists():
            raise ConfigError(
                f"invalid out={cfg.out!r}: it already holds a run; continue it with "
                f"`mbrlax resume {cfg.out}` or choose another --out"
            )
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        env = re.sub(r"[^\w.-]+", "-", cfg.env)  # `module:function` ids
        run_dir = Path("runs") / f"{cfg.algo}_{env}_s{cfg.seed}_{stamp}"
        n = 1
        while run_dir.exists():
            run_dir = run_dir.with_name(f"{cfg.algo}_{env}_s{cfg.seed}_{stamp}_{n}")
            n += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(cfg: TrainConfig, usage: ModelUsage | None = None, stop_at: int | None = None) -> Run:
    """Train from scratch; all config errors are raised before any work starts.

    `usage` replaces the strategy the registry gives `cfg.algo` (mbrlax.usage: a ModelUsage
    subclass or a Compose of several); pass the same one to `resume`. The run directory is locked while
    it runs (mbrlax/run/lock.py); SIGTERM/SIGINT checkpoint and raise RunStopped (mbrlax/run/stop.py)."""
    validate(cfg)
    configure(cfg.model.devices, cfg.model.ensemble_size)  # CPU threading, before JAX starts
    prepare_env(cfg)
    if cfg.algo == "dam":
        run_dir = new_run_dir(cfg)
        with run_lock(run_dir):
            return _train_dam(cfg, run_dir)
    obs_dim, act_dim = env_dims(cfg)
    run_dir = new_run_dir(cfg)
    with run_lock(run_dir):
        print(f"mbrlax: {cfg.algo} on {cfg.env}, seed {cfg.seed}, {cfg.total_steps} env steps -> {run_dir}")
        (run_dir / "config.json").write_text(cfg.to_json())
        usage = usage or make_usage(cfg)
        dyna = Dyna(cfg, obs_dim, act_dim, usage)
        state = init_run_state(cfg, obs_dim, act_dim, usage)
        with MetricsLogger(run_dir) as logger:
            state, _ = run_loop(dyna, state, {"env_steps": 0}, run_dir, logger, stop_at=stop_at)
    return Run(run_dir, cfg, state)


def _train_dam(cfg: TrainConfig, run_dir: Path, resuming: bool = False) -> Run:
    """DAM (algos/mpc.py): a fresh run in `run_dir`, or its continuation (the caller holds the lock)."""
    from mbrlax.algos.mpc import DAM, run_rounds

    dam = DAM(cfg)
    state = dam.init_state()
    if resuming:
        state, meta = load_checkpoint(run_dir, state)
        print(f"mbrlax: resuming {run_dir} at round {meta['round']} of {cfg.dam.rounds}")
        resume_step = meta["env_steps"]
    else:
        meta, resume_step, d = {"round": 0, "env_steps": 0}, None, cfg.dam
        print(f"mbrlax: dam ({d.model}, {d.objective}, correction {d.correction}) on {cfg.env}, "
              f"seed {cfg.seed}, {d.rounds} rounds -> {run_dir}")
        (run_dir / "config.json").write_text(cfg.to_json())
    with MetricsLogger(run_dir, resume_step=resume_step, complete_to=resume_step) as logger:  # a row per round
        state, _ = run_rounds(dam, state, meta, run_dir, logger)
    return Run(run_dir, cfg, state)


def load_config(run_dir: str | Path) -> TrainConfig:
    """The run's config.json, validated, with its env resolved (your own env's module imported again)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run directory: no config.json")
    try:
        cfg = config_from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError) as e:  # bad JSON, bytes, fields or types
        raise ConfigError(
            f"{path} is corrupt or not an mbrlax config ({type(e).__name__}: {e}); it must be the JSON file "
            "`mbrlax train` wrote when the run started: restore it from a copy"
        ) from e
    envs.resolve(cfg.env, cfg.termination, cfg.reward)
    return validate(cfg)


def _restore(run_dir: Path, usage: ModelUsage | None = None) -> tuple[TrainConfig, RunState, dict, int, int]:
    cfg = load_config(run_dir)
    obs_dim, act_dim = env_dims(cfg)
    state, meta = load_checkpoint(run_dir, init_run_state(cfg, obs_dim, act_dim, usage))
    return cfg, state, meta, obs_dim, act_dim


def resume(run_dir: str | Path, usage: ModelUsage | None = None, stop_at: int | None = None) -> Run:
    """Continue a stopped or killed run from its last checkpoint (metrics continue without gaps).

    Refuses (RunLockedError) while another process writes `run_dir`."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    configure(cfg.model.devices, cfg.model.ensemble_size)  # CPU threading, before JAX starts
    with run_lock(run_dir):
        prepare_env(cfg)
        if cfg.algo == "dam":
            if not has_checkpoint(run_dir):
                raise CheckpointError(f"{run_dir} has no checkpoint to resume from")
            return _train_dam(cfg, run_dir, resuming=True)
        usage = usage or make_usage(cfg)
        cfg, state, meta, obs_dim, act_dim = _restore(run_dir, usage)
        step = meta["env_steps"]
        print(f"mbrlax: resuming {run_dir} at env step {step} of {cfg.total_steps}")
        dyna = Dyna(cfg, obs_dim, act_dim, usage)
        last_row = step - step % cfg.steps_per_epoch  # rows are logged at epoch ends, before their checkpoint
        with MetricsLogger(run_dir, resume_step=step, complete_to=last_row) as logger:
            state, _ = run_loop(dyna, state, meta, run_dir, logger, stop_at=stop_at)
    return Run(run_dir, cfg, state)


class Policy:
    """A trained policy: `act(obs)` gives the deterministic action in the env's bounds."""

    def __init__(self, cfg: TrainConfig, actor):
        import jax

        from mbrlax.agents.sac import deterministic_action

        self.config, self.actor = cfg, actor
        env = envs.make(cfg.env)
        self.action_space = env.action_space
        env.close()
        self._act = jax.jit(lambda a, o: deterministic_action(a, o))

    def act(self, obs) -> np.ndarray:
        """obs [obs_dim] or [batch, obs_dim] -> action(s) scaled to the env's bounds."""
        obs = np.asarray(obs, np.float32)
        a = np.asarray(self._act(self.actor, obs.reshape(-1, obs.shape[-1])))
        a = scale_action(a, self.action_space)
        return a[0] if obs.ndim == 1 else a

    def evaluate(self, episodes: int = 10, seed: int = 0, video: str | Path | None = None,
                 video_size: tuple[int, int] | None = None) -> tuple[float, float]:
        """Mean and std of the return over `episodes` episodes of the config's env; with `video` (.mp4 or
        .gif) the episodes are rendered offscreen into that file (frames of `video_size` = (width, height))."""
        return _evaluate(self.config.env, self.act, episodes, seed, video, video_size)


def _evaluate(env_id: str, act, episodes: int, seed: int, video, video_size) -> tuple[float, float]:
    if video is None:
        return episode_returns(envs.make(env_id, seed=seed), act, episodes)
    from mbrlax.video import recording_env

    with recording_env(env_id, seed, video, video_size) as env:
        return episode_returns(env, act, episodes)


class PlannerPolicy:
    """A DAM run's planner with its last model and discriminator: `act(obs)` plans one action.

    Planning samples; actions are reproducible given `seed` (the same sequence of calls
    gives the same actions)."""

    def __init__(self, cfg: TrainConfig, state, seed: int = 0):
        from mbrlax.algos.mpc import DAM

        self.config, self.state, self._dam = cfg, state, DAM(cfg)
        self._act = self._dam.planner_policy(state, jax.random.key(seed))

    def act(self, obs):
        return self._act(np.asarray(obs, np.float32))

    def evaluate(self, episodes: int = 10, seed: int = 0, video: str | Path | None = None,
                 video_size: tuple[int, int] | None = None) -> tuple[float, float]:
        return _evaluate(self.config.env, self.act, episodes, seed, video, video_size)


def load(run_dir: str | Path) -> Policy | PlannerPolicy:
    """The policy of a run's last checkpoint (for DAM: the planner over its last model)."""
    cfg = load_config(run_dir)
    if cfg.algo == "dam":
        from mbrlax.algos.mpc import DAM

        state, _ = load_checkpoint(run_dir, DAM(cfg).init_state())
        return PlannerPolicy(cfg, state)
    cfg, state, _, _, _ = _restore(Path(run_dir))
    return Policy(cfg, state.agent.params["actor"])
