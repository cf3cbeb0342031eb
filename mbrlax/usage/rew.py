"""ReW-PE-SAC: learning to reweight imaginary transitions (shared/papers/rew.txt, Algorithm 1; SPECS.md section 3).

Per env step, after MBPO's model round (every model.train_freq steps: train the bootstrapped ensemble, then
generate the training sets):
    meta step (every rew.meta_every steps; rew.txt:455-621):
        Ne real start states and their recorded real actions a_{t:t+H-1}, set-rolled out H steps
        one SGD step of Q and policy on the weighted sets                      theta' = theta - mu grad    (Eq. 1)
        the losses on Nv real transitions at theta'                            J_meta                      (Eq. 4)
        the gradient of J_meta through that step, Adam on theta_w              (Eq. 5)
    K = sac.updates_per_step SAC updates on minibatches of imagined rows weighted by w (Eq. 6) and real rows
    (weight 1); the temperature is tuned on the unweighted batch (rew.txt:696-697)
    optionally rew.real_updates more updates on real-only minibatches (Algorithm 1, last line)

Set rollouts (rew.txt:318-345): at each depth every member b of the ensemble (rew.elites_only: the elites) gives
N(mu_b, Sigma_b)(s, a) and M = rew.samples_per_member samples are drawn from it; the M x B samples with their
rewards form the transition set of (s, a), and ONE of them, uniformly, is the next input. A set's features are
x = [s, a, std of the M x B rewards, std of the M x B next states per dimension] (2 obs + act + 1 numbers),
normalized per dimension. The weight network (Fig. 1 right) is Linear -> GRU over depth -> Linear -> sigmoid, so
the weight of depth k sees the features of depths 0..k of its own rollout; the output layer's bias starts at 3.0
and its weights at 0 (every first weight is sigmoid(3) = 0.953, rew.txt:853-855).

The meta-gradient (Eq. 5) is exact for one SGD step because theta' is linear in the weights:
    dJ_meta/dtheta_w = -mu sum_n (g_n . v) dw_n/dtheta_w,   g_n = grad of set n's loss at theta, v = grad J_meta(theta').
`meta_gradient` computes v with one backward pass, all g_n . v with ONE forward-mode product (jvp of the vector of
set losses along v) and the sum with one VJP of the weight network; `meta_gradient_autodiff` (jax.grad through the
inner step) is its test oracle. Eq. 5 has no cross terms, so Q inside the policy loss (Eq. 3) is the pre-update
critic in both the inner step and J_meta, and the Q targets use the target critic and the pre-update policy.

Choices where the paper is silent (its appendix with the hyperparameters is not in our copy; SPECS 3.2-3.3):
- H = 5, M = 1, B = every member (7), Ne = 52 (Ne x H = 260 sets), Nv = 256, mu = 3e-4 (plain SGD), mu_w = 3e-4
  (Adam, its eps scaled like the gradient: `meta_adam_eps`), GRU width 64, one meta step per env step (SPECS C1:
  t of Algorithm 1 is an env step).
- Losses are means over sets and over a set's samples, not sums (with sums the inner step would scale with
  Ne x H x M x B). A set's Q loss is the mean over its samples of 0.5 sum_j (Q_j(s, a) - y_mb)^2, whose gradient
  is that of one transition with the mean target.
- Training sets are generated like MBPO's rollouts: rollout.batch_size starts every model.train_freq steps
  (400 per env step), kept in the model buffer for rollout.retain_epochs epochs. Each stored row is (s, a, and the
  set's chosen sample r, s'): the single-sample target is an unbiased estimate of the set's mean target. Beside
  each row the strategy keeps its raw features and the GRU carry of the depths before it (computed when the row
  was generated); a minibatch's weights are one GRU step from that carry with the CURRENT theta_w and normalizer
  (regenerating every update would cost ~70 ms per env step on a CPU, SPECS 3.6).
- Exploration policy pi_e (temperature lambda_e alpha, lambda_e = 10): pi ~ exp(Q / alpha), so pi_e ~ pi^(1/lambda_e),
  for the pre-tanh Gaussian N(mu, lambda_e sigma^2): std x sqrt(10) (SPECS 3.2; approximate through the tanh).
  The meta step replays real actions (rew.txt:455-467); a start whose H rows cross an episode boundary (or whose
  model rollout terminates) contributes only the sets before it.
- The updates on real transitions are real rows mixed into every minibatch (rollout.real_ratio 0.05, weight 1);
  rew.real_updates N > 0 adds N updates on real-only minibatches after the K updates instead.
- The feature normalizer is a running mean / variance (stop-gradient) over the generated training sets, updated
  once per generation with rate 1 / (generations the model buffer holds); a zero std (the reward spread of the
  MBBL rewards, which depend on s and a only: taken about the first sample, it is exactly 0) counts as 1.
- A known reward (EnvSpec.reward, the MBBL envs) gives each sample's reward r(s, a, s'_mb); otherwise the model's
  reward head is sampled with the next state.
"""

