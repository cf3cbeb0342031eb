"""Seeds per hour: N seeds vmapped in one process (`mbrlax train --seeds`) against the same N seeds run one after
another (`mbrlax train`, one process each), MBPO at the env's paper preset except a shorter exploration phase,
each a fresh process (JIT compilation included, as a user pays it).

    taskset -c 0 python benchmarks/seeds_throughput.py [--env Hopper-v5] [--seeds 1 2 4] [--init-steps 1000]
        [--loop-steps 500] [--out results/seeds_throughput.csv]

Sequential figures for N seeds are the sums of the single-seed runs of seeds 0..N-1 (for N = 1 both modes are
that one run: one seed takes the single-seed code path). Writes one CSV row per
(mode, N): wall seconds, seeds per hour, and the loop phases (time/* of metrics.csv, summed over the processes;
in a vmapped run they cover all its seeds).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mbrlax.run.metrics import read_metrics
from mbrlax.run.summary import write_csv

PHASES = ("agent_update", "model_train", "rollout", "env_step", "evaluate", "checkpoint")


def timed_run(flags: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mbrlax.cli", "train", *flags], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def phases(run_dir: Path) -> dict[str, float]:
    m = read_metrics(run_dir)
    return {p: float(m[f"time/{p}"][-1]) for p in PHASES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4], help="numbers of seeds to compare")
    ap.add_argument("--init-steps", type=int, default=1000)
    ap.add_argument("--loop-steps", type=int, default=500)
    ap.add_argument("--out", default="results/seeds_throughput.csv")
    args = ap.parse_args()
    total = args.init_steps + args.loop_steps
    common = ["--env", args.env, "--init-steps", str(args.init_steps), "--total-steps", str(total),
              "--steps-per-epoch", str(args.loop_steps), "--eval-episodes", "5", "--no-progress"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        single = {}
        for s in range(max(args.seeds)):
            out = Path(tmp) / f"single_{s}"
            single[s] = (timed_run([*common, "--seed", str(s), "--out", str(out)]), phases(out))
            print(f"single seed {s}: {single[s][0]:.0f} s", flush=True)
        for n in args.seeds:
            out = Path(tmp) / f"vmapped_{n}"
            wall = timed_run([*common, "--seeds", f"0-{n - 1}", "--out", str(out)]) if n > 1 else single[0][0]
            ph = phases(out / "seed_0") if n > 1 else single[0][1]
            seq_wall = sum(single[s][0] for s in range(n))
            seq_ph = {p: sum(single[s][1][p] for s in range(n)) for p in PHASES}
            for mode, w, p in (("sequential", seq_wall, seq_ph), ("vmapped", wall, ph)):
                rows.append({"env": args.env, "mode": mode, "seeds": n, "loop_steps": args.loop_steps,
                             "wall_s": round(w, 1), "seeds_per_hour": round(n * 3600 / w, 2),
                             **{f"{k}_s": round(v, 1) for k, v in p.items()}})
            print(f"{n} seeds: sequential {seq_wall:.0f} s, vmapped {wall:.0f} s "
                  f"({seq_wall / wall:.2f}x)", flush=True)
    print(f"wrote {write_csv(rows, args.out)}")


if __name__ == "__main__":
    main()
