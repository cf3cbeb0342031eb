"""Command line: `mbrlax {train,resume,eval,plot,bench}`.

`mbrlax train` takes every TrainConfig field as a flag (`--total-steps`,
`--sac.updates-per-step`, ...); defaults come from the paper preset of the
chosen `--env` and `--algo`. With no arguments it trains MBPO on
InvertedPendulum-v5.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

USAGE = """usage: mbrlax {train,resume,eval,plot,bench} [--help]

  train    train an agent (default: MBPO on InvertedPendulum-v5)
  resume   continue a stopped or killed run from its last checkpoint
  eval     evaluate the saved policy of a run
  plot     learning curves of one or more runs (mean and spread over seeds)
  bench    seconds per 1000 env steps at MBPO's settings, split by phase
"""


@dataclass(frozen=True)
class ResumeArgs:
    run_dir: tyro.conf.Positional[str]
    """Run directory to continue."""


@dataclass(frozen=True)
class EvalArgs:
    run_dir: tyro.conf.Positional[str]
    """Run directory whose last checkpoint is evaluated."""
    episodes: int = 10
    """Evaluation episodes."""
    seed: int = 0
    """Seed of the evaluation env."""


@dataclass(frozen=True)
class PlotArgs:
    run_dirs: tyro.conf.Positional[tuple[str, ...]]
    """Run directories (runs with equal configs but for the seed are averaged)."""
    output: Annotated[str, tyro.conf.arg(aliases=("-o",))] = "curves.png"
    """Output PNG."""
    x: str = "env_steps"
    """metrics.csv column on the x axis."""
    y: str = "eval_return"
    """metrics.csv column on the y axis."""


def _flag_value(argv: list[str], name: str, default: str) -> str:
    """Value of `--name X` or `--name=X` in argv (before tyro parses it)."""
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return default


def cmd_train(argv: list[str]) -> None:
    import mbrlax
    from mbrlax.config import ALGOS, TrainConfig, preset

    env = _flag_value(argv, "env", TrainConfig.env)
    algo = _flag_value(argv, "algo", TrainConfig.algo)
    algo = algo if algo in ALGOS else TrainConfig.algo  # tyro reports the bad value
    cfg = tyro.cli(TrainConfig, default=preset(env, algo), args=argv, prog="mbrlax train")
    run = mbrlax.train(cfg)
    _print_summary(run)


def cmd_resume(argv: list[str]) -> None:
    import mbrlax

    args = tyro.cli(ResumeArgs, args=argv, prog="mbrlax resume")
    _print_summary(mbrlax.resume(args.run_dir))


def cmd_eval(argv: list[str]) -> None:
    import mbrlax

    args = tyro.cli(EvalArgs, args=argv, prog="mbrlax eval")
    mean, std = mbrlax.load(args.run_dir).evaluate(args.episodes, args.seed)
    print(f"eval_return {mean:.2f} +- {std:.2f} over {args.episodes} episodes")


def cmd_plot(argv: list[str]) -> None:
    from mbrlax.plot import plot_runs

    args = tyro.cli(PlotArgs, args=argv, prog="mbrlax plot")
    print(f"wrote {plot_runs(list(args.run_dirs), args.output, x=args.x, y=args.y)}")


def cmd_bench(argv: list[str]) -> None:
    from mbrlax.bench import BenchArgs, bench

    bench(tyro.cli(BenchArgs, args=argv, prog="mbrlax bench"))


def _print_summary(run) -> None:
    m = run.metrics
    print(f"done: {run.run_dir}  env_steps={int(m['env_steps'][-1])}  eval_return={m['eval_return'][-1]:.1f}")


COMMANDS = {"train": cmd_train, "resume": cmd_resume, "eval": cmd_eval, "plot": cmd_plot, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> None:
    from mbrlax.algos.dyna import NonFiniteError
    from mbrlax.config import ConfigError
    from mbrlax.envs import UnknownEnvError
    from mbrlax.run.checkpoint import CheckpointError

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
    except (ConfigError, UnknownEnvError, CheckpointError, NonFiniteError) as e:
        print(f"mbrlax {name}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