from __future__ import annotations

import collections
from dataclasses import replace
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrlax.agents.sac import _gaussian, make_sac_update, policy_loss_terms, q_values, soft_q_target
from mbrlax.buffers import Buffer, gather, ring_slots, sample_indices
from mbrlax.config import ReWConfig, TrainConfig
from mbrlax.models.ensemble import ModelState, all_members
from mbrlax.nets import mlp_init
from mbrlax.types import Batch, Transition
from mbrlax.usage.base import ModelUsage, minibatch, model_buffer_rows

__all__ = ["ReW", "ReWConfig", "SetRollout", "explore_action", "meta_adam_eps", "meta_gradient",
           "meta_gradient_autodiff", "real_sequences", "sequence_weights", "set_losses", "set_rollout",
           "weight_net_init", "weight_step"]

TRACE_COUNTS: collections.Counter = collections.Counter()  # this module's own jitted functions traced, by name
METRIC_ROWS = 4096  # model-buffer rows whose current weights make an epoch's weight columns
STD_FLOOR = 1e-6  # a feature whose std is below this is not rescaled


# --------------------------------------------------------------------------- weight network (Fig. 1, right)


def weight_net_init(key, in_dim: int, hidden: int, last_bias: float) -> dict:
    """Linear(in -> hidden) -> GRU(hidden) -> Linear(hidden -> 1); the output layer has zero weights and bias
    `last_bias`, so every initial weight is sigmoid(last_bias)."""
    k_embed, k_x, k_h = jax.random.split(key, 3)
    lim = 1.0 / jnp.sqrt(hidden)  # torch's GRU init
    uniform = lambda k, shape: jax.random.uniform(k, shape, jnp.float32, -lim, lim)
    return {
        "embed": mlp_init(k_embed, [in_dim, hidden])[0],
        "gru": {"wx": uniform(k_x, (hidden, 3 * hidden)), "wh": uniform(k_h, (hidden, 3 * hidden)),
                "bx": jnp.zeros(3 * hidden, jnp.float32), "bh": jnp.zeros(3 * hidden, jnp.float32)},
        "head": {"w": jnp.zeros((hidden, 1), jnp.float32), "b": jnp.full((1,), last_bias, jnp.float32)},
    }


