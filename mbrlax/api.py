"""Python API: `train(config) -> Run`, `resume(run_dir)`, `load(run_dir) -> Policy`."""

from __future__ import annotations

import json
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
        run_dir = Path("runs") / f"{cfg.algo}_{cfg.env}_s{cfg.seed}_{stamp}"
        n = 1
        while run_dir.exists():
            run_dir = run_dir.with_name(f"{cfg.algo}_{cfg.env}_s{cfg.seed}_{stamp}_{n}")
            n += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(cfg: TrainConfig, usage: ModelUsage | None = None, stop_at: int | None = None) -> Run:
    """Train from scratch; all config errors are raised before any work starts.

    `usage` replaces the strategy the registry gives `cfg.algo` (mbrlax.usage: a ModelUsage
    subclass or a Compose of several); pass the same one to `resume`."""
    validate(cfg)
    configure(cfg.model.devices, cfg.model.ensemble_size)  # CPU threading, before JAX starts
    if cfg.algo == "dam":
        return _train_dam(cfg)
    obs_dim, act_dim = env_dims(cfg)
    run_dir = new_run_dir(cfg)
    print(f"mbrlax: {cfg.algo} on {cfg.env}, seed {cfg.seed}, {cfg.total_steps} env steps -> {run_dir}")
    (run_dir / "config.json").write_text(cfg.to_json())
    usage = usage or make_usage(cfg)
    dyna = Dyna(cfg, obs_dim, act_dim, usage)
    state = init_run_state(cfg, obs_dim, act_dim, usage)
    with MetricsLogger(run_dir) as logger:
        state, _ = run_loop(dyna, state, {"env_steps": 0}, run_dir, logger, stop_at=stop_at)
    return Run(run_dir, cfg, state)


def _train_dam(cfg: TrainConfig, meta: dict | None = None, run_dir: Path | None = None) -> Run:
    """DAM (algos/mpc.py): a fresh run, or the continuation of `run_dir` from `meta`."""
    from mbrlax.algos.mpc import DAM, run_rounds

    dam = DAM(cfg)
    state = dam.init_state()
    if run_dir is None:
        run_dir, meta = new_run_dir(cfg), {"round": 0, "env_steps": 0}
        d = cfg.dam
        print(f"mbrlax: dam ({d.model}, {d.objective}, correction {d.correction}) on {cfg.env}, "
              f"seed {cfg.seed}, {d.rounds} rounds -> {run_dir}")
        (run_dir / "config.json").write_text(cfg.to_json())
        resume_step = None
    else:
        state, meta = load_checkpoint(run_dir, state)
        print(f"mbrlax: resuming {run_dir} at round {meta['round']} of {cfg.dam.rounds}")
        resume_step = meta["env_steps"]
    with MetricsLogger(run_dir, resume_step=resume_step) as logger:
        state, _ = run_rounds(dam, state, meta, run_dir, logger)
    return Run(run_dir, cfg, state)


def load_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run directory: no config.json")
    return validate(config_from_dict(json.loads(path.read_text())))


def _restore(run_dir: Path, usage: ModelUsage | None = None) -> tuple[TrainConfig, RunState, dict, int, int]:
    cfg = load_config(run_dir)
    obs_dim, act_dim = env_dims(cfg)
    state, meta = load_checkpoint(run_dir, init_run_state(cfg, obs_dim, act_dim, usage))
    return cfg, state, meta, obs_dim, act_dim


def resume(run_dir: str | Path, usage: ModelUsage | None = None, stop_at: int | None = None) -> Run:
    """Continue a stopped or killed run from its last checkpoint (metrics continue without gaps)."""
    run_dir = Path(run_dir)
    model_cfg = load_config(run_dir).model
    configure(model_cfg.devices, model_cfg.ensemble_size)  # CPU threading, before JAX starts
    if load_config(run_dir).algo == "dam":
        if not has_checkpoint(run_dir):
            raise CheckpointError(f"{run_dir} has no checkpoint to resume from")
        return _train_dam(load_config(run_dir), run_dir=run_dir)
    usage = usage or make_usage(load_config(run_dir))
    cfg, state, meta, obs_dim, act_dim = _restore(run_dir, usage)
    print(f"mbrlax: resuming {run_dir} at env step {meta['env_steps']} of {cfg.total_steps}")
    dyna = Dyna(cfg, obs_dim, act_dim, usage)
    with MetricsLogger(run_dir, resume_step=meta["env_steps"]) as logger:
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

    def evaluate(self, episodes: int = 10, seed: int = 0) -> tuple[float, float]:
        """Mean and std of the return over `episodes` episodes of the config's env."""
        return episode_returns(envs.make(self.config.env, seed=seed), self.act, episodes)


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

    def evaluate(self, episodes: int = 10, seed: int = 0) -> tuple[float, float]:
        return episode_returns(envs.make(self.config.env, seed=seed), self.act, episodes)


def load(run_dir: str | Path) -> Policy | PlannerPolicy:
    """The policy of a run's last checkpoint (for DAM: the planner over its last model)."""
    cfg = load_config(run_dir)
    if cfg.algo == "dam":
        from mbrlax.algos.mpc import DAM

        state, _ = load_checkpoint(run_dir, DAM(cfg).init_state())
        return PlannerPolicy(cfg, state)
    cfg, state, _, _, _ = _restore(Path(run_dir))
    return Policy(cfg, state.agent.params["actor"])
