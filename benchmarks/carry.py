"""Carry unfinished runs from one machine to the next through git (a session's machine may not outlive it).

    python benchmarks/carry.py pack /work/runs results/carry      # before the session ends; then commit results/carry
    python benchmarks/carry.py restore results/carry /work/runs   # on a new machine, before resuming the runs

`pack` walks ROOT for run directories (config.json + checkpoints/); each unfinished one (its metrics end before
the config's total_steps) becomes a `mbrlax pack` copy at the same relative path under DEST (replacing the one
there: about 13-20 MB for Hopper MBPO/PMAC/MEMR), and a finished one's pack is removed. `restore` copies each
pack whose run directory is missing under ROOT back there; `mbrlax resume` (or the experiment's own script,
e.g. benchmarks/hopper30k.sh, benchmarks/rew_table1.py) then continues it: the run whose model buffer was
emptied at the pack's env step (`mbrlax pack --help`). Each line printed says what happened to one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from mbrlax.api import pack
from mbrlax.run.checkpoint import has_checkpoint
from mbrlax.run.metrics import read_metrics


def run_dirs(root: Path) -> list[Path]:
    """The Dyna run directories under root (dam runs have no model buffer to drop: copy those yourself)."""
    found = []
    for cfg in sorted(root.rglob("config.json")):
        run = cfg.parent
        if (run / "checkpoints").is_dir() and json.loads(cfg.read_text()).get("algo") != "dam":
            found.append(run)
    return found


def finished(run: Path) -> bool:
    """Its metrics reach the config's total_steps (benchmarks/hopper30k.sh asks this too)."""
    steps = read_metrics(run).get("env_steps", [])
    return len(steps) > 0 and steps[-1] >= json.loads((run / "config.json").read_text())["total_steps"]


def pack_all(root: Path, dest: Path) -> None:
    for run in run_dirs(root):
        carried = dest / run.relative_to(root)
        if finished(run):
            if carried.exists():
                shutil.rmtree(carried)
                print(f"finished, pack removed: {run}")
            continue
        if not has_checkpoint(run):
            continue
        tmp = carried.with_name(carried.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pack(run, tmp)
        shutil.rmtree(carried, ignore_errors=True)
        tmp.rename(carried)
        size = (carried / "checkpoints" / "ckpt.npz").stat().st_size / 1e6
        print(f"packed: {run} -> {carried} ({size:.1f} MB)")


def restore_all(carry: Path, root: Path) -> None:
    for packed in run_dirs(carry):
        run = root / packed.relative_to(carry)
        if run.exists():
            print(f"kept: {run} exists (its pack {packed} is not used)")
            continue
        run.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(packed, run)
        print(f"restored: {packed} -> {run}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("pack", "restore"))
    ap.add_argument("src", type=Path, help="pack: the runs' root; restore: the packs' root")
    ap.add_argument("dest", type=Path, help="pack: the packs' root; restore: the runs' root")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        sys.exit(f"carry.py: {args.src} is not a directory")
    (pack_all if args.action == "pack" else restore_all)(args.src, args.dest)


if __name__ == "__main__":
    main()
