"""The Dyna loop: MBPO (Janner et al. 2019, Algorithm 2) and, with no model, SAC.

    for each env step (after `init_steps` of uniform exploration):
        every `train_freq` steps:  train the model on D_env       (model_training)
                                   branched k-step rollouts -> D_model (generate_rollouts)
        act in the env with the policy, add to D_env              (env_step)
        G SAC updates on a real_ratio mix of D_env and D_model   (agent_update)
    every epoch: evaluate, log a metrics row, checkpoint

The seams later papers change are the `Hooks` fields. Everything the loop
carries between steps is the `RunState` pytree plus a few host counters.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbrlax import envs
from mbrlax.agents.sac import SACState, deterministic_action, make_sac_update, sac_init, sample_action
from mbrlax.buffers import Buffer, buffer_add, buffer_init, gather, sample_indices
from mbrlax.config import TrainConfig, rollout_horizon
from mbrlax.models.ensemble import ModelState, model_init, model_inputs, model_targets
from mbrlax.models.trainer import BootstrapSampler, ModelTrainer, uniform_bootstrap
from mbrlax.rollout import branched_rollout
from mbrlax.run.checkpoint import save_checkpoint
from mbrlax.run.metrics import MetricsLogger
from mbrlax.run.progress import ProgressBar
from mbrlax.types import Batch, Transition

TRACE_COUNTS: collections.Counter = collections.Counter()  # jitted functions traced, by name


class NonFiniteError(RuntimeError):
    """NaN or Inf appeared in a model prediction, a loss or parameters."""


@struct.dataclass
class RunState:
    agent: SACState
    model: ModelState | None
    real: Buffer
    imagined: Buffer | None


def uniform_starts(real: Buffer, key, n: int) -> jax.Array:
    return sample_indices(real, key, n)


def unit_weights(batch: Transition) -> jax.Array:
    return jnp.ones_like(batch.reward)


def schedule_horizon(cfg: TrainConfig, epoch: int) -> int:
    return rollout_horizon(cfg.rollout.schedule, epoch)


@dataclass(frozen=True)
class Hooks:
    """The decisions PMAC, MEMR and ReW change; defaults are MBPO's."""

    sample_model_batch: BootstrapSampler = uniform_bootstrap
    """How model-training minibatches are drawn from real data (per-member bootstrap)."""
    sample_rollout_starts: Callable[[Buffer, jax.Array, int], jax.Array] = uniform_starts
    """(real buffer, key, n) -> indices of rollout start states."""
    rollout_length: Callable[[TrainConfig, int], int] = schedule_horizon
    """(config, epoch) -> rollout horizon."""
    transition_weights: Callable[[Transition], jax.Array] = unit_weights
    """Per-transition weights for the agent's losses (traced)."""
    with_disagreement: bool = False
    """Compute the ensemble disagreement in rollouts (all members; costs 7/1 forward passes)."""


def max_horizon(cfg: TrainConfig) -> int:
    return max(cfg.rollout.schedule[2], cfg.rollout.schedule[3])


