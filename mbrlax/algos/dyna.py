"""The Dyna loop: MBPO (Janner et al. 2019, Algorithm 2) and every strategy built on it.

    for each env step (after `init_steps` of uniform exploration):
        every `train_freq` steps:  diagnostics, data weights, train the model on D_env  (model_round)
        when rollouts are due:     k-step rollouts from start states -> D_model          (rollout)
        act in the env with the policy, add to D_env                                     (env_step)
        the strategy's step before the updates (ReW: meta step)                           (before_updates)
        G agent updates on minibatches of D_env and D_model                              (agent_step)
    every epoch: evaluate, log a metrics row, checkpoint

What a method changes (PMAC's data weights, MEMR's starts, ReW's loss weights)
is its `ModelUsage` strategy (mbrlax/usage/base.py), chosen by `cfg.algo` from the
registry; its state is `RunState.usage`. Everything the loop carries between
steps is the `RunState` pytree plus, per seed, a `Lane` of host state (envs,
run directory, counters); several seeds run in one loop with the RunState
vmapped over them (mbrlax/seeds.py).
"""

from __future__ import annotations

import collections
import functools
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbrlax import envs
from mbrlax.agents.sac import SACState, deterministic_action, make_sac_update, sac_init, sample_action
from mbrlax.buffers import Buffer, buffer_add, buffer_init, gather
from mbrlax.config import TrainConfig
from mbrlax.models.diagnostics import DIAGNOSTIC_COLUMNS, model_diagnostics
from mbrlax.models.ensemble import ModelState, model_init, model_inputs, model_targets
from mbrlax.models.trainer import ModelTrainer
from mbrlax.run.checkpoint import save_checkpoint
from mbrlax.run.metrics import MetricsLogger
from mbrlax.run.progress import ProgressBar
from mbrlax.run.stop import StopSignals
from mbrlax.seeds import Seeds
from mbrlax.types import Transition
from mbrlax.usage import ModelUsage, make_usage
from mbrlax.usage.base import model_buffer_rows

TRACE_COUNTS: collections.Counter = collections.Counter()  # jitted functions traced, by name


class NonFiniteError(RuntimeError):
    """NaN or Inf appeared in a model prediction, a loss or parameters."""


@struct.dataclass
class RunState:
    agent: SACState
    model: ModelState | None
    real: Buffer
    imagined: Buffer | None
    usage: Any = struct.field(default_factory=dict)  # the ModelUsage strategy's state


def init_run_state(cfg: TrainConfig, obs_dim: int, act_dim: int, usage: ModelUsage | None = None) -> RunState:
    usage = usage or make_usage(cfg)
    k_agent, k_model = jax.random.split(jax.random.key(cfg.seed))
    k_usage = jax.random.fold_in(jax.random.key(cfg.seed), 5)
    mb = usage.uses_model
    return RunState(
        agent=sac_init(k_agent, obs_dim, act_dim, cfg.sac),
        model=model_init(k_model, obs_dim, act_dim, cfg.model) if mb else None,
        real=buffer_init(obs_dim, act_dim, cfg.total_steps),
        imagined=buffer_init(obs_dim, act_dim, usage.imagined_capacity()) if mb else None,
        usage=usage.init(k_usage, obs_dim, act_dim),
    )


