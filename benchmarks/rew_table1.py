"""Table 1 of ReW-PE-SAC (shared/papers/rew.txt:676-693): ReW-PE-SAC and PE-SAC (`--rew.weights none`) on the
six MBBL envs (mbrlax/envs/mbbl.py), 200k env steps, 8 seeds; the final performance is each seed's mean
evaluation return over the last 5,000 env steps (the paper's window), then mean +- std over seeds.

    python benchmarks/rew_table1.py --out results/rew_table1 --dry-run          # the plan and its cost
    python benchmarks/rew_table1.py --out results/rew_table1 --jobs 8           # run (a GPU: several at once)
    python benchmarks/rew_table1.py --out results/rew_table1 --summarize        # table.md from what exists
    python benchmarks/rew_table1.py --out /tmp/rew_t1 --smoke                   # minutes: tiny nets, 300 steps

Every cell is an ordinary run directory <out>/<env>_<arm>_s<seed> trained by `mbrlax train` in a subprocess
(log beside it); finished runs are skipped and unfinished ones continued with `mbrlax resume`, so the sweep
can be stopped (Ctrl-C stops the children, which checkpoint) and re-run. --jobs N runs N at once: on a GPU
each child gets 1/N of its memory (XLA_PYTHON_CLIENT_MEM_FRACTION), on a CPU --pin puts child i on core i.
Flags after `--` go to every `mbrlax train`, e.g. `-- --eval-episodes 5`.

The cost printed first is runs x remaining steps x --sec-per-1k / jobs. The default 500 s per 1,000 env steps is
SPECS.md 3.7's mid estimate for one CPU core (15-40 CPU-h per 200k-step seed, model training growing with the
data); once runs have progressed, their own measured wall time per step replaces it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENVS = ("AntMBBL-v0", "HalfCheetahMBBL-v0", "HopperMBBL-v0", "SlimHumanoidMBBL-v0", "SwimmerMBBL-v0",
        "Walker2dMBBL-v0")
ARMS = {"rew": "ReW-PE-SAC", "none": "PE-SAC"}  # --rew.weights -> Table 1 row
PAPER = {  # Table 1, mean +- std over 8 seeds ("Our Method", "w.o reweighting")
    "rew": dict(zip(ENVS, ("4614.4 ± 931.1", "9779.8 ± 546.6", "2824.0 ± 159.9", "11755.9 ± 11152.2",
                           "82.2 ± 33.4", "4961.9 ± 457.8"))),
    "none": dict(zip(ENVS, ("4033.5 ± 1480.5", "11854.3 ± 102.8", "2202.6 ± 363.5", "1436.8 ± 490.8",
                            "26.6 ± 25.4", "2673.8 ± 2264.8"))),
}
WINDOW = 5000
SMOKE_FLAGS = [
    "--init-steps", "100", "--steps-per-epoch", "100", "--eval-episodes", "1", "--model.hidden-size", "32",
    "--model.num-layers", "2", "--model.weight-decays", "1e-5", "1e-5", "1e-5", "--model.train-freq", "100",
    "--model.ensemble-size", "3", "--model.num-elites", "2", "--model.max-epochs", "5", "--sac.hidden-size", "32",
    "--sac.updates-per-step", "2", "--sac.batch-size", "64", "--rollout.batch-size", "200", "--rew.horizon", "3",
    "--rew.meta-starts", "8", "--rew.meta-batch", "32",
]


def progress(run_dir: Path) -> tuple[int, float]:
    """(env steps logged, wall seconds) of a run directory (0, 0 if it has no metrics yet)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return 0, 0.0
    lines = path.read_text().strip().splitlines()
    if len(lines) < 2:
        return 0, 0.0
    head, last = lines[0].split(","), lines[-1].split(",")
    row = dict(zip(head, last))
    return int(float(row["env_steps"])), float(row.get("time/wall", "nan"))


def command(run_dir: Path, env: str, weights: str, seed: int, steps: int, extra: list[str]) -> list[str]:
    from mbrlax.run.checkpoint import has_checkpoint

    if has_checkpoint(run_dir):
        return [sys.executable, "-m", "mbrlax.cli", "resume", str(run_dir)]
    if run_dir.exists():  # started but killed before its first checkpoint: nothing to keep, start it again
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.stale{int(time.time())}"))
    return [sys.executable, "-m", "mbrlax.cli", "train", "--env", env, "--algo", "rew", "--rew.weights", weights,
            "--seed", str(seed), "--total-steps", str(steps), "--no-progress", "--out", str(run_dir), *extra]


def plan(args) -> list[dict]:
    cells = []
    for env in args.envs:
        for weights in ARMS:
            for seed in args.seeds:
                run_dir = Path(args.out) / f"{env}_{weights}_s{seed}"
                done, wall = progress(run_dir)
                cells.append({"env": env, "weights": weights, "seed": seed, "dir": run_dir, "done": done,
                              "wall": wall})
    return cells


