"""`mbrlax bench`: steady-state seconds per 1000 env steps at MBPO's settings.

Protocol (the one used for the mbrl-lib reference figure): `init_steps` of
random exploration, then the MBPO loop; the clock runs from loop step
`--start` (after the first model training, rollout length 1, compiles done)
to loop step `--stop`. Evaluation and checkpoint time is excluded and
reported separately.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import jax

from mbrlax.algos.dyna import PHASES, Dyna, Lane, Timer, init_run_state, run_loop
from mbrlax.api import env_dims
from mbrlax.config import preset, validate
from mbrlax.run.metrics import MetricsLogger
from mbrlax.runtime import configure


@dataclass(frozen=True)
class BenchArgs:
    env: str = "Hopper-v5"
    """Environment (MBPO preset settings)."""
    algo: str = "mbpo"
    """mbpo or sac."""
    start: int = 250
    """Loop step (after initial exploration) where timing starts."""
    stop: int = 1000
    """Loop step where timing stops."""
    updates_per_step: int = 0
    """Override SAC updates per env step (0 = preset)."""
    sac_width: int = 0
    """Override SAC hidden width (0 = preset)."""
    seed: int = 0
    """Random seed."""
    devices: int = 0
    """Devices the model's members are split over (0 = automatic: one per usable core, at most 7)."""
    throughput: bool = False
    """Instead: achieved GFLOP/s of the SAC update and model minibatch vs plain matmuls."""


def bench(args: BenchArgs) -> dict:
    configure(args.devices or None)
    if args.throughput:
        return throughput()
    cfg = preset(args.env, args.algo)
    sac = cfg.sac
    if args.updates_per_step:
        sac = replace(sac, updates_per_step=args.updates_per_step)
    if args.sac_width:
        sac = replace(sac, hidden_size=args.sac_width)
    cfg = validate(replace(
        cfg, seed=args.seed, sac=sac, total_steps=cfg.init_steps + args.stop, progress=False,
        steps_per_epoch=args.stop, checkpoint_every=10**9, model=replace(cfg.model, devices=args.devices),
    ))
    obs_dim, act_dim = env_dims(cfg)
    dyna = Dyna(cfg, obs_dim, act_dim)
    state = init_run_state(cfg, obs_dim, act_dim)
    timer = Timer()
    trainer = dyna.model_trainer
    with tempfile.TemporaryDirectory() as run_dir, MetricsLogger(run_dir, tensorboard=False) as logger:
        print(f"bench: {cfg.algo} {cfg.env}, G={cfg.sac.updates_per_step}, SAC width {cfg.sac.hidden_size}, "
              f"{cfg.init_steps} exploration steps, model on {trainer.split.n_devices} device(s), "
              f"timing loop steps {args.start}..{args.stop}")
        lane = Lane(Path(run_dir), logger, {"env_steps": 0})
        state = run_loop(dyna, state, [lane], cfg.init_steps + args.start, timer)
        trainer.compile_all_chunk_sizes(state.model, *dyna.training_data(state.real))
        before, t0 = dict(timer.totals), time.perf_counter()
        epochs0, minibatches0 = trainer.epochs_run, trainer.minibatches_run
        state = run_loop(dyna, state, [lane], cfg.init_steps + args.stop, timer)
        jax.block_until_ready(state)
        wall = time.perf_counter() - t0
    spent = {k: timer.totals[k] - before.get(k, 0.0) for k in PHASES}
    scale = 1000.0 / (args.stop - args.start)
    loop_time = wall - spent["evaluate"] - spent["checkpoint"]
    updates = (args.stop - args.start) * cfg.sac.updates_per_step
    minibatches = trainer.minibatches_run - minibatches0
    result = {
        "env": cfg.env,
        "algo": cfg.algo,
        "updates_per_step": cfg.sac.updates_per_step,
        "sac_width": cfg.sac.hidden_size,
        "model_devices": trainer.split.n_devices,
        "sec_per_1k_env_steps": loop_time * scale,
        "window_env_steps": args.stop - args.start,
        "model_train_s": spent["model_train"],
        "model_epochs": trainer.epochs_run - epochs0,
        "model_minibatches": minibatches,
        "ms_per_model_minibatch": 1000.0 * spent["model_train"] / max(minibatches, 1),
        "agent_update_s": spent["agent_update"],
        "sac_updates": updates,
        "ms_per_sac_update": 1000.0 * spent["agent_update"] / updates,
        "rollout_s": spent["rollout"],
        "env_s": spent["env_step"],
        "before_updates_s": spent["before_updates"],
        "other_s": loop_time - sum(spent[k] for k in ("model_train", "rollout", "agent_update", "before_updates",
                                                      "env_step")),
        "matmul_1024_gflops": matmul_gflops(1024),
        "device": str(jax.devices()[0]),
    }
    for k, v in result.items():
        print(f"  {k:28s} {v:.2f}" if isinstance(v, float) else f"  {k:28s} {v}")
    print(json.dumps(result))
    return result


