"""SPECS.md M-T2: MEMR's mechanism offline, from a saved MEMR run (its real data, policy, pi_psi and
priorities): are prioritized start states more diverse than uniform ones?

Draws --starts start states with the run's priorities (Eq. 3, a = the run's memr.alpha) and
uniformly, gives each the current policy's action (as a rollout does), and reports per draw:
  mean_priority      Eq. 4 under the run's pi_psi for those (s, a), averaged
  logdet_cov_sa      log-determinant of the covariance of the (s, a) vectors
  unique_fraction    distinct rows among the draws / draws
The paper's argument (Theorem 3.1) predicts higher priority and a larger (s, a) spread for the
prioritized draw.

    python benchmarks/memr_diversity.py RUN_DIR [--starts 100000] --out results/memr_diversity.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import jax
import numpy as np

from mbrlax.agents.sac import sample_action
from mbrlax.api import _restore
from mbrlax.usage.memr import priority
from mbrlax.usage.sumtree import sumtree_sample


def diversity(obs, action, psi) -> dict:
    sa = np.concatenate([obs, action], axis=1).astype(np.float64)
    sign, logdet = np.linalg.slogdet(np.cov(sa, rowvar=False))
    return {"mean_priority": float(np.mean(np.asarray(priority(psi, obs, action)))),
            "logdet_cov_sa": float(logdet) if sign > 0 else float("-inf")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a MEMR run directory with a checkpoint")
    ap.add_argument("--starts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="memr_diversity.csv")
    args = ap.parse_args()
    cfg, state, meta, _, _ = _restore(Path(args.run_dir))
    if cfg.algo != "memr":
        raise SystemExit(f"{args.run_dir} is a {cfg.algo} run; this needs a MEMR run (--algo memr)")
    u, real, actor = state.usage, state.real, state.agent.params["actor"]
    size = int(real.size)
    k_pri, k_uni, k_act = jax.random.split(jax.random.key(args.seed), 3)
    draws = {"prioritized": np.asarray(sumtree_sample(u["tree"], k_pri, args.starts)),
             "uniform": np.asarray(jax.random.randint(k_uni, (args.starts,), 0, size))}
    rows = []
    for name, idx in draws.items():
        obs = real.data.obs[idx]
        action, _ = sample_action(actor, obs, k_act)
        rows.append({"run": args.run_dir, "env_steps": meta["env_steps"], "draw": name, "starts": args.starts,
                     **diversity(np.asarray(obs), np.asarray(action), u["psi"]),
                     "unique_fraction": len(np.unique(idx)) / len(idx)})
        print(rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