def print_cost(cells: list[dict], args) -> None:
    measured = [c["wall"] / c["done"] * 1000 for c in cells if c["done"] > 0 and np.isfinite(c["wall"])]
    rate = float(np.median(measured)) if measured else args.sec_per_1k
    left = [c for c in cells if c["done"] < args.steps]
    steps_left = sum(args.steps - c["done"] for c in left)
    hours = steps_left / 1000 * rate / 3600
    print(f"rew_table1: {len(cells)} runs ({len(args.envs)} envs x {len(ARMS)} arms x {len(args.seeds)} seeds, "
          f"{args.steps} steps each); {len(left)} unfinished, {steps_left:,} env steps to go")
    print(f"rew_table1: at {rate:.0f} s per 1,000 env steps ({'measured on these runs' if measured else '--sec-per-1k'})"
          f": {hours:,.1f} process-hours, {hours / max(args.jobs, 1):,.1f} h wall with --jobs {args.jobs}")


def run_all(cells: list[dict], args, extra: list[str]) -> None:
    todo = [c for c in cells if c["done"] < args.steps]
    running: list[tuple[subprocess.Popen, dict]] = []
    free_slots = list(range(args.jobs))
    try:
        while todo or running:
            while todo and free_slots:
                cell, slot = todo.pop(0), free_slots.pop(0)
                cell["dir"].parent.mkdir(parents=True, exist_ok=True)
                cmd = command(cell["dir"], cell["env"], cell["weights"], cell["seed"], args.steps, extra)
                if args.pin:
                    cmd = ["taskset", "-c", str(slot % os.cpu_count()), *cmd]
                env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / args.jobs:.3f}"}
                log = open(cell["dir"].with_suffix(".log"), "a")
                print(f"rew_table1: start {cell['dir'].name} ({' '.join(cmd[2:5])})", flush=True)
                running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), {**cell,
                                "slot": slot, "log": log}))
            time.sleep(5)
            for proc, cell in list(running):
                if proc.poll() is not None:
                    running.remove((proc, cell))
                    free_slots.append(cell["slot"])
                    cell["log"].close()
                    print(f"rew_table1: {cell['dir'].name} exited {proc.returncode} at env step "
                          f"{progress(cell['dir'])[0]}", flush=True)
    except KeyboardInterrupt:
        for proc, _ in running:
            proc.send_signal(signal.SIGTERM)  # the children checkpoint and stop (mbrlax/run/stop.py)
        for proc, _ in running:
            proc.wait()
        raise


def final_performance(run_dir: Path, steps: int) -> float | None:
    """Mean eval return over the last WINDOW env steps of a finished run (None if unfinished)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    lines = path.read_text().strip().splitlines()
    head = lines[0].split(",")
    rows = [dict(zip(head, line.split(","))) for line in lines[1:]]
    if not rows or int(float(rows[-1]["env_steps"])) < steps:
        return None
    window = [float(r["eval_return"]) for r in rows if int(float(r["env_steps"])) > steps - WINDOW]
    return float(np.mean(window))


def summarize(args) -> str:
    lines = [f"Final performance (mean eval return over the last {WINDOW:,} of {args.steps:,} env steps), "
             "mean ± std over finished seeds (n); the paper's Table 1 below each row", "",
             "| method | " + " | ".join(e.replace("MBBL-v0", "") for e in args.envs) + " |",
             "|---|" + "---|" * len(args.envs)]
    results = {}
    for weights, name in ARMS.items():
        cells, paper = [], []
        for env in args.envs:
            vals = [v for s in args.seeds
                    if (v := final_performance(Path(args.out) / f"{env}_{weights}_s{s}", args.steps)) is not None]
            results[f"{env}_{weights}"] = vals
            cells.append(f"{np.mean(vals):.1f} ± {np.std(vals):.1f} (n={len(vals)})" if vals else "-")
            paper.append(PAPER[weights].get(env, "-"))
        lines += [f"| {name} (mbrlax) | " + " | ".join(cells) + " |", f"| {name} (paper) | " + " | ".join(paper) + " |"]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return text


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--pin", action="store_true", help="CPU: pin child i to core i")
    ap.add_argument("--sec-per-1k", type=float, default=500.0, help="cost estimate before any run has progressed")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its cost, run nothing")
    ap.add_argument("--summarize", action="store_true", help="only write table.md from the runs that exist")
    ap.add_argument("--smoke", action="store_true", help="Swimmer, seed 0, 300 steps of tiny nets (checks the script)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.envs, args.seeds, args.steps = ["SwimmerMBBL-v0"], [0], 300
        extra = SMOKE_FLAGS + extra
    cells = plan(args)
    print_cost(cells, args)
    if args.dry_run:
        return
    if not args.summarize:
        run_all(cells, args, extra)
    print(summarize(args))


if __name__ == "__main__":
    main()
