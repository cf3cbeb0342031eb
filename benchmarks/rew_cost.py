"""Per-unit wall time of ReW-PE-SAC's pieces at an env's preset sizes (SPECS.md 3.7), on synthetic data:

    meta_step        one meta step (Ne x H set rollout with real actions, Eqs. 1-5, Adam on theta_w)
    agent_step_rew   a whole ReW agent step: meta step + K weighted SAC updates
    agent_step_pe    a PE-SAC agent step: K SAC updates (unit weights, no meta step)
    rollout_rew      one generation of set rollouts (rollout.batch_size starts x H, every member) + features/carries
    rollout_mbpo     MBPO's branched rollout of the same starts (one elite per row) at horizon H, for comparison

and the implied seconds per 1,000 env steps (model training is MBPO's and not timed here; see README Speed).
The model is untrained (random weights), which does not change the cost.

    python benchmarks/rew_cost.py [--env HopperMBBL-v0] [--repeats 5] [--real-rows 20000] [--out cost.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

import mbrlax
from mbrlax.algos.dyna import Dyna, init_run_state
from mbrlax.api import env_dims
from mbrlax.buffers import Buffer
from mbrlax.config import preset
from mbrlax.types import Transition
from mbrlax.usage import ModelUsage, make_usage


def timed(fn, state, repeats: int):
    """Median seconds of `fn(state) -> (state, ...)` after one warm-up call (the compile)."""
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        out = fn(state)
        jax.block_until_ready(out)
        state = out[0]
        if i:
            times.append(time.perf_counter() - t)
    return float(np.median(times)), state


def synthetic_state(cfg, usage, obs_dim, act_dim, rows: int, seed: int = 0):
    state = init_run_state(cfg, obs_dim, act_dim, usage)
    rng = np.random.default_rng(seed)
    cap = state.real.capacity
    obs = rng.normal(size=(cap + 1, obs_dim)).astype(np.float32)
    data = Transition(jnp.asarray(obs[:-1]), jnp.asarray(rng.uniform(-1, 1, (cap, act_dim)), jnp.float32),
                      jnp.asarray(rng.normal(size=cap), jnp.float32), jnp.asarray(obs[1:]), jnp.zeros(cap))
    return state.replace(real=Buffer(data=data, ptr=jnp.int32(rows), size=jnp.int32(rows)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="HopperMBBL-v0")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--real-rows", type=int, default=20_000)
    ap.add_argument("--rollout-starts", type=int, default=None, help="default: the preset's rollout.batch_size")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    mbrlax.configure()
    cfg = preset(args.env, "rew", total_steps=max(args.real_rows + 1000, 10_000), progress=False)
    if args.rollout_starts:
        cfg = replace(cfg, rollout=replace(cfg.rollout, batch_size=args.rollout_starts))
    obs_dim, act_dim = env_dims(cfg)
    H, K, freq = cfg.rew.horizon, cfg.sac.updates_per_step, cfg.model.train_freq
    out = {"env": args.env, "device": str(jax.devices()[0]), "horizon": H, "K": K, "train_freq": freq,
           "rollout_starts": cfg.rollout.batch_size, "meta_sets": cfg.rew.meta_starts * H}
    tr = Transition(np.zeros(obs_dim, np.float32), np.zeros(act_dim, np.float32), np.float32(0),
                    np.zeros(obs_dim, np.float32), np.float32(0))
    step = jnp.int32(args.real_rows)
    for weights in ("rew", "none"):
        c = replace(cfg, rew=replace(cfg.rew, weights=weights))
        usage = make_usage(c)
        dyna = Dyna(c, obs_dim, act_dim, usage)
        state = synthetic_state(c, usage, obs_dim, act_dim, args.real_rows)
        t_roll, state = timed(lambda s: dyna.rollout(s, jnp.int32(H), step), state, max(1, args.repeats // 2))
        window = dyna.window(H)
        t_agent, state = timed(lambda s: dyna.agent_step(dyna.before_updates(s, tr, step), window, step), state,
                               args.repeats)
        out[f"agent_step_{'rew' if weights == 'rew' else 'pe'}_ms"] = 1e3 * t_agent
        if weights == "rew":
            out["rollout_rew_s"] = t_roll
            # Only the weight network's new parameters come back: returning the whole usage state from a jit
            # without donation would time a copy of every model row's features and carry.
            meta = jax.jit(lambda u, s, k: usage.meta_step(u, s, k)["w"])
            t_meta, _ = timed(lambda s: (s, meta(s.usage, s, jax.random.key(0))), state, args.repeats)
            out["meta_step_ms"] = 1e3 * t_meta
    mbpo = ModelUsage(replace(cfg, algo="mbpo", rollout=replace(cfg.rollout, schedule=(1, 2, H, H))))
    dyna = Dyna(mbpo.cfg, obs_dim, act_dim, mbpo)
    state = synthetic_state(mbpo.cfg, mbpo, obs_dim, act_dim, args.real_rows)
    out["rollout_mbpo_s"], _ = timed(lambda s: dyna.rollout(s, jnp.int32(H), step), state, max(1, args.repeats // 2))
    per_1k = {"meta_steps": out["meta_step_ms"], "agent_updates_K": out["agent_step_pe_ms"],
              "rollouts": out["rollout_rew_s"] * 1e3 / freq}
    out["s_per_1k_env_steps"] = {k: round(v, 1) for k, v in per_1k.items()}  # ms per step = s per 1k steps
    out["s_per_1k_mbpo_rollouts"] = round(out["rollout_mbpo_s"] * 1e3 / freq, 1)
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