@dataclass
class Dyna:
    """Jitted pieces of the loop for one config and strategy (built once, reused after resume).

    With several `seeds` (mbrlax/seeds.py) the RunState and every per-seed argument carry a leading seed
    axis and the same pieces run vmapped over it; the seeds differ only in their random streams."""

    cfg: TrainConfig
    obs_dim: int
    act_dim: int
    usage: ModelUsage | None = None
    seeds: Seeds | None = None

    def __post_init__(self):
        cfg = self.cfg
        usage = self.usage = self.usage or make_usage(cfg)
        seeds = self.seeds = self.seeds or Seeds((cfg.seed,))
        self.termination_fn = envs.termination_fn(cfg.env) if usage.uses_model else None
        spec = envs.get_spec(cfg.env)
        self.reward_fn = spec.reward if usage.uses_model and spec.custom else None  # your env's known reward
        self.model_trainer = ModelTrainer(cfg.model, seeds=seeds)

        def sample_batch(data, key):
            real, imagined, window, u = data
            return usage.agent_batch(u, real, imagined, window, key)

        sac_update = make_sac_update(cfg.sac, self.act_dim, sample_batch)

        def traced(name, fn, in_axes, with_seed=True, **jit_kw):
            """jit(fn) (vmapped over the seeds); with_seed: the seed is its first argument, given here."""
            def counting(*args):
                TRACE_COUNTS[name] += 1
                return fn(*args)

            jitted = jax.jit(seeds.vmap(counting, in_axes), **jit_kw)
            return functools.partial(jitted, seeds.ids()) if with_seed else jitted

        def step_key(seed, step, stream):
            return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), stream)

        def add_real(state: RunState, tr: Transition):
            real = buffer_add(state.real, jax.tree.map(lambda x: x[None], tr))
            row = (real.ptr - 1) % real.capacity
            u = usage.on_real_step(state.usage, real, row, state.agent.params["actor"])
            return state.replace(real=real, usage=u)

        def before_updates(seed, state: RunState, tr: Transition, step):
            """The new real row, then the strategy's step before the agent updates (ReW: its meta step)."""
            state = add_real(state, tr)
            return state.replace(usage=usage.before_updates(state.usage, state, step_key(seed, step, 6)))

        def agent_step(seed, state: RunState, window, step):
            data = (state.real, state.imagined, window, state.usage)
            agent, metrics = sac_update(state.agent, data, step_key(seed, step, 1))
            u, agent = usage.after_updates(state.usage, state.replace(agent=agent), step_key(seed, step, 7))
            return state.replace(agent=agent, usage=u), metrics

        def act(seed, actor, obs, step):
            return sample_action(actor, obs[None], step_key(seed, step, 2))[0][0]

        def rollout(seed, state: RunState, horizon, step):
            k_start, k_roll, k_after = jax.random.split(step_key(seed, step, 3), 3)
            actor = state.agent.params["actor"]
            idx, extras = usage.rollout_starts(state.usage, state.real, k_start, cfg.rollout.batch_size)
            trs, valid, dis = usage.rollout(state.model, actor, gather(state.real, idx).obs, k_roll, horizon,
                                            usage.max_horizon(), self.termination_fn)
            if self.reward_fn is not None:  # a known reward replaces the model's predicted one
                trs = trs.replace(reward=jax.vmap(self.reward_fn)(trs.obs, trs.action, trs.next_obs))
            flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), trs)
            finite = jnp.all(jnp.isfinite(jnp.where(valid[..., None], trs.next_obs, 0.0)))
            finite &= jnp.all(jnp.isfinite(jnp.where(valid, trs.reward, 0.0)))
            imagined = buffer_add(state.imagined, flat, valid.reshape(-1))
            u = usage.after_rollout(state.usage, idx, extras, trs, valid, dis, actor, k_after)
            return state.replace(imagined=imagined, usage=u), finite, jnp.sum(valid)

        def diagnostics(seed, model, real: Buffer, step):
            """The current model's errors on the newest chunk, before it trains on it."""
            return model_diagnostics(model, real, step_key(seed, step, 4), cfg.model.train_freq)

        def before_training(seed, u, real: Buffer, actor, step):
            """The strategy's per-round update and this round's real-data weights."""
            u = usage.on_model_round(u, real, actor, step_key(seed, step, 5))
            return u, usage.real_data_weights(u, real)

        def training_data(real: Buffer):
            d = real.data
            return model_inputs(d.obs, d.action), model_targets(d.obs, d.reward, d.next_obs)

        # Per seed: the seed, then (0) per-seed values or (None) values shared by the seeds.
        self.add_real = traced("add_real", add_real, (0, 0), with_seed=False, donate_argnums=(0,))
        self.before_updates = traced("before_updates", before_updates, (0, 0, 0, None), donate_argnums=(1,))
        self.agent_step = traced("agent_step", agent_step, (0, 0, None, None), donate_argnums=(1,))
        self.rollout = traced("rollout", rollout, (0, 0, None, None), donate_argnums=(1,))
        self.before_training = traced("before_training", before_training, (0, 0, 0, 0, None))
        self.diagnostics = traced("diagnostics", diagnostics, (0, 0, 0, None))
        self.act = traced("act", act, (0, 0, 0, None))
        self.training_data = traced("training_data", training_data, (0,), with_seed=False)
        # One seed's policy (evaluation runs seed by seed).
        self.act_deterministic = jax.jit(lambda a, o: deterministic_action(a, o[None])[0])

    def window(self, horizon: int) -> int:
        """Model-buffer rows SAC samples from: retain_epochs of rollouts at the current horizon."""
        return model_buffer_rows(self.cfg, horizon)

    def train_model(self, state: RunState, env_steps: int) -> tuple[RunState, list[dict]]:
        """One model round: diagnostics, the strategy's data weights, then model training (per seed: an info)."""
        seeds, step = self.seeds, jnp.int32(env_steps)
        # No errors of an untrained model (the seeds train on the same schedule).
        trained = bool(np.all(np.isfinite(np.asarray(state.model.holdout_mse))))
        diags = (seeds.split(self.diagnostics(state.model, state.real, step)) if trained
                 else [dict.fromkeys(DIAGNOSTIC_COLUMNS, np.nan)] * seeds.n)
        u, weights = self.before_training(state.usage, state.real, state.agent.params["actor"], step)
        state = state.replace(usage=u)
        weights = [None] * seeds.n if weights is None else [np.asarray(w) for w in seeds.split(weights)]
        x, y = self.training_data(state.real)
        rngs = [np.random.default_rng([seed, env_steps, 4]) for seed in seeds.values]
        n = int(np.asarray(state.real.size).flat[0])  # the seeds collect in lockstep
        model, infos = self.model_trainer.train_seeds(state.model, x, y, n, rngs,
                                                      [self.usage.model_train_args(w) for w in weights])
        finite = all(np.isfinite(i["model/train_loss"]) for i in infos) and all(
            bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(model.params)
        )
        if not finite:
            raise NonFiniteError(f"model training produced NaN/Inf at env step {env_steps}")
        return state.replace(model=model), [{**i, **{k: float(v) for k, v in d.items()}} for i, d in zip(infos, diags)]


