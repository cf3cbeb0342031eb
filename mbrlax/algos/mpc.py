"""DAM: model-predictive control with discriminator-corrected value estimates
(shared/papers/dam.txt, Algorithm 3 MBRL with RSPLANNER / CEM).

    T <- initial random episodes;  q <- TRAINMODEL(T);  D <- TRAINDISCRIMINATOR(q, T)
    for round j = 1..J:
        tau <- ROLLOUT(planner)              # plan every step with ESTIMATEVALUE (Alg. 1)
        T <- T u {tau}
        q <- TRAINMODEL(T)                   # MLE, or return-weighted (Eq. 10, objective="minvar")
        D <- TRAINDISCRIMINATOR(q, T)        # real s' vs s'~q(.|s,a) for real (s,a)

"Initial random episodes" are dam.init_episodes (config.DAM_PROTOCOLS: 1 under the
paper protocol, standing in for Algorithm 3's first rollout, planned before any model
exists; then dam.episodes_per_round = 1 planner episode per round). As in Algorithm 2,
model and discriminator are re-initialized before every training; the discriminator
sees a fresh model sample per real row in every update and stops early on held-out
rows (models/discriminator.py). Data lives in fixed-capacity arrays (allocated once
for the whole run), so nothing is re-compiled as it grows; the whole state is one
pytree, saved after every round.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbrlax import envs
from mbrlax.algos.dyna import NonFiniteError
from mbrlax.config import TrainConfig
from mbrlax.models.discriminator import disc_init, disc_logits, train_discriminator
from mbrlax.models.dynamics import make_dynamics, make_trainer
from mbrlax.models.ensemble import ModelState, model_inputs, model_targets
from mbrlax.models.minvar import minvar_weights
from mbrlax.planners import ActionSpace, make_logit_probe, make_planner, make_value_estimator
from mbrlax.run.checkpoint import save_checkpoint
from mbrlax.run.metrics import MetricsLogger
from mbrlax.run.progress import ProgressBar
from mbrlax.run.stop import StopSignals


@struct.dataclass
class DAMState:
    model: ModelState
    disc: object  # discriminator state (models/discriminator.py)
    obs: jax.Array  # [cap, obs_dim] real transitions (first `size` rows valid)
    action: jax.Array  # [cap] int32
    reward: jax.Array  # [cap]
    next_obs: jax.Array  # [cap, obs_dim]
    traj_id: jax.Array  # [cap] int32: the episode each transition belongs to
    traj_return: jax.Array  # [max episodes] undiscounted return of each episode
    size: jax.Array  # int32 rows filled
    episodes: jax.Array  # int32 episodes stored


def capacity(cfg: TrainConfig) -> tuple[int, int]:
    """(transitions, episodes) the run will collect in all."""
    d = cfg.dam
    init_episodes, episodes_per_round = d.episode_counts()
    episodes = init_episodes + d.rounds * episodes_per_round
    return episodes * envs.episode_steps(cfg.env), episodes


def env_info(cfg: TrainConfig) -> tuple[int, ActionSpace]:
    env = envs.make(cfg.env)
    obs_dim, space = env.observation_space.shape[0], ActionSpace.from_gym(env.action_space)
    env.close()
    return obs_dim, space


@functools.cache
def next_obs_sampler(sample_step):
    """s~' ~ q(.|s, a) as `fn(model, obs, feats, key) -> next_obs`: one function object per model kind, so
    the discriminator's training loop (a static argument) compiles once per kind and shape, not per run."""
    return lambda model, obs, feats, key: sample_step(model, obs, feats, key)[1]


@dataclass(frozen=True)
class Jitted:
    """The compiled pieces of a DAM configuration, shared by every run of it in a process (seeds, resumes)."""

    dynamics: object
    trainer: object
    plan: object  # (params=(model, disc), obs, key) -> (action, info)
    plan_logits: object  # (params, obs [S, obs], actions [S, N, H], keys [S]) -> logits [S, H, N*P]
    sample_next: object  # (model, obs, feats, key) -> next_obs
    fake_next_obs: object  # jitted sample_next


