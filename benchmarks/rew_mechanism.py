"""SPECS.md R-T1: ReW's mechanism under a known model corruption.

A fraction --corrupt-fraction (0.3) of all imagined transition sets, in the meta step and in the training
rollouts, get extra Gaussian noise of --corrupt-scale (3) x the model's predicted std on every sample
(`--rew.corrupt-fraction`, mbrlax/usage/rew.py). Two arms train on the same corrupted model data: ReW-PE-SAC
(learned weights) and PE-SAC (`--rew.weights none`). Every --eval-every env steps the ReW arm's current weight
network is evaluated on fresh set rollouts (exploration policy, --eval-starts real start states, the same
corruption, its flags known):

    auc          ROC AUC of the weights for clean vs corrupted sets (P(w_clean > w_corrupted); 0.5 = blind,
                 1 = every corrupted set weighs less); over the sets whose earlier depths are all clean, by depth
                 and pooled
    w_clean, w_corrupted   mean weight of those sets
    w_median     median weight of every valid set at that depth (Fig. 4b: should decrease with depth)

and both arms' metrics.csv give the real-data critic loss (rew/real_q_loss; Fig. 3 analog) and the return.

    python benchmarks/rew_mechanism.py --out results/rew_mechanism [--env SwimmerMBBL-v0] [--steps 20000]
        [--seeds 0 1] [--eval-every 2000] [--arms rew pe_sac]  # ~2 CPU-h per seed and arm at 10k steps
    taskset -c 1 python benchmarks/rew_mechanism.py --out DIR --arms pe_sac  # the arms on two cores at once
    python benchmarks/rew_mechanism.py --out DIR --summarize     # summary.md of runs stopped before the end
    python benchmarks/rew_mechanism.py --out /tmp/rew_mech --smoke   # minutes: tiny nets, 400 steps

Runs are ordinary run directories under --out (<env>_<arm>_s<seed>); the script resumes unfinished ones and
skips evaluations already in auc.csv, so it can be interrupted and re-run. Writes auc.csv and summary.md.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
from scipy.stats import rankdata

import mbrlax
from mbrlax.api import _restore
from mbrlax.config import ModelConfig, RolloutConfig, SACConfig, preset
from mbrlax.run.checkpoint import has_checkpoint
from mbrlax.run.metrics import read_metrics
from mbrlax.run.summary import fmt, mean_se, run_values
from mbrlax.usage import make_usage
from mbrlax.usage.rew import explore_action, normalize, sequence_weights, set_features

ARMS = {"rew": "rew", "pe_sac": "none"}
COST_PHASES = ("before_updates", "agent_update", "model_train", "rollout")
SMOKE = dict(  # the tests' tiny settings
    total_steps=400, init_steps=100, steps_per_epoch=100, eval_episodes=1,
    model=ModelConfig(hidden_size=32, num_layers=2, weight_decays=(1e-5, 1e-5, 1e-5), train_freq=100,
                      ensemble_size=3, num_elites=2, max_epochs=5),
    sac=SACConfig(hidden_size=32, updates_per_step=2, batch_size=64),
    rollout=RolloutConfig(batch_size=200),
)
AUC_FIELDS = ["env", "seed", "env_steps", "depth", "auc", "w_clean", "w_corrupted", "w_median", "n_clean",
              "n_corrupted"]


def roc_auc(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """P(w_clean > w_corrupted) + 0.5 P(tie) (Mann-Whitney U / (n1 n2))."""
    if len(clean) == 0 or len(corrupted) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([clean, corrupted]))
    u = ranks[: len(clean)].sum() - len(clean) * (len(clean) + 1) / 2
    return float(u / (len(clean) * len(corrupted)))


def evaluate_weights(run_dir: Path, starts: int, seed: int) -> list[dict]:
    """AUC and mean weights by depth of the run's current weight network on fresh corrupted set rollouts."""
    cfg, state, meta, _, _ = _restore(run_dir)
    rew = make_usage(cfg)
    key_starts, key_roll = jax.random.split(jax.random.fold_in(jax.random.key(seed), meta["env_steps"]))
    idx = jax.random.randint(key_starts, (starts,), 0, state.real.size)
    actor = state.agent.params["actor"]
    explore = lambda obs, k: explore_action(actor, obs, k, cfg.rew.explore_scale)
    sets = jax.jit(lambda m, o, k: rew.set_rollout(m, o, explore, k))(state.model, state.real.data.obs[idx], key_roll)
    w = np.asarray(sequence_weights(state.usage["w"], normalize(state.usage["norm"], set_features(sets)))[0])
    bad, valid = np.asarray(sets.corrupted), np.asarray(sets.valid)
    clean_history = np.cumprod(np.concatenate([np.ones((1, starts), bool), ~bad[:-1]]), axis=0).astype(bool)
    rows, pooled = [], ([], [])
    for depth in range(w.shape[0]):
        use = valid[depth] & clean_history[depth]
        clean, corrupted = w[depth][use & ~bad[depth]], w[depth][use & bad[depth]]
        pooled[0].append(clean), pooled[1].append(corrupted)
        rows.append({"depth": depth, "auc": roc_auc(clean, corrupted), "w_clean": float(np.mean(clean)),
                     "w_corrupted": float(np.mean(corrupted)), "w_median": float(np.median(w[depth][valid[depth]])),
                     "n_clean": len(clean), "n_corrupted": len(corrupted)})
    clean, corrupted = np.concatenate(pooled[0]), np.concatenate(pooled[1])
    rows.append({"depth": "all", "auc": roc_auc(clean, corrupted), "w_clean": float(np.mean(clean)),
                 "w_corrupted": float(np.mean(corrupted)), "w_median": float(np.median(w[valid])),
                 "n_clean": len(clean), "n_corrupted": len(corrupted)})
    return [{"env_steps": meta["env_steps"], **r} for r in rows]