def scale_action(action: np.ndarray, space) -> np.ndarray:
    """[-1, 1] -> the env's Box bounds."""
    return space.low + (np.asarray(action) + 1.0) * 0.5 * (space.high - space.low)


TRAIN_EPISODE, EVAL_EPISODE = 1, 2  # reset-seed streams


def reset_seed(seed: int, stream: int, *index: int) -> int:
    """The env's reset seed for one episode, a function of (seed, stream, index...) only: a resumed run meets
    the episodes an uninterrupted one meets."""
    return int(np.random.SeedSequence([seed, stream, *index]).generate_state(1)[0])


def episode_returns(env, policy: Callable[[np.ndarray], np.ndarray], episodes: int,
                    reset_seeds: list[int] | None = None) -> tuple[float, float]:
    """Mean and std of the returns of `policy` (obs -> env action) over `episodes` episodes (each reset with
    its seed from `reset_seeds` if given, else continuing the env's RNG)."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=None if reset_seeds is None else reset_seeds[i])
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs))
            total, done = total + float(r), term or trunc
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def evaluate(dyna: Dyna, actor, env, episodes: int, seed: int, step: int) -> tuple[float, float]:
    """Returns of the deterministic policy on the evaluation episodes of env step `step`."""
    policy = lambda obs: scale_action(dyna.act_deterministic(actor, np.float32(obs)), env.action_space)
    return episode_returns(env, policy, episodes, [reset_seed(seed, EVAL_EPISODE, step, i) for i in range(episodes)])


PHASES = ("env_step", "before_updates", "agent_update", "model_train", "rollout", "evaluate", "checkpoint")


class Timer:
    """Wall time per loop phase (the `mbrlax bench` split; `totals` continues a resumed run's)."""

    def __init__(self, totals: dict | None = None):
        self.totals = collections.defaultdict(float, totals or {})

    def __call__(self, phase: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        jax.tree.map(lambda x: x.block_until_ready() if isinstance(x, jax.Array) else x, out)
        self.totals[phase] += time.perf_counter() - t
        return out


@dataclass
class Lane:
    """One seed's side of the loop on the host: its run directory, metrics file and meta (saved with its
    checkpoint: counters, the latest row values and the current training episode), and while the loop runs its
    envs and observation."""

    run_dir: Path
    logger: MetricsLogger
    meta: dict
    env: Any = None
    eval_env: Any = None
    obs: Any = None

    def start_envs(self, env_id: str, seed: int) -> None:
        """The training env at the current episode's step (replayed from its reset seed and the actions in
        meta["episode"]: a resume continues the episode an uninterrupted run is in) and the evaluation env."""
        self.env, self.eval_env = envs.make(env_id), envs.make(env_id)
        if "episode" not in self.meta and self.meta["env_steps"] > 0:
            warnings.warn(f"{self.run_dir}: the checkpoint is from an mbrlax that did not save the training "
                          "episode; the resumed run starts a new one (it is not the uninterrupted run)", stacklevel=2)
        episode = self.meta.setdefault("episode", {"index": 0, "actions": [], "return": 0.0})
        self._reset(seed)
        ep_return = 0.0
        for action in episode["actions"]:
            self.obs, reward, *_ = self.env.step(scale_action(np.float32(action), self.env.action_space))
            ep_return += float(reward)
        if ep_return != episode["return"]:
            warnings.warn(f"{self.run_dir}: replaying the current episode's {len(episode['actions'])} actions "
                          f"gave return {ep_return}, not the saved {episode['return']}: {env_id} is not "
                          "deterministic given its reset seed and actions, so this resumed run is not the "
                          "uninterrupted one", stacklevel=2)
            episode["return"] = ep_return

    def step_env(self, seed: int, action: np.ndarray) -> Transition:
        """One env step with `action` in [-1, 1] (recorded in the episode; a new episode on term or trunc)."""
        action = np.float32(action)  # what the replay in start_envs will send
        next_obs, reward, term, trunc, _ = self.env.step(scale_action(action, self.env.action_space))
        tr = Transition(obs=np.float32(self.obs), action=action, reward=np.float32(reward),
                        next_obs=np.float32(next_obs), done=np.float32(term))
        episode = self.meta["episode"]
        episode["actions"].append(action.tolist())
        episode["return"] += float(reward)
        self.obs = next_obs
        if term or trunc:
            self.meta["last"]["train/episode_return"] = episode["return"]
            self.meta["episode"] = {"index": episode["index"] + 1, "actions": [], "return": 0.0}
            self._reset(seed)
        return tr

    def _reset(self, seed: int) -> None:
        """Start meta["episode"] in the training env, from its reset seed."""
        self.obs, _ = self.env.reset(seed=reset_seed(seed, TRAIN_EPISODE, self.meta["episode"]["index"]))


def run_loop(dyna: Dyna, state: RunState, lanes: list[Lane], stop_at: int | None = None,
             timer: Timer | None = None) -> RunState:
    """Run every seed (one Lane each, in `dyna.seeds` order, all at the same env step) from there to
    cfg.total_steps (or `stop_at`), checkpointing each epoch; on SIGTERM or SIGINT, checkpoint at the end of the
    current env step and raise RunStopped (mbrlax/run/stop.py)."""
    cfg, seeds, usage = dyna.cfg, dyna.seeds, dyna.usage
    timer = timer or Timer(lanes[0].meta.get("times"))  # time/* columns continue across resumes
    start = lanes[0].meta["env_steps"]
    for lane, seed in zip(lanes, seeds.values, strict=True):
        lane.meta.setdefault("last", {})  # the latest values of every row, kept in checkpoints
        if lane.env is None:  # (a second call, as in `mbrlax bench`, continues the same envs)
            lane.start_envs(cfg.env, seed)
    space = lanes[0].env.action_space
    horizon = usage.rollout_horizon(max(start - cfg.init_steps, 0) // cfg.steps_per_epoch)
    updates_per_step = cfg.sac.updates_per_step
    wall0 = time.perf_counter() - lanes[0].meta.get("wall_time", 0.0)
    end = min(cfg.total_steps, stop_at or cfg.total_steps)
    step = start

    def checkpoint(views: list[RunState]):
        for lane, view in zip(lanes, views):
            save_checkpoint(lane.run_dir, view, lane.meta)

    with ProgressBar(cfg.total_steps, initial=start, enabled=cfg.progress) as bar, StopSignals() as stop:
        while step < end:
            loop_step = step - cfg.init_steps
            learning = loop_step >= 0
            epoch = max(loop_step, 0) // cfg.steps_per_epoch

            # Model training (MBPO Alg. 2, lines 3-4) and model rollouts (lines 5-8).
            if usage.uses_model and learning and loop_step % cfg.model.train_freq == 0:
                state, infos = timer("model_train", dyna.train_model, state, step)
                for lane, info in zip(lanes, infos):
                    lane.meta["last"].update(info)
            if usage.uses_model and learning and usage.rollout_due(loop_step):
                horizon = usage.rollout_horizon(epoch)
                state, finite, n_new = timer("rollout", dyna.rollout, state, jnp.int32(horizon), step)
                if not np.all(np.asarray(finite)):
                    raise NonFiniteError(f"model rollouts produced NaN/Inf at env step {step}")
                for lane, n, size in zip(lanes, seeds.split(np.asarray(n_new)), seeds.split(np.asarray(state.imagined.size))):
                    lane.meta["model_transitions"] = lane.meta.get("model_transitions", 0) + int(n)
                    lane.meta["last"].update({"rollout/horizon": horizon, "rollout/transitions": int(n),
                                              "rollout/model_transitions": lane.meta["model_transitions"],
                                              "rollout/model_buffer_size": int(size)})

            # Act in the real envs.
            t0 = time.perf_counter()
            if learning:
                obs = seeds.combine([np.float32(lane.obs) for lane in lanes])
                actions = seeds.split(np.asarray(dyna.act(state.agent.params["actor"], obs, step)))
            else:
                actions = [np.random.default_rng([seed, step]).uniform(-1.0, 1.0, space.shape) for seed in seeds.values]
            tr = seeds.combine([lane.step_env(seed, a) for lane, seed, a in zip(lanes, seeds.values, actions)])
            timer.totals["env_step"] += time.perf_counter() - t0

            # Agent updates (G per env step, one lax.scan), after the strategy's step before them.
            if learning:
                state = timer("before_updates", dyna.before_updates, state, tr, step)
                state, metrics = timer("agent_update", dyna.agent_step, state, dyna.window(horizon), step)
                if not np.all(np.asarray(metrics["sac/finite"])):
                    raise NonFiniteError(f"SAC update produced NaN/Inf at env step {step}")
                sac_metrics = seeds.split(metrics)
            else:
                state = dyna.add_real(state, tr)
            step += 1
            for lane in lanes:
                lane.meta["env_steps"] = step
                if learning:
                    lane.meta["agent_updates"] = lane.meta.get("agent_updates", 0) + updates_per_step
            bar.update(1)

            # Epoch end: evaluate, log, checkpoint (seed by seed).
            if step % cfg.steps_per_epoch == 0 or step == end:
                returns, views = [], seeds.split(state)  # one split for the evaluations and the checkpoint
                for i, (lane, view, seed) in enumerate(zip(lanes, views, seeds.values)):
                    ret, ret_std = timer("evaluate", evaluate, dyna, view.agent.params["actor"], lane.eval_env,
                                         cfg.eval_episodes, seed, step)
                    returns.append(ret)
                    wall = time.perf_counter() - wall0
                    row = {"env_steps": step, "eval_return": ret, "eval_return_std": ret_std}
                    row.update(lane.meta["last"])
                    if learning:
                        row.update({k: float(v) for k, v in sac_metrics[i].items() if k != "sac/finite"})
                    row.update(usage.metrics(view))
                    row.update({"agent/updates": lane.meta.get("agent_updates", 0), "time/wall": wall,
                                **{f"time/{k}": v for k, v in timer.totals.items()}})
                    lane.logger.log(_fill_columns(row, usage, lane.logger.header))
                    lane.meta["wall_time"], lane.meta["times"] = wall, dict(timer.totals)
                    lane.meta["epochs_done"] = lane.meta.get("epochs_done", 0) + 1
                bar.update(0, eval_return=float(np.mean(returns)))
                reached = cfg.stop_return is not None and min(returns) >= cfg.stop_return  # every seed
                if lanes[0].meta["epochs_done"] % cfg.checkpoint_every == 0 or step == end or reached:
                    timer("checkpoint", checkpoint, views)
                if reached:
                    print(f"mbrlax: eval_return {min(returns):.1f} >= stop_return {cfg.stop_return}: stopping")
                    break
            if stop.requested and step < end:  # SIGTERM/SIGINT: the end of an env step is a safe point
                for lane in lanes:
                    lane.meta["wall_time"], lane.meta["times"] = time.perf_counter() - wall0, dict(timer.totals)
                checkpoint(seeds.split(state))
                where = lanes[0].run_dir if seeds.n == 1 else lanes[0].run_dir.parent
                stop.raise_stopped(where, f"env step {step} of {cfg.total_steps}")
    return state


def _fill_columns(row: dict, usage: ModelUsage, header: list[str] | None = None) -> dict:
    """Fixed CSV columns from the first row on (NaN where a value is not yet known). A resumed run
    keeps its file's header (runs from before a column was added continue without it)."""
    cols = ["env_steps", "eval_return", "eval_return_std", "train/episode_return",
            "sac/q_loss", "sac/pi_loss", "sac/alpha", "sac/entropy", "sac/q_mean"]
    if usage.uses_model:
        cols += ["model/train_loss", "model/holdout_mse", "model/epochs", "model/train_size",
                 *DIAGNOSTIC_COLUMNS, "rollout/horizon", "rollout/transitions", "rollout/model_transitions",
                 "rollout/model_buffer_size"]
    cols += [*usage.metric_columns, "agent/updates", "time/wall"] + [f"time/{k}" for k in PHASES]
    return {c: row.get(c, float("nan")) for c in (header or cols)}