@functools.cache
def jitted_parts(kind: str, num_components: int, model_cfg, reward_fn, space: ActionSpace, horizon: int,
                 num_particles: int, corrected: bool, weight_mode: str, max_weight, planner: str,
                 num_sequences: int, cem_iterations: int, cem_elites: int) -> Jitted:
    dynamics = make_dynamics(kind, num_components=num_components)

    def step_fn(params, obs, feats, key):
        return dynamics.sample_step(params[0], obs, feats, key)[1]

    def logit_fn(params, obs, feats, next_obs):
        return disc_logits(params[1], obs, feats, next_obs)

    value = make_value_estimator(step_fn, reward_fn, space, horizon, num_particles,
                                 logit_fn=logit_fn if corrected else None, weight_mode=weight_mode,
                                 max_weight=max_weight)
    kw = {"num_iterations": cem_iterations, "num_elites": cem_elites} if planner == "cem" else {}
    probe = make_logit_probe(step_fn, logit_fn, space, horizon, num_particles)
    sample_next = next_obs_sampler(dynamics.sample_step)
    return Jitted(dynamics, make_trainer(dynamics, model_cfg),
                  make_planner(planner, value, space, horizon, num_sequences, **kw),
                  jax.jit(jax.vmap(probe, in_axes=(None, 0, 0, 0))), sample_next, jax.jit(sample_next))