def model_buffer_rows(cfg: TrainConfig, horizon: int) -> int:
    """retain_epochs x rollouts per epoch x horizon (MBPO's model buffer size)."""
    per_epoch = cfg.rollout.batch_size * max(1, cfg.steps_per_epoch // cfg.model.train_freq)
    return cfg.rollout.retain_epochs * per_epoch * horizon


def init_run_state(cfg: TrainConfig, obs_dim: int, act_dim: int) -> RunState:
    k_agent, k_model = jax.random.split(jax.random.key(cfg.seed))
    mbpo = cfg.algo == "mbpo"
    return RunState(
        agent=sac_init(k_agent, obs_dim, act_dim, cfg.sac),
        model=model_init(k_model, obs_dim, act_dim, cfg.model) if mbpo else None,
        real=buffer_init(obs_dim, act_dim, cfg.total_steps),
        imagined=buffer_init(obs_dim, act_dim, model_buffer_rows(cfg, max_horizon(cfg))) if mbpo else None,
    )


@dataclass
class Dyna:
    """Jitted pieces of the loop for one config (built once, reused after resume)."""

    cfg: TrainConfig
    obs_dim: int
    act_dim: int
    hooks: Hooks = field(default_factory=Hooks)

    def __post_init__(self):
        cfg, hooks = self.cfg, self.hooks
        self.root_key = jax.random.key(cfg.seed)
        self.termination_fn = envs.termination_fn(cfg.env) if cfg.algo == "mbpo" else None
        self.model_trainer = ModelTrainer(cfg.model)
        n_real = cfg.sac.batch_size if cfg.algo == "sac" else int(cfg.sac.batch_size * cfg.rollout.real_ratio)

        def sample_batch(data, key):
            real, imagined, window = data
            k_real, k_model = jax.random.split(key)
            batch = gather(real, sample_indices(real, k_real, n_real))
            if n_real < cfg.sac.batch_size:
                model_idx = sample_indices(imagined, k_model, cfg.sac.batch_size - n_real, window)
                fake = gather(imagined, model_idx)
                batch = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), batch, fake)
            return Batch(**vars(batch), weight=hooks.transition_weights(batch))

        sac_update = make_sac_update(cfg.sac, self.act_dim, sample_batch)

        def traced(name, fn, **jit_kw):
            def counting(*args):
                TRACE_COUNTS[name] += 1
                return fn(*args)

            return jax.jit(counting, **jit_kw)

        def add_real(state: RunState, tr: Transition):
            return state.replace(real=buffer_add(state.real, jax.tree.map(lambda x: x[None], tr)))

        def agent_step(state: RunState, tr: Transition, window, step):
            state = add_real(state, tr)
            key = jax.random.fold_in(jax.random.fold_in(self.root_key, step), 1)
            agent, metrics = sac_update(state.agent, (state.real, state.imagined, window), key)
            return state.replace(agent=agent), metrics

        def act(actor, obs, step):
            key = jax.random.fold_in(jax.random.fold_in(self.root_key, step), 2)
            return sample_action(actor, obs[None], key)[0][0]

        def rollout(state: RunState, horizon, step):
            key = jax.random.fold_in(jax.random.fold_in(self.root_key, step), 3)
            k_start, k_roll = jax.random.split(key)
            starts = gather(state.real, hooks.sample_rollout_starts(state.real, k_start, cfg.rollout.batch_size))
            trs, valid, dis = branched_rollout(
                state.model, state.agent.params["actor"], starts.obs, k_roll, horizon,
                max_horizon(cfg), self.termination_fn, hooks.with_disagreement,
            )
            flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), trs)
            finite = jnp.all(jnp.isfinite(jnp.where(valid[..., None], trs.next_obs, 0.0)))
            finite &= jnp.all(jnp.isfinite(jnp.where(valid, trs.reward, 0.0)))
            imagined = buffer_add(state.imagined, flat, valid.reshape(-1))
            return state.replace(imagined=imagined), finite, jnp.sum(valid)

        def training_data(real: Buffer):
            d = real.data
            return model_inputs(d.obs, d.action), model_targets(d.obs, d.reward, d.next_obs)

        self.add_real = traced("add_real", add_real, donate_argnums=(0,))
        self.agent_step = traced("agent_step", agent_step, donate_argnums=(0,))
        self.rollout = traced("rollout", rollout, donate_argnums=(0,))
        self.act = traced("act", act)
        self.act_deterministic = traced("act_deterministic", lambda a, o: deterministic_action(a, o[None])[0])
        self.training_data = traced("training_data", training_data)

    def window(self, horizon: int) -> int:
        """Model-buffer rows SAC samples from: retain_epochs of rollouts at the current horizon."""
        return model_buffer_rows(self.cfg, horizon)

    def train_model(self, state: RunState, env_steps: int) -> tuple[RunState, dict]:
        x, y = self.training_data(state.real)
        rng = np.random.default_rng([self.cfg.seed, env_steps, 4])
        model, info = self.model_trainer.train(
            state.model, x, y, int(state.real.size), rng, bootstrap=self.hooks.sample_model_batch
        )
        finite = np.isfinite(info["model/train_loss"]) and all(
            bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(model.params)
        )
        if not finite:
            raise NonFiniteError(f"model training produced NaN/Inf at env step {env_steps}")
        return state.replace(model=model), info


def scale_action(action: np.ndarray, space) -> np.ndarray:
    """[-1, 1] -> the env's Box bounds."""
    return space.low + (np.asarray(action) + 1.0) * 0.5 * (space.high - space.low)


def episode_returns(env, policy: Callable[[np.ndarray], np.ndarray], episodes: int) -> tuple[float, float]:
    """Mean and std of the returns of `policy` (obs -> env action) over `episodes` episodes."""
    returns = []
    for _ in range(episodes):
        obs, _ = env.reset()
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs))
            total, done = total + float(r), term or trunc
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def evaluate(dyna: Dyna, actor, env, episodes: int) -> tuple[float, float]:
    """Returns of the deterministic policy."""
    policy = lambda obs: scale_action(dyna.act_deterministic(actor, np.float32(obs)), env.action_space)
    return episode_returns(env, policy, episodes)


PHASES = ("env_step", "agent_update", "model_train", "rollout", "evaluate", "checkpoint")


