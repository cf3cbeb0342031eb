"""Command line: `mbrlax {train,resume,pack,eval,diagnose,plot,bench,sweep}`.

`mbrlax train` takes every TrainConfig field as a flag (`--total-steps`,
`--sac.updates-per-step`, ...); defaults come from the paper preset of the
chosen `--env` and `--algo`. With no arguments it trains MBPO on
InvertedPendulum-v5. `--seeds 0-3` (or `0,1,2,3`) trains those seeds in one
process, vmapped, into OUT/seed_S. Your own env: `--env my_pkg.my_mod:make_env [--termination
my_pkg.my_mod:is_done] [--reward my_pkg.my_mod:reward]`.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

USAGE = """usage: mbrlax {train,resume,pack,eval,diagnose,plot,bench,sweep} [--help]

  train    train an agent (default: MBPO on InvertedPendulum-v5); --seeds 0-3: several seeds in one process
  resume   continue a stopped or killed run (or all seeds of a --seeds run) from its last checkpoint
  pack     a small copy of a run to carry to another machine (model buffer dropped, deflated); resume it there
  eval     evaluate the saved policy of a run (--video out.mp4 records it)
  diagnose the saved model's errors and calibration on held-out real data (PNG and CSV)
  plot     learning curves of one or more runs (mean and spread over seeds)
  bench    seconds per 1000 env steps at MBPO's settings, split by phase
  sweep    a grid of algos x envs x seeds x --set overrides on Ray (again: continues it), summary.csv