class DAM:
    """The jitted pieces of one DAM configuration: model kind, trainer, discriminator, planner."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, d = cfg, cfg.dam
        self.obs_dim, self.space = env_info(cfg)
        self.disc_in = 2 * self.obs_dim + self.space.feature_dim
        parts = jitted_parts(d.model, d.num_components, cfg.model, envs.reward_fn(cfg.env), self.space, d.horizon,
                             d.num_particles, d.correction == "discriminator", d.weight_mode, d.max_weight,
                             d.planner, d.num_sequences, d.cem_iterations, d.cem_elites)
        self.dynamics, self.trainer, self.plan = parts.dynamics, parts.trainer, parts.plan
        self.plan_logits, self.sample_next, self.fake_next_obs = parts.plan_logits, parts.sample_next, parts.fake_next_obs
        self.features = jax.jit(self.space.features)

    def init_state(self) -> DAMState:
        cap, episodes = capacity(self.cfg)
        k_model, k_disc = jax.random.split(jax.random.key(self.cfg.seed))
        return DAMState(
            model=self.dynamics.init(k_model, self.obs_dim, self.space.feature_dim, self.cfg.model),
            disc=disc_init(k_disc, self.disc_in, hidden=self.cfg.dam.disc_hidden),
            obs=jnp.zeros((cap, self.obs_dim)), action=jnp.zeros(cap, jnp.int32), reward=jnp.zeros(cap),
            next_obs=jnp.zeros((cap, self.obs_dim)), traj_id=jnp.zeros(cap, jnp.int32),
            traj_return=jnp.zeros(episodes), size=jnp.int32(0), episodes=jnp.int32(0),
        )

    # ---- data -------------------------------------------------------------------------------
    def add_episode(self, state: DAMState, steps: list[tuple]) -> DAMState:
        """Append one episode [(obs, action, reward, next_obs), ...] and its return."""
        n, e = int(state.size), int(state.episodes)
        obs, act, rew, nxt = (np.asarray(v) for v in zip(*steps))
        rows = slice(n, n + len(steps))
        return state.replace(
            obs=state.obs.at[rows].set(obs), action=state.action.at[rows].set(act),
            reward=state.reward.at[rows].set(rew), next_obs=state.next_obs.at[rows].set(nxt),
            traj_id=state.traj_id.at[rows].set(e), traj_return=state.traj_return.at[e].set(rew.sum()),
            size=jnp.int32(n + len(steps)), episodes=jnp.int32(e + 1),
        )

    # ---- TRAINMODEL and TRAINDISCRIMINATOR (Algorithm 2) ----------------------------------------
    def train(self, state: DAMState, round_: int) -> tuple[DAMState, dict]:
        cfg, d = self.cfg, self.cfg.dam
        n = int(state.size)
        key = jax.random.fold_in(jax.random.key(cfg.seed), round_)
        k_model, k_disc, k_fake, k_err = jax.random.split(key, 4)
        rng = np.random.default_rng([cfg.seed, round_, 7])
        feats = self.features(state.action)
        x = model_inputs(state.obs, feats)
        y = model_targets(state.obs, state.reward, state.next_obs)
        weights = None
        if d.objective == "minvar":  # Eq. 10: each transition's log-likelihood weighted by its trajectory's return
            w = np.asarray(minvar_weights(state.traj_return[: int(state.episodes)], state.traj_id[:n]))
            weights = jnp.zeros(x.shape[0]).at[:n].set(w)
        model = self.dynamics.init(k_model, self.obs_dim, self.space.feature_dim, cfg.model)
        model, info = self.trainer.train(model, x, y, n, rng, weights=weights)
        info["model/sample_mae"] = model_sample_error(self.fake_next_obs(model, state.obs, feats, k_err),
                                                      state.next_obs, n)
        disc = state.disc
        if d.correction == "discriminator":
            disc = disc_init(k_disc, self.disc_in, hidden=d.disc_hidden)
            disc, disc_info = self.train_disc(disc, model, state, feats, n, rng, k_fake)
            info.update({f"disc/{k}": v for k, v in disc_info.items()})
            info.update(self.planning_logit_stats(model, disc, state, n, rng))
        for name, value in list(info.items()):
            if isinstance(value, float) and not np.isfinite(value):
                raise NonFiniteError(f"{name} is {value} after training at round {round_} (env step {n})")
        return state.replace(model=model, disc=disc), info

    def train_disc(self, disc, model, state: DAMState, feats, n: int, rng, key) -> tuple[object, dict]:
        """TRAINDISCRIMINATOR (Algorithm 2): a fresh model sample per real row in every update
        (dam.disc_samples = 0), or dam.disc_samples samples per row drawn once; held-out early stopping."""
        d = self.cfg.dam
        if d.disc_samples:
            keys = jax.random.split(key, d.disc_samples)
            fake = jnp.stack([self.fake_next_obs(model, state.obs, feats, k) for k in keys])
            source = {"next_obs_fake": fake}
        else:
            source = {"next_obs_fake": None, "sampler": self.sample_next, "sampler_params": model}
        return train_discriminator(
            disc, state.obs, feats, state.next_obs, rng=rng, n=n, steps=d.disc_steps, batch_size=d.disc_batch_size,
            weight_decay=d.disc_weight_decay, holdout=d.disc_holdout, patience=d.disc_patience,
            check_every=d.disc_check_every, **source)

    def planning_logit_stats(self, model, disc, state: DAMState, n: int, rng, starts: int = 8,
                             sequences: int = 64) -> dict:
        """Mean and spread of the discriminator logits on planning-time transitions: model rollouts
        of uniformly random action sequences (as RSPLANNER draws them) from `starts` real states."""
        rows = rng.integers(0, n, starts)
        key = jax.random.key(int(rng.integers(2**31)))
        k_act, k_roll = jax.random.split(key)
        actions = self.space.uniform(k_act, (starts, sequences, self.cfg.dam.horizon))
        logits = np.asarray(self.plan_logits((model, disc), state.obs[rows], actions,
                                             jax.random.split(k_roll, starts)))
        return {"disc/plan_logit_mean": float(logits.mean()), "disc/plan_logit_std": float(logits.std())}

    # ---- acting -------------------------------------------------------------------------------
    def act(self, state: DAMState, obs, key) -> int | np.ndarray:
        action, info = self.plan((state.model, state.disc), jnp.asarray(obs, jnp.float32), key)
        if np.isnan(info["value"]):  # every candidate's value is NaN: the argmax would be arbitrary
            raise NonFiniteError("planner: every candidate action sequence has a NaN estimated value "
                                 "(the model's rollouts diverge); the last round's checkpoint is kept")
        return np.asarray(action)

    def episode(self, env, policy) -> list[tuple]:
        """One episode with `policy(obs) -> action`: [(obs, action, reward, next_obs), ...]."""
        obs, _ = env.reset()
        steps, done = [], False
        while not done:
            action = policy(obs)
            next_obs, reward, term, trunc, _ = env.step(action)
            steps.append((np.float32(obs), action, np.float32(reward), np.float32(next_obs)))
            obs, done = next_obs, term or trunc
        return steps

    def planner_policy(self, state: DAMState, key):
        keys = iter(jax.random.split(key, 10_000))
        return lambda obs: self.act(state, obs, next(keys))


def model_sample_error(sampled, real, n: int) -> float:
    """Mean absolute error per coordinate of one model sample s~' ~ q(.|s, a) against the real s' over the
    first n rows (not 0 for a perfect model where the env is stochastic, e.g. IcyRoad's swerve)."""
    return float(jnp.mean(jnp.abs(sampled[:n] - real[:n])))


def evaluate(dam: DAM, state: DAMState, env, episodes: int, key) -> tuple[float, float]:
    policy = dam.planner_policy(state, key)
    returns = [sum(float(s[2]) for s in dam.episode(env, policy)) for _ in range(episodes)]
    return float(np.mean(returns)), float(np.std(returns))


COLUMNS = ["round", "env_steps", "eval_return", "eval_return_std", "train/episode_return",
           "model/train_loss", "model/holdout_mse", "model/epochs", "model/train_size",
           "model/sample_mae", "disc/loss", "disc/accuracy", "disc/holdout_accuracy", "disc/holdout_loss",
           "disc/steps", "disc/real_logit_mean", "disc/real_logit_std", "disc/model_logit_mean",
           "disc/model_logit_std", "disc/plan_logit_mean", "disc/plan_logit_std", "disc/fake_weight_mean",
           "agent/updates", "time/wall", "time/train", "time/act", "time/evaluate"]


def run_rounds(dam: DAM, state: DAMState, meta: dict, run_dir: Path, logger: MetricsLogger) -> tuple[DAMState, dict]:
    """Algorithm 3 from meta["round"] (0 = nothing done yet) to cfg.dam.rounds; checkpoint per round. On SIGTERM
    or SIGINT, stop after the current round's checkpoint (RunStopped, mbrlax/run/stop.py)."""
    cfg, d = dam.cfg, dam.cfg.dam
    wall0 = time.perf_counter() - meta.get("wall_time", 0.0)
    totals = meta.setdefault("times", {"train": 0.0, "act": 0.0, "evaluate": 0.0})
    with ProgressBar(d.rounds + 1, initial=meta["round"], description="dam", enabled=cfg.progress,
                     unit="rounds") as bar, StopSignals() as stop:
        while meta["round"] <= d.rounds:
            r = meta["round"]
            key = jax.random.fold_in(jax.random.key(cfg.seed + 1), r)
            k_act, k_eval = jax.random.split(key)
            env = envs.make(cfg.env, seed=cfg.seed * 1000 + r)
            t = time.perf_counter()
            if r == 0:  # initial data: uniform-random actions
                policy = lambda obs: env.action_space.sample()
                episodes = [dam.episode(env, policy) for _ in range(d.episode_counts()[0])]
            else:
                policy = dam.planner_policy(state, k_act)
                episodes = [dam.episode(env, policy) for _ in range(d.episode_counts()[1])]
            for steps in episodes:
                state = dam.add_episode(state, steps)
            totals["act"] += time.perf_counter() - t

            t = time.perf_counter()
            state, info = dam.train(state, r)
            totals["train"] += time.perf_counter() - t

            t = time.perf_counter()
            eval_env = envs.make(cfg.env, seed=10_000 + cfg.seed * 1000 + r)
            ret, ret_std = float("nan"), float("nan")
            if r % d.eval_every == 0 or r == d.rounds:
                ret, ret_std = evaluate(dam, state, eval_env, cfg.eval_episodes, k_eval)
            totals["evaluate"] += time.perf_counter() - t

            meta["env_steps"] = int(state.size)
            meta["wall_time"] = time.perf_counter() - wall0
            row = {"round": r, "env_steps": meta["env_steps"], "eval_return": ret, "eval_return_std": ret_std,
                   "train/episode_return": float(np.mean([sum(float(s[2]) for s in ep) for ep in episodes])),
                   **info, "agent/updates": 0, "time/wall": meta["wall_time"], **{f"time/{k}": v for k, v in totals.items()}}
            logger.log({c: row.get(c, float("nan")) for c in (logger.header or COLUMNS)})  # planning: no agent updates
            meta["round"] = r + 1
            save_checkpoint(run_dir, state, meta)
            bar.update(1, eval_return=ret)
            if stop.requested and meta["round"] <= d.rounds:  # between rounds: a safe point
                stop.raise_stopped(run_dir, f"round {r} of {d.rounds}")
    return state, meta