def matmul_gflops(n: int) -> float:
    """The machine's rate on a plain n x n x n float32 matmul (one jitted op)."""
    import jax.numpy as jnp

    a = jnp.ones((n, n))
    return 2 * n**3 / _time(jax.jit(lambda a: a @ a), a, repeats=50) / 1e9


def _time(fn, *args, repeats: int, rounds: int = 3) -> float:
    """Seconds per call: the best of `rounds` rounds of `repeats` calls (compile excluded)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / repeats)
    return best


def throughput(obs_dim: int = 11, act_dim: int = 3) -> dict:
    """Achieved GFLOP/s of the SAC update scan and of model-training minibatches (7 members x 256,
    on one device and split over all devices) vs plain matmuls.

    FLOPs are counted analytically from the layer sizes (2 per multiply-add):
    SAC update = twin-Q forward+backward, target twin-Q and next-action policy
    forwards, policy forward+backward through the (frozen) twin Q; model
    minibatch = forward+backward (3x forward) of every member on its batch.
    """
    import jax.numpy as jnp
    import numpy as np

    from mbrlax.agents.sac import make_sac_update, sac_init
    from mbrlax.config import ModelConfig, SACConfig
    from mbrlax.models.ensemble import model_init
    from mbrlax.models.trainer import ModelTrainer
    from mbrlax.types import Batch

    def mlp_macs(sizes):
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))

    out = {f"matmul_{n}_gflops": matmul_gflops(n) for n in (256, 1024)}

    sac_cfg = SACConfig()
    h = [sac_cfg.hidden_size] * sac_cfg.num_layers
    q, pi = mlp_macs([obs_dim + act_dim] + h + [1]), mlp_macs([obs_dim] + h + [2 * act_dim])
    sac_flops = 2 * sac_cfg.batch_size * (2 * q * 3 + 2 * q + pi + pi * 3 + 2 * q * 2)
    n = 10_000
    data = Batch(jnp.ones((n, obs_dim)), jnp.zeros((n, act_dim)), jnp.ones(n), jnp.ones((n, obs_dim)),
                 jnp.zeros(n), jnp.ones(n))
    sample = lambda d, k: jax.tree.map(lambda x: x[jax.random.randint(k, (sac_cfg.batch_size,), 0, n)], d)
    update = jax.jit(make_sac_update(sac_cfg, act_dim, sample))
    state = sac_init(jax.random.key(0), obs_dim, act_dim, sac_cfg)
    dt = _time(lambda s: update(s, data, jax.random.key(1))[0], state, repeats=10) / sac_cfg.updates_per_step
    out["sac_update_ms"], out["sac_update_gflops"] = dt * 1e3, sac_flops / dt / 1e9

    x, y = jnp.ones((n, obs_dim + act_dim)), jnp.ones((n, obs_dim + 1))
    rng = np.random.default_rng(0)
    for devices in sorted({1, len(jax.devices())}):  # one device, and split over all of them
        m_cfg = ModelConfig(devices=devices)
        sizes = [obs_dim + act_dim] + [m_cfg.hidden_size] * m_cfg.num_layers + [2 * (obs_dim + 1)]
        model_flops = 2 * 3 * m_cfg.ensemble_size * m_cfg.batch_size * mlp_macs(sizes)
        trainer = ModelTrainer(m_cfg)
        placed = trainer.place(model_init(jax.random.key(0), obs_dim, act_dim, m_cfg), x, y, jnp.ones(n))
        idx = rng.integers(0, n, (16, m_cfg.ensemble_size, m_cfg.batch_size)).astype(np.int32)
        idx, valid = trainer.pad_members(idx, 0), trainer.pad_members(np.ones(idx.shape, bool), False)
        chunk = lambda p: trainer._train_chunk(*p[:2], *placed[2:], idx, valid)[:2]
        dt = _time(chunk, placed, repeats=5) / 16
        out[f"model_minibatch_ms_{devices}dev"] = dt * 1e3
        out[f"model_minibatch_gflops_{devices}dev"] = model_flops / dt / 1e9
        out[f"model_minibatch_pct_of_matmul_1024_{devices}dev"] = 100 * model_flops / dt / 1e9 / out["matmul_1024_gflops"]
    for k, v in out.items():
        print(f"  {k:44s} {v:.2f}")
    print(json.dumps(out))
    return out