"""


# Positional arguments named in --help by what they are (tyro's default names them by type: STR).
RunDir = Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]


@dataclass(frozen=True)
class ResumeArgs:
    run_dir: RunDir
    """Run directory to continue."""


@dataclass(frozen=True)
class PackArgs:
    run_dir: RunDir
    """Run directory to pack (it may still be running)."""
    dest: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DEST")]
    """New directory for the copy: config.json, metrics.csv, a deflated checkpoint without the model buffer."""


@dataclass(frozen=True)
class EvalArgs:
    run_dir: RunDir
    """Run directory whose last checkpoint is evaluated."""
    episodes: int = 10
    """Evaluation episodes."""
    seed: int = 0
    """Seed of the evaluation env."""
    video: str | None = None
    """Render the episodes offscreen into this .mp4 or .gif file (MUJOCO_GL: egl or osmesa)."""
    video_size: tuple[int, int] | None = None
    """Video frame width and height (default: the env's, 480 x 480 for MuJoCo envs)."""


@dataclass(frozen=True)
class DiagnoseArgs:
    run_dir: RunDir
    """Run directory whose saved model is diagnosed (mbpo, pmac or memr)."""
    output: Annotated[str | None, tyro.conf.arg(aliases=("-o",), metavar="PNG")] = None
    """Output PNG (default: RUN_DIR/diagnose.png)."""
    csv: Annotated[str | None, tyro.conf.arg(metavar="CSV")] = None
    """Output CSV (default: RUN_DIR/diagnose.csv)."""
    horizon: int = 10
    """Longest open-loop horizon of the h-step error curve."""


@dataclass(frozen=True)
class PlotArgs:
    run_dirs: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR [RUN_DIR ...]")]
    """Run directories (runs with equal configs but for the seed are averaged)."""
    output: Annotated[str, tyro.conf.arg(aliases=("-o",), metavar="PNG")] = "curves.png"
    """Output PNG."""
    x: str = "env_steps"
    """metrics.csv column on the x axis."""
    y: str = "eval_return"
    """metrics.csv column on the y axis."""


def _flag_value(argv: list[str], name: str, default: str | None) -> str | None:
    """Value of `--name X` or `--name=X` in argv (before tyro parses it)."""
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return default


def _without_flag(argv: list[str], name: str) -> list[str]:
    """argv without `--name X` / `--name=X`."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == f"--{name}":
            skip = i + 1 < len(argv)
        elif not arg.startswith(f"--{name}="):
            out.append(arg)
    return out


def cmd_train(argv: list[str]) -> None:
    import mbrlax
    from mbrlax.config import ALGOS, TrainConfig, preset

    env = _flag_value(argv, "env", TrainConfig.env)
    algo = _flag_value(argv, "algo", TrainConfig.algo)
    algo = algo if algo in ALGOS else TrainConfig.algo  # tyro reports the bad value
    seeds = _flag_value(argv, "seeds", None)  # not a TrainConfig field: one config per seed
    argv = _without_flag(argv, "seeds")
    cfg = tyro.cli(TrainConfig, default=preset(env, algo), args=argv, prog="mbrlax train",
                   description="A training run. Also --seeds 0-3 (or 0,1,2,3): those seeds in one process, "
                               "vmapped, into OUT/seed_S (not for dam).")
    _print_summary(mbrlax.train(cfg) if seeds is None else mbrlax.train_seeds(cfg, seeds))


def cmd_resume(argv: list[str]) -> None:
    import mbrlax

    args = tyro.cli(ResumeArgs, args=argv, prog="mbrlax resume")
    _print_summary(mbrlax.resume(args.run_dir))


def cmd_pack(argv: list[str]) -> None:
    import os

    from mbrlax.api import pack

    args = tyro.cli(PackArgs, args=argv, prog="mbrlax pack",
                    description="Copy a run's config, metrics and newest checkpoint without the model buffer, "
                                "deflated; `mbrlax resume DEST` continues it (the model buffer refilled by the "
                                "next rollouts).")
    ckpt = pack(args.run_dir, args.dest) / "checkpoints" / "ckpt.npz"
    print(f"packed {args.run_dir} into {args.dest} ({os.path.getsize(ckpt) / 1e6:.1f} MB checkpoint)")


def cmd_eval(argv: list[str]) -> None:
    import mbrlax

    args = tyro.cli(EvalArgs, args=argv, prog="mbrlax eval")
    mean, std = mbrlax.load(args.run_dir).evaluate(args.episodes, args.seed, args.video, args.video_size)
    print(f"eval_return {mean:.2f} +- {std:.2f} over {args.episodes} episodes")


def cmd_diagnose(argv: list[str]) -> None:
    import numpy as np

    from mbrlax.diagnose import GAUSSIAN_WITHIN, diagnose_run

    args = tyro.cli(DiagnoseArgs, args=argv, prog="mbrlax diagnose")
    r = diagnose_run(args.run_dir, args.output, args.csv, args.horizon)
    h = r["hstep_mse"]
    print(f"held-out: {r['end'] - r['start']} real transitions (env steps {r['start']}-{r['end'] - 1}), "
          "collected after the model's last training")
    print(f"one-step MSE: reward {r['mse'][0]:.3g}, next_obs mean {r['mse'][1:].mean():.3g}, "
          f"worst next_obs[{int(np.argmax(r['mse'][1:]))}] {r['mse'][1:].max():.3g}")
    print("h-step MSE: " + ", ".join(f"h={i + 1} {v:.3g}" for i, v in enumerate(h) if i + 1 in (1, 5, len(h))))
    print(f"within 1 / 2 predicted std: {r['within_1std'].mean():.3f} / {r['within_2std'].mean():.3f} "
          f"(a calibrated Gaussian: {GAUSSIAN_WITHIN[1]} / {GAUSSIAN_WITHIN[2]})")
    print(f"wrote {r['png']} and {r['csv']}")


def cmd_plot(argv: list[str]) -> None:
    from mbrlax.plot import plot_runs

    args = tyro.cli(PlotArgs, args=argv, prog="mbrlax plot")
    try:
        print(f"wrote {plot_runs(list(args.run_dirs), args.output, x=args.x, y=args.y)}")
    except ValueError as e:  # a path that is not a run directory, a missing column: say so, no traceback
        print(f"mbrlax plot: {e}", file=sys.stderr)
        sys.exit(2)


def cmd_bench(argv: list[str]) -> None:
    from mbrlax.bench import BenchArgs, bench

    bench(tyro.cli(BenchArgs, args=argv, prog="mbrlax bench"))


def cmd_sweep(argv: list[str]) -> None:
    from mbrlax.sweep import main as sweep

    status = sweep(argv)
    if status:  # a trial failed
        sys.exit(status)


def _print_summary(runs) -> None:
    for run in runs if isinstance(runs, list) else [runs]:
        m = run.metrics
        print(f"done: {run.run_dir}  env_steps={int(m['env_steps'][-1])}  eval_return={m['eval_return'][-1]:.1f}")


COMMANDS = {"train": cmd_train, "resume": cmd_resume, "pack": cmd_pack, "eval": cmd_eval, "diagnose": cmd_diagnose,
            "plot": cmd_plot, "bench": cmd_bench, "sweep": cmd_sweep}


def main(argv: list[str] | None = None) -> None:
    from mbrlax.algos.dyna import NonFiniteError
    from mbrlax.config import ConfigError
    from mbrlax.envs import UnknownEnvError
    from mbrlax.run import CheckpointError, MetricsError, RunLockedError, RunStopped

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    name, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("train", argv)
    if name not in COMMANDS:
        print(f"mbrlax: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    if name not in ("train", "resume"):  # those two configure from the run's config
        from mbrlax.runtime import configure

        configure()
    try:
        COMMANDS[name](rest)
    except RunStopped as e:
        print(f"mbrlax {name}: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # before the loop's handler is installed, or a second Ctrl-C
        print(f"mbrlax {name}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except (ConfigError, UnknownEnvError, CheckpointError, MetricsError, RunLockedError, NonFiniteError) as e:
        print(f"mbrlax {name}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