def config(args, arm: str, seed: int, run_dir: Path):
    over = dict(SMOKE) if args.smoke else {"total_steps": args.steps}
    cfg = preset(args.env, "rew", seed=seed, out=str(run_dir), progress=False, **over)
    rew = replace(cfg.rew, weights=ARMS[arm], corrupt_fraction=args.corrupt_fraction, corrupt_scale=args.corrupt_scale)
    if args.smoke:
        rew = replace(rew, horizon=3, meta_starts=8, meta_batch=32)
    return replace(cfg, rew=rew)


def env_steps_done(run_dir: Path) -> int:
    if not (run_dir / "metrics.csv").exists() or not has_checkpoint(run_dir):
        return 0
    steps = read_metrics(run_dir).get("env_steps", [])
    return int(steps[-1]) if len(steps) else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--env", default="SwimmerMBBL-v0")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--corrupt-fraction", type=float, default=0.3)
    ap.add_argument("--corrupt-scale", type=float, default=3.0)
    ap.add_argument("--eval-every", type=int, default=2000)
    ap.add_argument("--eval-starts", type=int, default=4096)
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                    help="the arms this process trains (another process can train the other into the same --out)")
    ap.add_argument("--summarize", action="store_true", help="only write summary.md from the runs as they stand")
    ap.add_argument("--smoke", action="store_true", help="tiny nets and 400 steps (checks the script, not ReW)")
    args = ap.parse_args()
    if args.smoke:
        args.env, args.eval_every, args.eval_starts = "InvertedPendulum-v5", 200, 512
    out = Path(args.out)
    if args.summarize:
        return write_summary(out, args)
    out.mkdir(parents=True, exist_ok=True)
    auc_path = out / "auc.csv"
    seen = set()
    if auc_path.exists():
        seen = {(r["seed"], r["env_steps"]) for r in csv.DictReader(auc_path.open()) if r["env"] == args.env}

    for seed in args.seeds:
        for arm in args.arms:
            run_dir = out / f"{args.env}_{arm}_s{seed}"
            cfg = config(args, arm, seed, run_dir)
            while (done := env_steps_done(run_dir)) < cfg.total_steps:
                stop = min(cfg.total_steps, (done // args.eval_every + 1) * args.eval_every)
                print(f"rew_mechanism: {run_dir.name} {done} -> {stop}", flush=True)
                if has_checkpoint(run_dir):
                    mbrlax.resume(run_dir, stop_at=stop)
                else:
                    mbrlax.train(cfg, stop_at=stop)
                if arm == "rew" and (str(seed), str(stop)) not in seen and env_steps_done(run_dir) > cfg.init_steps:
                    rows = [{"env": args.env, "seed": seed, **r} for r in evaluate_weights(run_dir, args.eval_starts, seed)]
                    new = not auc_path.exists()
                    with auc_path.open("a", newline="") as f:
                        writer = csv.DictWriter(f, AUC_FIELDS)
                        if new:
                            writer.writeheader()
                        writer.writerows(rows)
                    seen.add((str(seed), str(stop)))
                    print("  auc by depth:", " ".join(f"{r['depth']}:{r['auc']:.3f}" for r in rows), flush=True)
    write_summary(out, args)


def write_summary(out: Path, args) -> None:
    """Per arm, over seeds: return and real-data critic loss over the last quarter of the env steps every run has
    reached (the same window for both arms); the ReW arm's last AUC rows."""
    runs = {(arm, seed): out / f"{args.env}_{arm}_s{seed}" for arm in ARMS for seed in args.seeds}
    metrics = {k: read_metrics(d) for k, d in runs.items() if (d / "metrics.csv").exists()}
    common = min((int(m["env_steps"][-1]) for m in metrics.values()), default=0)
    lines = [f"# ReW mechanism on {args.env}: {args.corrupt_fraction:.0%} of the sets corrupted "
             f"(noise {args.corrupt_scale} x model std)", "",
             f"Means over env steps {0.75 * common:.0f}-{common} (the last quarter of what every run reached).", "",
             "| arm | seeds | eval return | real-data critic loss |", "|---|---|---|---|"]
    costs = []
    for arm in ARMS:
        ret, qloss, cost = [], [], []
        for seed in args.seeds:
            if (m := metrics.get((arm, seed))) is None:
                continue
            tail = (m["env_steps"] >= 0.75 * common) & (m["env_steps"] <= common)
            ret.append(np.nanmean(m["eval_return"][tail]))
            qloss.append(np.nanmean(m["rew/real_q_loss"][tail]))
            cost.append(run_values(m, [], None))
        if ret:
            lines.append(f"| {arm} | {len(ret)} | {fmt(*mean_se(ret), digits=1)} | {fmt(*mean_se(qloss), digits=3)} |")
            means = [mean_se(c[f"s_per_1k_{ph}"] for c in cost) for ph in ("median", "total", *COST_PHASES)]
            costs.append(f"| {arm} | " + " | ".join(fmt(m, se, min(n, 1)) for m, se, n in means) + " |")  # means only
    lines += ["", "(± standard error over seeds.) Cost, s per 1,000 env steps (one core each; median over learning "
              "intervals, run mean, and the run mean by phase; meta step = time/before_updates, '-' in runs from "
              "before it was timed apart from the agent updates):", "",
              "| arm | median | total | meta step | agent updates | model training | rollouts |", "|---|---|---|---|---|---|---|",
              *costs]
    auc_path = out / "auc.csv"
    if auc_path.exists():
        rows = [r for r in csv.DictReader(auc_path.open()) if r["env"] == args.env]
        last = max(int(r["env_steps"]) for r in rows) if rows else None
        lines += ["", f"ReW arm at env step {last} (mean over seeds):", "",
                  "| depth | AUC clean vs corrupted | mean w clean | mean w corrupted | median w |", "|---|---|---|---|---|"]
        for depth in dict.fromkeys(r["depth"] for r in rows):
            sel = [r for r in rows if r["depth"] == depth and int(r["env_steps"]) == last]
            mean = lambda k: np.nanmean([float(r[k]) for r in sel])
            lines.append(f"| {depth} | {mean('auc'):.3f} | {mean('w_clean'):.3f} | {mean('w_corrupted'):.3f} | "
                         f"{mean('w_median'):.3f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