def gru_cell(p: dict, h, x):
    """Cho et al. 2014: r, z = sigmoid(W x + U h + b), n = tanh(W_n x + b_n + r (U_n h + b_hn)), h' = (1 - z) n + z h."""
    xr, xz, xn = jnp.split(x @ p["wx"] + p["bx"], 3, axis=-1)
    hr, hz, hn = jnp.split(h @ p["wh"] + p["bh"], 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


def weight_step(params: dict, carry, x):
    """One depth: the GRU state after the normalized features x [..., D] given the state before (`carry`), and
    the weight of x's set in (0, 1)."""
    h = gru_cell(params["gru"], carry, x @ params["embed"]["w"] + params["embed"]["b"])
    return h, jax.nn.sigmoid((h @ params["head"]["w"] + params["head"]["b"])[..., 0])


def sequence_weights(params: dict, x):
    """Normalized features [H, N, D] along depth -> (weights [H, N], GRU state before each depth [H, N, hidden])."""

    def step(h, x_k):
        h_next, w = weight_step(params, h, x_k)
        return h_next, (w, h)

    h0 = jnp.zeros(x.shape[1:-1] + (params["gru"]["wh"].shape[0],), x.dtype)
    _, (w, carries) = jax.lax.scan(step, h0, x)
    return w, carries


def normalize(norm: dict, x):
    """Per-dimension standardization with the running statistics (no gradient flows into them)."""
    std = jnp.sqrt(norm["var"])
    return (x - norm["mean"]) / jnp.where(std < STD_FLOOR, 1.0, std)


def updated_norm(norm: dict, x, mask, rate: float) -> dict:
    """The running mean and variance after one generation of features x [..., D] (rows where `mask`)."""
    m = mask[..., None]
    n = jnp.maximum(jnp.sum(m), 1.0)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.sum(jnp.where(m, x, 0.0), axis=axes) / n  # where, not x * mask: an invalid row may be inf
    var = jnp.sum(jnp.where(m, (x - mean) ** 2, 0.0), axis=axes) / n
    a = jnp.where(norm["count"] == 0, 1.0, rate)  # the first generation sets the statistics
    return {"mean": (1 - a) * norm["mean"] + a * mean, "var": (1 - a) * norm["var"] + a * var,
            "count": norm["count"] + 1}


# --------------------------------------------------------------------------- set rollouts (rew.txt:318-345)


@struct.dataclass
class SetRollout:
    """Transition sets along depth; leaves [H, N, ...]."""

    transitions: Transition  # each set's (s, a) with its chosen sample (r, s', done): the next input
    spread: jax.Array  # [H, N, 1 + obs]: std over the set's samples of the reward and of each next-state dim
    valid: jax.Array  # [H, N] bool: depth < horizon and the rollout has not terminated before
    corrupted: jax.Array  # [H, N] bool: sets given the benchmark's extra noise (rew.corrupt_fraction)
    set_reward: jax.Array | None = None  # [H, N, S] every sample's reward (full_sets only)
    set_next_obs: jax.Array | None = None  # [H, N, S, obs]
    set_done: jax.Array | None = None  # [H, N, S] float


def sample_std(x):
    """Std over a set's samples (axis 1), taken about the first sample: the same value, but exactly 0 where
    every sample is equal (float32's mean of equal rewards is off by an ulp, whose noise the normalizer would
    rescale to a unit-variance feature)."""
    return jnp.std(x - x[:, :1], axis=1)


def set_features(sets: SetRollout):
    """x = [s, a, std(r), std(s'_d) for each d]: [H, N, 2 obs + act + 1] (rew.txt:361-386)."""
    return jnp.concatenate([sets.transitions.obs, sets.transitions.action, sets.spread], axis=-1)


def explore_action(actor, obs, key, scale: float):
    """pi_e, the policy at temperature scale x alpha: pre-tanh N(mu, scale sigma^2) (SPECS 3.2)."""
    mean, log_std = _gaussian(actor, obs)
    return jnp.tanh(mean + jnp.sqrt(scale) * jnp.exp(log_std) * jax.random.normal(key, mean.shape))


def set_rollout(model: ModelState, start_obs, actions, key, horizon, max_horizon: int, termination_fn,
                reward_fn: Callable | None = None, *, samples: int = 1, elites_only: bool = False,
                full_sets: bool = False, corrupt_fraction: float = 0.0, corrupt_scale: float = 3.0) -> SetRollout:
    """Set rollouts from `start_obs` [N, obs]. `actions`: fixed actions [max_horizon, N, act] (the meta step's real
    sequences) or a function (obs, key) -> actions (the exploration policy). With `full_sets` every set's samples
    come back too. Steps at depth >= `horizon` are computed but not valid."""
    n = start_obs.shape[0]
    policy = actions if callable(actions) else None

    def step(carry, xs):
        obs, alive = carry
        depth, k, fixed_action = xs
        k_act, k_noise, k_pick, k_bad, k_bad_noise = jax.random.split(k, 5)
        action = fixed_action if policy is None else policy(obs, k_act)
        mean, logvar = all_members(model, obs, action)  # [members, N, 1 + obs]
        if elites_only:
            mean, logvar = mean[model.elites], logvar[model.elites]
        std = jnp.exp(0.5 * logvar)
        out = mean + std * jax.random.normal(k_noise, (samples,) + mean.shape)  # [M, B, N, 1 + obs]
        bad = jnp.zeros(n, bool)
        if corrupt_fraction > 0:
            bad = jax.random.uniform(k_bad, (n,)) < corrupt_fraction
            out = out + jnp.where(bad[:, None], corrupt_scale, 0.0) * std * jax.random.normal(k_bad_noise, out.shape)
        out = jnp.moveaxis(out.reshape((-1,) + out.shape[2:]), 0, 1)  # [N, S = M B, 1 + obs]
        s = out.shape[1]
        next_obs = obs[:, None] + out[..., 1:]
        each = lambda x: jnp.repeat(x, s, axis=0)  # per sample, in next_obs' row order
        flat_next = next_obs.reshape(n * s, -1)
        reward = out[..., 0] if reward_fn is None else reward_fn(each(obs), each(action), flat_next).reshape(n, s)
        done = termination_fn(each(obs), each(action), flat_next).reshape(n, s)
        spread = jnp.concatenate([sample_std(reward)[:, None], sample_std(next_obs)], axis=-1)
        rows, pick = jnp.arange(n), jax.random.randint(k_pick, (n,), 0, s)  # the next input: one sample, uniformly
        chosen = Transition(obs, action, reward[rows, pick], next_obs[rows, pick], done[rows, pick].astype(jnp.float32))
        valid = alive & (depth < horizon)
        full = (reward, next_obs, done.astype(jnp.float32)) if full_sets else None
        return (chosen.next_obs, valid & ~done[rows, pick]), (chosen, spread, valid, bad, full)

    xs = (jnp.arange(max_horizon), jax.random.split(key, max_horizon), None if policy is not None else actions)
    _, (trs, spread, valid, bad, full) = jax.lax.scan(step, (start_obs, jnp.ones(n, bool)), xs)
    return SetRollout(trs, spread, valid, bad, *(full if full_sets else (None, None, None)))


def real_sequences(real: Buffer, key, n: int, horizon: int):
    """n runs of `horizon` consecutive real rows (the real buffer never wraps: row = env step): (start rows [n],
    their actions [horizon, n, act], linked [horizon, n]: depth k is still in the start's episode)."""
    start = jax.random.randint(key, (n,), 0, jnp.maximum(real.size - horizon + 1, 1))
    rows = jnp.minimum(start[None] + jnp.arange(horizon)[:, None], real.capacity - 1)  # [H, n]
    d = real.data
    step_ok = (d.done[rows[:-1]] < 0.5) & jnp.all(d.next_obs[rows[:-1]] == d.obs[rows[1:]], axis=-1)
    step_ok &= rows[1:] < real.size
    linked = jnp.cumprod(jnp.concatenate([jnp.ones((1, n), jnp.int32), step_ok.astype(jnp.int32)]), axis=0) > 0
    return start, d.action[rows], linked


# --------------------------------------------------------------------------- losses and the meta-gradient


def set_losses(theta: dict, critic_pre, obs, action, targets, alpha, key):
    """Per set: J_Q(tr; theta_q) + J_pi(tr; theta_pi) (Eqs. 2-3, means over the set's samples): [N].

    `targets` [N, S]: the soft targets of the set's samples (constants); the policy loss evaluates Q with the
    pre-update critic `critic_pre` (Eq. 5 has no cross terms). J_pi depends on s only, so it is one term per set."""
    q = q_values(theta["critic"], obs, action)  # [2, N]
    j_q = 0.5 * jnp.sum(jnp.mean((q[..., None] - targets[None]) ** 2, axis=-1), axis=0)
    j_pi, _ = policy_loss_terms(theta["actor"], critic_pre, obs, alpha, key)
    return j_q + j_pi


def inner_step(theta, weights, losses_fn, lr: float):
    """Eq. 1: theta' = theta - mu d/dtheta sum_n w_n l_n(theta) (the weights already hold the mean's 1/N)."""
    grads = jax.grad(lambda t: jnp.sum(weights * losses_fn(t)))(theta)
    return jax.tree.map(lambda p, g: p - lr * g, theta, grads)


def meta_gradient(w_params, weight_fn, theta, losses_fn, objective_fn, lr: float):
    """Eq. 5: (dJ/dtheta_w = -mu sum_n (g_n . v) dw_n/dtheta_w, J(theta')), with w = weight_fn(theta_w) [N],
    l_n = losses_fn(theta)[n], g_n = grad l_n(theta), v = grad objective_fn(theta'), theta' = Eq. 1's step."""
    w, w_vjp = jax.vjp(weight_fn, w_params)
    j, v = jax.value_and_grad(objective_fn)(inner_step(theta, w, losses_fn, lr))
    _, g_dot_v = jax.jvp(losses_fn, (theta,), (v,))  # every g_n . v in one forward-mode pass
    (grad,) = w_vjp(-lr * g_dot_v)
    return grad, j


def meta_gradient_autodiff(w_params, weight_fn, theta, losses_fn, objective_fn, lr: float):
    """The same by reverse-over-reverse differentiation through the inner step (the oracle of `meta_gradient`)."""
    j, grad = jax.value_and_grad(lambda p: objective_fn(inner_step(theta, weight_fn(p), losses_fn, lr)))(w_params)
    return grad, j


def meta_adam_eps(r: ReWConfig) -> float:
    """Adam's eps for the weight network. Eq. 5's gradient is mu times a mean over the H x Ne sets (the paper
    sums), so it is about mu / (H Ne) ~ 1e-6 times a per-set gradient: at Hopper's sizes its GRU entries
    measure 1e-9-1e-8 (tests/test_rew.py), where optax's default eps of 1e-8 cut their first Adam steps to a
    median 27%. Scaling eps by the same factor keeps it the negligible floor Adam intends, whatever mu and Ne."""
    return 1e-8 * r.inner_lr / (r.horizon * r.meta_starts)


def real_q_loss(agent, real: Buffer, n: int, key, gamma: float):
    """The critic's loss on the n newest real transitions, 0.5 sum_j mean (Q_j(s, a) - y)^2 (Fig. 3's measure)."""
    b = gather(real, (real.ptr - 1 - jnp.arange(n)) % real.capacity)
    alpha = jnp.exp(agent.params["log_alpha"])
    y = soft_q_target(agent.target_critic, agent.params["actor"], b.reward, b.next_obs, b.done, alpha, key, gamma)
    return 0.5 * jnp.sum(jnp.mean((q_values(agent.params["critic"], b.obs, b.action) - y) ** 2, axis=1))


# --------------------------------------------------------------------------- the strategy


class ReW(ModelUsage):
    """MBPO's model round with ReW's set rollouts, meta-learned weights (rew.weights=rew) or unit weights (PE-SAC)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        from mbrlax import envs  # late: envs imports gymnasium
        from mbrlax.envs.termination import never

        self.r: ReWConfig = cfg.rew
        self.learned = self.r.weights == "rew"
        spec = envs.get_spec(cfg.env)
        self.termination_fn, self.reward_fn = spec.termination or never, spec.reward
        self.w_opt = optax.adam(self.r.weight_lr, eps=meta_adam_eps(self.r))
        held = cfg.rollout.retain_epochs * max(1, cfg.steps_per_epoch // cfg.model.train_freq)
        self.norm_rate = 1.0 / held  # the normalizer follows the generations the model buffer holds
        self.metric_columns = ("rew/weight_mean", "rew/weight_min",
                               *(f"rew/weight_depth_{k}" for k in range(self.r.horizon)),
                               "rew/meta_loss", "rew/real_q_loss")
        self._epoch_metrics_jit = jax.jit(self.epoch_metrics)

    # ---- state: the weight network, its optimizer and normalizer; per model-buffer row its raw features, the
    # GRU carry before it and its depth (rows aligned with the model buffer through `ptr`)
    def init(self, key, obs_dim, act_dim):
        state = {"meta_loss": jnp.float32(jnp.nan)}
        if not self.learned:
            return state
        d, c, h = 2 * obs_dim + act_dim + 1, self.imagined_capacity(), self.r.hidden
        w = weight_net_init(key, d, h, self.r.last_bias)
        return {**state, "w": w, "w_opt": self.w_opt.init(w),
                "norm": {"mean": jnp.zeros(d, jnp.float32), "var": jnp.ones(d, jnp.float32), "count": jnp.int32(0)},
                "feat": jnp.zeros((c, d), jnp.float32), "carry": jnp.zeros((c, h), jnp.float32),
                "depth": jnp.zeros(c, jnp.int32), "ptr": jnp.int32(0), "size": jnp.int32(0)}

    # ---- rollouts: fixed horizon H, set rollouts of the exploration policy
    def rollout_horizon(self, epoch):
        return self.r.horizon

    def max_horizon(self):
        return self.r.horizon

    def imagined_capacity(self):
        return model_buffer_rows(self.cfg, self.r.horizon)

    def set_rollout(self, model, start_obs, actions, key, horizon=None, full_sets=False) -> SetRollout:
        r = self.r
        return set_rollout(model, start_obs, actions, key, r.horizon if horizon is None else horizon, r.horizon,
                           self.termination_fn, self.reward_fn, samples=r.samples_per_member,
                           elites_only=r.elites_only, full_sets=full_sets, corrupt_fraction=r.corrupt_fraction,
                           corrupt_scale=r.corrupt_scale)

    def rollout(self, model, actor, start_obs, key, horizon, max_horizon, termination_fn):
        explore = lambda obs, k: explore_action(actor, obs, k, self.r.explore_scale)
        sets = self.set_rollout(model, start_obs, explore, key, horizon)
        return sets.transitions, sets.valid, sets.spread  # the spread travels as the "disagreement"

    def after_rollout(self, usage, start_idx, extras, transitions, valid, spread, actor, key):
        """Keep each new model row's features, GRU carry and depth at the row `buffer_add` wrote it to."""
        if not self.learned:
            return usage
        x = jnp.concatenate([transitions.obs, transitions.action, spread], axis=-1)  # [H, N, D]
        norm = updated_norm(usage["norm"], x, valid, self.norm_rate)
        _, carries = sequence_weights(usage["w"], normalize(norm, x))
        cap = usage["feat"].shape[0]
        dest, count = ring_slots(usage["ptr"], valid.reshape(-1), cap)
        depth = jnp.broadcast_to(jnp.arange(x.shape[0], dtype=jnp.int32)[:, None], valid.shape)
        put = lambda col, v: col.at[dest].set(v.reshape((-1,) + col.shape[1:]), mode="drop")
        return {**usage, "norm": norm, "feat": put(usage["feat"], x), "carry": put(usage["carry"], carries),
                "depth": put(usage["depth"], depth), "ptr": (usage["ptr"] + count) % cap,
                "size": jnp.minimum(usage["size"] + count, cap)}

    # ---- agent: the meta step, weighted minibatches, optional real-only updates
    def before_updates(self, usage, state, key):
        if not self.learned:
            return usage
        if self.r.meta_every == 1:
            return self.meta_step(usage, state, key)
        keys = ("w", "w_opt", "meta_loss")  # what a meta step changes (the model rows pass by the cond)
        changed = jax.lax.cond(state.real.size % self.r.meta_every == 0,
                               lambda: {k: v for k, v in self.meta_step(usage, state, key).items() if k in keys},
                               lambda: {k: usage[k] for k in keys})
        return {**usage, **changed}

    def meta_step(self, usage, state, key):
        """Eqs. 1-5 on Ne x H sets of real starts and actions and Nv real transitions; one Adam step on theta_w."""
        r, gamma = self.r, self.cfg.sac.gamma
        k_seq, k_roll, k_real, k_set_y, k_real_y, k_set_pi, k_real_pi = jax.random.split(key, 7)
        real, params = state.real, state.agent.params
        start, actions, linked = real_sequences(real, k_seq, r.meta_starts, r.horizon)
        sets = self.set_rollout(state.model, real.data.obs[start], actions, k_roll, full_sets=True)
        valid = sets.valid & linked  # [H, Ne]; an invalid set's inputs are zeroed, since 0 x inf would be nan
        x = jnp.where(valid[..., None], normalize(usage["norm"], set_features(sets)), 0.0)
        mask = valid.reshape(-1)
        per_set = mask / jnp.maximum(jnp.sum(mask), 1.0)  # a mean over the valid sets
        weight_fn = lambda p: sequence_weights(p, x)[0].reshape(-1) * per_set

        alpha = jnp.exp(params["log_alpha"])
        actor, critic, target = params["actor"], params["critic"], state.agent.target_critic
        n_samples, obs_dim = sets.set_next_obs.shape[-2:]
        set_y = soft_q_target(target, actor, sets.set_reward.reshape(-1), sets.set_next_obs.reshape(-1, obs_dim),
                              sets.set_done.reshape(-1), alpha, k_set_y, gamma).reshape(-1, n_samples)
        flat = lambda a: a.reshape((-1,) + a.shape[2:])
        keep = lambda a: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, 0.0)  # [H Ne, ...]
        obs, action, set_y = keep(flat(sets.transitions.obs)), keep(flat(sets.transitions.action)), keep(set_y)
        losses_fn = lambda th: set_losses(th, critic, obs, action, set_y, alpha, k_set_pi)

        batch = gather(real, sample_indices(real, k_real, r.meta_batch))
        real_y = soft_q_target(target, actor, batch.reward, batch.next_obs, batch.done, alpha, k_real_y, gamma)
        objective_fn = lambda th: jnp.mean(set_losses(th, critic, batch.obs, batch.action, real_y[:, None], alpha,
                                                      k_real_pi))  # Eq. 4
        grad, j = meta_gradient(usage["w"], weight_fn, {"critic": critic, "actor": actor}, losses_fn,
                                objective_fn, r.inner_lr)
        updates, w_opt = self.w_opt.update(grad, usage["w_opt"], usage["w"])
        meta_loss = jnp.where(jnp.isnan(usage["meta_loss"]), j, 0.99 * usage["meta_loss"] + 0.01 * j)
        return {**usage, "w": optax.apply_updates(usage["w"], updates), "w_opt": w_opt, "meta_loss": meta_loss}

    def row_weights(self, usage, rows):
        """Eq. 6's weights of model-buffer rows: one GRU step from each row's stored carry with the current
        weight network and normalizer: [n]."""
        return weight_step(usage["w"], usage["carry"][rows], normalize(usage["norm"], usage["feat"][rows]))[1]

    def agent_batch(self, usage, real, imagined, window, key):
        if not self.learned:
            return super().agent_batch(usage, real, imagined, window, key)
        real_idx, model_idx = self.agent_rows(real, imagined, window, key)
        w = jnp.concatenate([jnp.ones(real_idx.shape[0]), self.row_weights(usage, model_idx)])
        return Batch(**vars(minibatch(real, imagined, real_idx, model_idx)), q_weight=w, pi_weight=w)

    def after_updates(self, usage, state, key):
        if self.r.real_updates == 0:
            return usage, state.agent
        sac = self.cfg.sac
        ones = jnp.ones(sac.batch_size)

        def real_minibatch(real, k):
            return Batch(**vars(gather(real, sample_indices(real, k, sac.batch_size))), q_weight=ones)

        act_dim = state.agent.params["actor"][-1]["b"].shape[0] // 2
        update = make_sac_update(replace(sac, updates_per_step=self.r.real_updates), act_dim, real_minibatch)
        return usage, update(state.agent, state.real, key)[0]

    # ---- logging
    def epoch_metrics(self, usage, agent, real):
        """The weight columns on METRIC_ROWS model-buffer rows (current weights), the meta loss's running mean
        (rate 0.01 per meta step) and the critic's loss on the epoch's real transitions (traced)."""
        TRACE_COUNTS["epoch_metrics"] += 1
        k_rows, k_q = jax.random.split(jax.random.fold_in(jax.random.key(0), real.size))
        n = min(self.cfg.steps_per_epoch, self.cfg.total_steps)
        out = {"rew/real_q_loss": real_q_loss(agent, real, n, k_q, self.cfg.sac.gamma),
               "rew/meta_loss": usage["meta_loss"]}
        if not self.learned:  # PE-SAC: every weight is 1
            return {**out, **{c: jnp.float32(1.0) for c in self.metric_columns if c.startswith("rew/weight")}}
        back = jax.random.randint(k_rows, (METRIC_ROWS,), 0, jnp.maximum(usage["size"], 1))
        rows = (usage["ptr"] - 1 - back) % usage["feat"].shape[0]  # the newest rows, before ptr (a pack keeps ptr)
        w, depth = self.row_weights(usage, rows), usage["depth"][rows]
        nan = jnp.float32(jnp.nan)
        out["rew/weight_mean"] = jnp.where(usage["size"] > 0, jnp.mean(w), nan)
        out["rew/weight_min"] = jnp.where(usage["size"] > 0, jnp.min(w), nan)
        for k in range(self.r.horizon):
            at = (depth == k) & (usage["size"] > 0)
            out[f"rew/weight_depth_{k}"] = jnp.where(jnp.any(at), jnp.sum(w * at) / jnp.maximum(jnp.sum(at), 1), nan)
        return out

    def clear_model_rows(self, usage):
        if not self.learned:
            return usage
        zero = lambda k: jnp.zeros_like(usage[k])
        return {**usage, "feat": zero("feat"), "carry": zero("carry"), "depth": zero("depth"), "size": jnp.int32(0)}

    def metrics(self, state):
        return {k: float(v) for k, v in self._epoch_metrics_jit(state.usage, state.agent, state.real).items()}
