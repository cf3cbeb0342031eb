"""Python API: `train(config) -> Run`, `resume(run_dir)`, `load(run_dir) -> Policy`."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np

from mbrlax import envs
from mbrlax.algos.dyna import Dyna, Lane, RunState, episode_returns, init_run_state, run_loop, scale_action
from mbrlax.buffers import keep_newest
from mbrlax.config import ConfigError, TrainConfig, config_from_dict, validate
from mbrlax.runtime import configure
from mbrlax.run.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint, stored_shape
from mbrlax.run.lock import run_lock
from mbrlax.run.metrics import MetricsLogger, read_metrics
from mbrlax.seeds import Seeds
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
    run_dir = new_run_dir(cfg)  # (prepare_env checked the env's spaces)
    with run_lock(run_dir):
        print(f"mbrlax: {cfg.algo} on {cfg.env}, seed {cfg.seed}, {cfg.total_steps} env steps -> {run_dir}")
        return _run_dyna([cfg], [run_dir], usage, stop_at)[0]


def seed_configs(cfg: TrainConfig, seeds) -> list[TrainConfig]:
    """`cfg` for each of `seeds` (a list, or text such as `0-3` or `0,2,5`), run directory OUT/seed_S, where
    OUT is cfg.out (default runs/<algo>_<env>_seeds<first>-<last>_<time>); ConfigError for what cannot work."""
    from dataclasses import replace

    from mbrlax.seeds import parse_seeds

    seeds = parse_seeds(seeds)
    if cfg.algo == "dam":
        raise ConfigError("invalid --seeds with algo=dam: DAM's rounds do not run vmapped; run its seeds with "
                          "`mbrlax sweep --algo dam --seeds ...`")
    if cfg.model.devices > 1:
        raise ConfigError(f"invalid model.devices={cfg.model.devices} with --seeds: several seeds train vmapped "
                          "on one device; use 0 (automatic) or 1")
    env = re.sub(r"[^\w.-]+", "-", cfg.env)  # `module:function` ids
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.out) if cfg.out is not None else Path("runs") / f"{cfg.algo}_{env}_seeds{seeds[0]}-{seeds[-1]}_{stamp}"
    return [validate(replace(cfg, seed=s, out=str(out / f"seed_{s}"))) for s in seeds]


def train_seeds(cfg: TrainConfig, seeds, usage: ModelUsage | None = None, stop_at: int | None = None) -> list[Run]:
    """Train `cfg` for several seeds in one process (`mbrlax train --seeds 0,1,2,3`): the RunState stacked
    over the seeds and every jitted step vmapped over them (mbrlax/seeds.py), the seeds' host envs stepped
    together. Each seed is an ordinary run directory OUT/seed_S (see `seed_configs`), resumable alone
    (`resume(OUT/seed_S)`) or together (`resume(OUT)`), loadable and plottable like any run. Returns a Run
    per seed."""
    cfgs = seed_configs(validate(cfg), seeds)
    configure(cfg.model.devices, cfg.model.ensemble_size)
    prepare_env(cfgs[0])  # (and the env's spaces)
    run_dirs = [new_run_dir(c) for c in cfgs]
    with contextlib.ExitStack() as locks:
        for run_dir in run_dirs:
            locks.enter_context(run_lock(run_dir))
        print(f"mbrlax: {cfg.algo} on {cfg.env}, seeds {', '.join(str(c.seed) for c in cfgs)} vmapped, "
              f"{cfg.total_steps} env steps -> {run_dirs[0].parent}/seed_*")
        return _run_dyna(cfgs, run_dirs, usage, stop_at)


def _run_dyna(cfgs: list[TrainConfig], run_dirs: list[Path], usage: ModelUsage | None, stop_at: int | None,
              resuming: bool = False) -> list[Run]:
    """Train (resuming: continue from their checkpoints) the Dyna runs of `cfgs`, equal but for the seed, in one
    loop; the caller holds their locks."""
    cfg = cfgs[0]
    obs_dim, act_dim = env_dims(cfg)
    usage = usage or make_usage(cfg)
    seeds = Seeds(tuple(c.seed for c in cfgs))
    states, lanes = [], []
    with contextlib.ExitStack() as loggers:
        for c, run_dir in zip(cfgs, run_dirs):
            state = init_run_state(c, obs_dim, act_dim, usage)
            if resuming:
                state, meta = load_run_state(run_dir, state)
                step = meta["env_steps"]
                if meta.get("packed", [{}])[-1].get("env_steps") == step:
                    print(f"mbrlax: {run_dir} is a packed copy (mbrlax pack): its model buffer starts empty at "
                          f"env step {step} (the run had {meta['packed'][-1]['model_rows']} model rows there); "
                          "the next rollouts refill it")
                last_row = step - step % cfg.steps_per_epoch  # rows are logged at epoch ends, before their checkpoint
                logger = MetricsLogger(run_dir, resume_step=step, complete_to=last_row)
            else:
                (run_dir / "config.json").write_text(c.to_json())
                meta, logger = {"env_steps": 0}, MetricsLogger(run_dir)
            states.append(state)
            lanes.append(Lane(run_dir, loggers.enter_context(logger), meta))
        at = {lane.meta["env_steps"] for lane in lanes}
        if len(at) > 1:
            raise CheckpointError("the seeds' checkpoints are at different env steps ("
                                  + ", ".join(f"{lane.run_dir.name}: {lane.meta['env_steps']}" for lane in lanes)
                                  + "); resume each with `mbrlax resume DIR/seed_S`")
        if resuming:
            print(f"mbrlax: resuming {', '.join(map(str, run_dirs))} at env step {at.pop()} of {cfg.total_steps}")
        dyna = Dyna(cfg, obs_dim, act_dim, usage, seeds)
        state = run_loop(dyna, seeds.combine(states), lanes, stop_at=stop_at)
    return [Run(d, c, st) for d, c, st in zip(run_dirs, cfgs, seeds.split(state))]


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
    state, meta = load_run_state(run_dir, init_run_state(cfg, obs_dim, act_dim, usage))
    return cfg, state, meta, obs_dim, act_dim


def load_run_state(run_dir: Path, target: RunState) -> tuple[RunState, dict]:
    """The checkpoint of `run_dir` in the shape of `target` (load_checkpoint), also one from before the model
    buffer was sized to the longest horizon the run reaches: its deeper buffer's rows beyond that are never
    sampled, so it is loaded as saved and its newest rows kept."""
    rows = stored_shape(run_dir, "state.imagined.data.reward") if target.imagined is not None else None
    if not rows or rows[0] <= target.imagined.capacity:
        return load_checkpoint(run_dir, target)
    deeper = target.imagined.replace(data=jax.tree.map(
        lambda x: np.zeros((rows[0], *x.shape[1:]), x.dtype), target.imagined.data))
    state, meta = load_checkpoint(run_dir, target.replace(imagined=deeper))
    return state.replace(imagined=keep_newest(state.imagined, target.imagined.capacity)), meta


def pack(run_dir: str | Path, dest: str | Path) -> Path:
    """A small copy of a Dyna run to carry to another machine, e.g. in git: DEST with the run's config.json,
    metrics.csv and its newest checkpoint, the model buffer emptied and the file deflated (a Hopper MBPO
    checkpoint at 30k steps: about 60 MB -> 15 MB). `mbrlax resume DEST` continues it: exactly the run whose
    model buffer was cleared at the checkpoint's env step (the next rollouts refill it), everything else as
    saved. The run may go on writing `run_dir` meanwhile (checkpoints are replaced atomically)."""
    run_dir, dest = Path(run_dir), Path(dest)
    cfg = load_config(run_dir)
    if cfg.algo == "dam":
        raise ConfigError(f"{run_dir} is a dam run: it has no model buffer to drop; copy the directory instead")
    if dest.exists() and any(dest.iterdir()):
        raise CheckpointError(f"{dest} exists and is not empty: pack into a new directory")
    usage = make_usage(cfg)
    _, state, meta, _, _ = _restore(run_dir, usage)
    if state.imagined is not None:
        dropped = int(state.imagined.size)
        empty = jax.tree.map(np.zeros_like, state.imagined.data)
        state = state.replace(imagined=state.imagined.replace(data=empty, size=np.int32(0)),
                              usage=usage.clear_model_rows(state.usage))
        meta = {**meta, "packed": [*meta.get("packed", []), {"env_steps": meta["env_steps"], "model_rows": dropped}]}
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.csv"):
        shutil.copy2(run_dir / name, dest / name)
    save_checkpoint(dest, state, meta, compress=True)
    return dest


def resume(run_dir: str | Path, usage: ModelUsage | None = None, stop_at: int | None = None) -> Run | list[Run]:
    """Continue a stopped or killed run from its last checkpoint (metrics continue without gaps); for the
    directory of a multi-seed run (`train_seeds`: OUT holding seed_S run directories) all its seeds, vmapped
    again, returning a Run per seed.

    Refuses (RunLockedError) while another process writes `run_dir`."""
    run_dir = Path(run_dir)
    seed_dirs = sorted(run_dir.glob("seed_*/config.json")) if not (run_dir / "config.json").exists() else []
    if seed_dirs:
        return _resume_seeds([p.parent for p in seed_dirs], usage, stop_at)
    cfg = load_config(run_dir)
    configure(cfg.model.devices, cfg.model.ensemble_size)  # CPU threading, before JAX starts
    with run_lock(run_dir):
        prepare_env(cfg)
        if cfg.algo == "dam":
            if not has_checkpoint(run_dir):
                raise CheckpointError(f"{run_dir} has no checkpoint to resume from")
            return _train_dam(cfg, run_dir, resuming=True)
        return _run_dyna([cfg], [run_dir], usage, stop_at, resuming=True)[0]


def _resume_seeds(run_dirs: list[Path], usage: ModelUsage | None, stop_at: int | None) -> list[Run]:
    cfgs = [load_config(d) for d in run_dirs]
    shared = [json.loads(c.to_json()) for c in cfgs]
    for d in shared:
        d.pop("seed"), d.pop("out")
    if any(d != shared[0] for d in shared):
        raise ConfigError(f"the seed directories of {run_dirs[0].parent} differ in more than their seed; resume "
                          "each with `mbrlax resume DIR/seed_S`")
    order = np.argsort([c.seed for c in cfgs])
    cfgs, run_dirs = [cfgs[i] for i in order], [run_dirs[i] for i in order]
    configure(cfgs[0].model.devices, cfgs[0].model.ensemble_size)
    with contextlib.ExitStack() as locks:
        for d in run_dirs:
            locks.enter_context(run_lock(d))
        prepare_env(cfgs[0])
        return _run_dyna(cfgs, run_dirs, usage, stop_at, resuming=True)


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