class Timer:
    """Wall time per loop phase (the `mbrlax bench` split)."""

    def __init__(self):
        self.totals = collections.defaultdict(float)

    def __call__(self, phase: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        jax.tree.map(lambda x: x.block_until_ready() if isinstance(x, jax.Array) else x, out)
        self.totals[phase] += time.perf_counter() - t
        return out


def run_loop(
    dyna: Dyna,
    state: RunState,
    meta: dict,
    run_dir: Path,
    logger: MetricsLogger,
    stop_at: int | None = None,
    timer: Timer | None = None,
) -> tuple[RunState, dict]:
    """Run from meta["env_steps"] to cfg.total_steps (or `stop_at`), checkpointing each epoch."""
    cfg = dyna.cfg
    timer = timer or Timer()
    env = envs.make(cfg.env, seed=cfg.seed + meta["env_steps"])
    eval_env = envs.make(cfg.env, seed=cfg.seed + 10_000 + meta["env_steps"])
    space = env.action_space
    obs, _ = env.reset()
    ep_return, last = 0.0, {}
    horizon = dyna.hooks.rollout_length(cfg, max(meta["env_steps"] - cfg.init_steps, 0) // cfg.steps_per_epoch)
    wall0 = time.perf_counter() - meta.get("wall_time", 0.0)
    end = min(cfg.total_steps, stop_at or cfg.total_steps)

    with ProgressBar(cfg.total_steps, initial=meta["env_steps"], enabled=cfg.progress) as bar:
        while meta["env_steps"] < end:
            step = meta["env_steps"]
            loop_step = step - cfg.init_steps
            learning = loop_step >= 0
            epoch = max(loop_step, 0) // cfg.steps_per_epoch

            # Model training and branched rollouts (MBPO Alg. 2, lines 3-8).
            if cfg.algo == "mbpo" and learning and loop_step % cfg.model.train_freq == 0:
                state, info = timer("model_train", dyna.train_model, state, step)
                horizon = dyna.hooks.rollout_length(cfg, epoch)
                state, finite, n_new = timer("rollout", dyna.rollout, state, jnp.int32(horizon), step)
                if not bool(finite):
                    raise NonFiniteError(f"model rollouts produced NaN/Inf at env step {step}")
                last.update(info)
                last.update({"rollout/horizon": horizon, "rollout/transitions": int(n_new),
                             "rollout/model_buffer_size": int(state.imagined.size)})

            # Act in the real env.
            t0 = time.perf_counter()
            if learning:
                action = np.asarray(dyna.act(state.agent.params["actor"], np.float32(obs), step))
            else:
                action = np.random.default_rng([cfg.seed, step]).uniform(-1.0, 1.0, space.shape)
            next_obs, reward, term, trunc, _ = env.step(scale_action(action, space))
            tr = Transition(
                obs=np.float32(obs), action=np.float32(action), reward=np.float32(reward),
                next_obs=np.float32(next_obs), done=np.float32(term),
            )
            ep_return += float(reward)
            obs = next_obs
            if term or trunc:
                last["train/episode_return"] = ep_return
                obs, _ = env.reset()
                ep_return = 0.0
            timer.totals["env_step"] += time.perf_counter() - t0

            # Agent updates (G per env step, one lax.scan).
            if learning:
                state, metrics = timer("agent_update", dyna.agent_step, state, tr, dyna.window(horizon), step)
                if not bool(metrics["sac/finite"]):
                    raise NonFiniteError(f"SAC update produced NaN/Inf at env step {step}")
                sac_metrics = metrics
            else:
                state = dyna.add_real(state, tr)
            meta["env_steps"] = step + 1
            bar.update(1)

            # Epoch end: evaluate, log, checkpoint.
            if meta["env_steps"] % cfg.steps_per_epoch == 0 or meta["env_steps"] == end:
                ret, ret_std = timer("evaluate", evaluate, dyna, state.agent.params["actor"], eval_env, cfg.eval_episodes)
                wall = time.perf_counter() - wall0
                row = {"env_steps": meta["env_steps"], "eval_return": ret, "eval_return_std": ret_std}
                row.update(last)
                if learning:
                    row.update({k: float(v) for k, v in sac_metrics.items() if k != "sac/finite"})
                row.update({"time/wall": wall, **{f"time/{k}": v for k, v in timer.totals.items()}})
                logger.log(_fill_columns(row, cfg))
                bar.update(0, eval_return=ret)
                meta["wall_time"] = wall
                meta["epochs_done"] = meta.get("epochs_done", 0) + 1
                reached = cfg.stop_return is not None and ret >= cfg.stop_return
                if meta["epochs_done"] % cfg.checkpoint_every == 0 or meta["env_steps"] == end or reached:
                    timer("checkpoint", save_checkpoint, run_dir, state, meta)
                if reached:
                    print(f"mbrlax: eval_return {ret:.1f} >= stop_return {cfg.stop_return}: stopping")
                    break
    return state, meta


def _fill_columns(row: dict, cfg: TrainConfig) -> dict:
    """Fixed CSV columns from the first row on (NaN where a value is not yet known)."""
    cols = ["env_steps", "eval_return", "eval_return_std", "train/episode_return",
            "sac/q_loss", "sac/pi_loss", "sac/alpha", "sac/entropy", "sac/q_mean"]
    if cfg.algo == "mbpo":
        cols += ["model/train_loss", "model/holdout_mse", "model/epochs", "model/train_size",
                 "rollout/horizon", "rollout/transitions", "rollout/model_buffer_size"]
    cols += ["time/wall"] + [f"time/{k}" for k in PHASES]
    return {c: row.get(c, float("nan")) for c in cols}
