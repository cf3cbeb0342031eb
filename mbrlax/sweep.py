"""`mbrlax sweep`: a grid of algorithms x envs x seeds x config overrides, each trial an ordinary run, on Ray.

    mbrlax sweep --algo mbpo,sac --env Hopper-v5,Walker2d-v5 --seeds 0-4 --set sac.updates_per_step=10,20 \\
        --total-steps 30000 --out DIR          # again after a crash: finished trials are skipped, the rest resumed
    mbrlax sweep --config sweep.toml            # the same keys in a TOML file (flags given as well win)
    mbrlax sweep --summary DIR --steps 10000,20000 --mean-between 10000,30000

    from mbrlax.sweep import run_sweep
    result = run_sweep("DIR", algo=["mbpo", "sac"], env="Hopper-v5", seeds="0-4",
                       overrides={"sac.updates_per_step": [10, 20], "total_steps": 30000})
    result.failed                                # names of the trials that failed (their errors: result.errors)

How it works:
- Every trial is a run directory DIR/<algo>__<env>__<key>=<value>...__s<seed> (the --set keys with more than one
  value name it), which `mbrlax resume/eval/plot` take as any other. The directories are the state of truth: a
  trial with `sweep_done.json` is finished and skipped, one with a checkpoint is resumed (`mbrlax.resume`), any
  other started anew (`mbrlax.train`, after removing what a run killed before its first checkpoint left). So the
  same command continues a sweep after a crash, kill -9 or reboot. DIR/sweep.json holds the grid; a different grid
  into the same DIR is refused (choose another --out).
- Every trial's config is built (`preset(env, algo)` + overrides) and validated, and every env checked, before
  Ray starts.
- Ray runs one actor ("slot") per concurrent trial: by default one per CPU core of every node (--cpus-per-trial,
  --trials-per-node). A slot runs each trial in a fresh Python process, so JAX starts and is configured in every
  trial as in a CLI run (no worker reuse). Before a trial starts its slot claims free cores of the node by flock'ing
  one file per core in a per-host directory (the OS drops the locks when their holders die, so a killed sweep
  leaves no stale claims), and the trial process pins all its threads to them before JAX starts: trials do not
  fight over cores, and the model's device split (mbrlax/parallel.py) uses as many devices as the trial has cores.
- A trial process dies with its slot (PR_SET_PDEATHSIG: SIGTERM, on which a run checkpoints and stops); one
  of a killed sweep that is still alive for a moment holds its run's lock, so a re-run waits for it (LOCK_WAIT_S).
- The driver polls the trials' metrics.csv for a live table, and at the end writes DIR/summary.csv (mean and
  standard error over seeds per setting, mbrlax/run/summary.py) and DIR/curves_<env>.png (mbrlax/plot.py).
  A trial that fails leaves its traceback in DIR/<trial>/error.txt (its output is in DIR/<trial>/trial.log);
  the others go on.
- Envs registered in the calling process (`mbrlax.envs.register`) are pickled by value (cloudpickle, so lambdas
  and functions of __main__ too) to DIR/registered_envs.pkl, and every trial process registers them again before
  it starts; an import path (`--env my_pkg.my_mod:make_env`) needs nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import types
import typing
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import tyro

from mbrlax.config import ALGOS, ConfigError, TrainConfig, config_from_dict, preset, validate
from mbrlax.parallel import usable_cores
from mbrlax.seeds import parse_seeds

SWEEP_NAME = "sweep.json"
SUMMARY_NAME = "summary.csv"
DONE_NAME = "sweep_done.json"
ERROR_NAME = "error.txt"
LOG_NAME = "trial.log"
ENVS_NAME = "registered_envs.pkl"
LOCK_WAIT_S = 60.0  # how long a trial waits for its run's lock (held by a process of a killed sweep)
STOP_WAIT_S = 60.0  # how long a stopped sweep waits for its trials to checkpoint
REFRESH_S = 1.0  # table refresh interval
RESERVED_KEYS = {"algo": "--algo", "env": "--env", "seed": "--seeds", "out": "--out (the sweep names every run)"}


class SweepError(ConfigError):
    """Bad sweep input, or a sweep directory that does not fit the command; the message says what would be right."""


# --------------------------------------------------------------------------- parsing the grid


def parse_names(value: str | list | tuple, flag: str) -> tuple[str, ...]:
    """`mbpo,sac` or a list -> ('mbpo', 'sac'): non-empty, no repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(v).strip() for v in items)
    if not names or not all(names):
        raise SweepError(f"invalid {flag} {value!r}: give comma-separated names, e.g. {flag} mbpo,sac")
    if len(set(names)) < len(names):
        raise SweepError(f"invalid {flag} {value!r}: a name appears twice")
    return names


def parse_ints(value: str | list | tuple | None, flag: str, count: int | None = None) -> list[int]:
    """`10000,20000` or a list -> [10000, 20000] (exactly `count` of them if given)."""
    if value is None:
        return []
    try:
        items = [int(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        items = None
    if items is None or (count is not None and len(items) != count):
        example = "10000,30000" if count == 2 else "10000,20000"
        raise SweepError(f"invalid {flag} {value!r}: expected {count or 'comma-separated'} env steps, e.g. "
                         f"{flag} {example}")
    return items


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # Annotated[...] stripped: tyro's aliases do not matter here


def all_keys(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Every settable config key: `total_steps`, `sac.updates_per_step`, ..."""
    keys = []
    for name, tp in _hints(cls).items():
        keys += all_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [prefix + name]
    return keys


def field_type(key: str) -> Any:
    """The type of config key `key` (`sac.updates_per_step` -> int); SweepError naming close keys."""
    if key in RESERVED_KEYS:
        raise SweepError(f"invalid --set {key}=...: {key} is set with {RESERVED_KEYS[key]}")
    cls, parts = TrainConfig, key.split(".")
    for i, part in enumerate(parts):
        tp = _hints(cls).get(part)
        if tp is None or (i < len(parts) - 1 and not dataclasses.is_dataclass(tp)):
            close = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise SweepError(f"invalid --set {key}=...: TrainConfig has no field {key!r} (keys look like "
                             f"total_steps or sac.updates_per_step, as `mbrlax train --help` lists them).{hint}")
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                raise SweepError(f"invalid --set {key}=...: {key} is a group of settings; set one of its fields, "
                                 f"e.g. {key}.{next(iter(_hints(tp)))}")
            cls = tp
    return tp


def _is_tuple(tp) -> bool:
    return typing.get_origin(tp) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(tp))


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        n = "several" if args[-1] is Ellipsis else str(len(args))
        return f"a bracketed list of {n} values, each {_describe(args[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _parse_scalar(text: str, tp: type):
    """Command-line text of a bool (true/false), int (also 1e5) or float; KeyError / ValueError if it is none."""
    if tp is bool:
        return {"true": True, "false": False}[text.lower()]
    try:
        return tp(text)
    except ValueError:
        number = float(text)
        if tp is int and number.is_integer():
            return int(number)
        raise


def convert(key: str, value: Any, tp: Any) -> Any:
    """`value` (text as on the command line, or a Python / TOML value) as a value of config type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = SweepError(f"invalid --set {key}={value!r}: expected {_describe(tp)}")
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or str(value).lower() in ("none", "null")):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(key, value, arg)
            except SweepError:
                pass
        raise bad
    if origin is Literal:
        if value not in args:
            raise bad
        return value
    if origin is tuple:
        items = re.split(r"[\s,]+", value.strip().strip("[]()").strip()) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad
        item_types = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(items):
            raise bad
        return tuple(convert(key, v, t) for v, t in zip(items, item_types))
    if isinstance(value, str) and tp in (bool, int, float):
        try:
            value = _parse_scalar(value.strip(), tp)
        except (KeyError, ValueError):
            raise bad from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value) is not tp:
        raise bad
    return value


def _split_text(text: str, tuple_field: bool) -> list[str]:
    """Command-line values `10,20`; a tuple field's `[1,3,1,3],[1,5,1,5]` (without brackets: one value)."""
    if not tuple_field:
        return text.split(",")
    groups = re.findall(r"\[[^\]]*\]", text)
    return groups if groups and ",".join(groups) == re.sub(r"\]\s*,\s*\[", "],[", text) else [text]


def axis_values(key: str, values: Any) -> tuple:
    """The values of one grid axis: `10,20` (command-line text; a tuple field's values in brackets:
    `[1,3,1,3],[1,5,1,5]`, or one value without them), a list of values, or one value. For a tuple field a list
    of plain values is one value."""
    tp = field_type(key)
    listed = isinstance(values, (list, tuple))
    if isinstance(values, str):
        items = _split_text(values.strip(), _is_tuple(tp))
    elif listed and not (_is_tuple(tp) and not any(isinstance(v, (list, tuple)) for v in values)):
        items = list(values)  # several values (for a tuple field: a list of lists)
    else:
        items = [values]
    if not items:
        raise SweepError(f"invalid --set {key}: give at least one value, e.g. --set {key}=V1,V2")
    return tuple(convert(key, v, tp) for v in items)


def parse_set(flag: str) -> tuple[str, tuple]:
    """`--set sac.updates_per_step=10,20` -> ('sac.updates_per_step', (10, 20)); dashes in keys are underscores."""
    key, sep, values = flag.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise SweepError(f"invalid --set {flag!r}: expected KEY=V1,V2,..., e.g. --set sac.updates_per_step=10,20")
    key = key.strip().replace("-", "_")
    return key, axis_values(key, values)


def _flat(table: dict, prefix: str = "") -> dict:
    """A TOML [set] table, dotted keys or nested tables, as {"sac.updates_per_step": values}."""
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k.replace("-", "_")] = v
    return out


# --------------------------------------------------------------------------- the grid and its trials


def _name_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(_name_value, value))
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def safe_name(text: str) -> str:
    """`text` as a file name: anything but letters, digits and `.,=+-_` becomes `-`."""
    return re.sub(r"[^\w.,=+-]+", "-", text)


@dataclass(frozen=True)
class Trial:
    """One run of the grid; `setting` is its name without the seed (the runs averaged in summary.csv)."""

    name: str
    setting: str
    algo: str
    env: str
    seed: int
    overrides: tuple[tuple[str, Any], ...]

    def config(self) -> TrainConfig:
        cfg = preset(self.env, self.algo, seed=self.seed)
        for key, value in self.overrides:
            cfg = _replace_path(cfg, key.split("."), value)
        return cfg

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "overrides": dict(self.overrides)}

    @classmethod
    def from_json(cls, d: dict) -> "Trial":
        return cls(**{**d, "overrides": tuple(d["overrides"].items())})


def _replace_path(obj, parts: list[str], value):
    if len(parts) == 1:
        return replace(obj, **{parts[0]: value})
    return replace(obj, **{parts[0]: _replace_path(getattr(obj, parts[0]), parts[1:], value)})


@dataclass(frozen=True)
class Grid:
    """algos x envs x (one axis per overridden key) x seeds; `axes`: (config key, its values)."""

    algos: tuple[str, ...]
    envs: tuple[str, ...]
    seeds: tuple[int, ...]
    axes: tuple[tuple[str, tuple], ...] = ()

    def to_json(self) -> dict:
        """JSON form (tuples as lists), as sweep.json stores it."""
        return json.loads(json.dumps({"algo": self.algos, "env": self.envs, "seeds": self.seeds,
                                      "set": {k: list(v) for k, v in self.axes}}))

    def trials(self) -> list[Trial]:
        varying = [k for k, v in self.axes if len(v) > 1]
        trials = []
        for algo, env, *values, seed in itertools.product(self.algos, self.envs, *(v for _, v in self.axes),
                                                           self.seeds):
            overrides = tuple(zip((k for k, _ in self.axes), values))
            setting = "__".join([algo, env, *(f"{k}={_name_value(v)}" for k, v in overrides if k in varying)])
            setting = safe_name(setting)
            trials.append(Trial(f"{setting}__s{seed}", setting, algo, env, seed, overrides))
        names = [t.name for t in trials]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SweepError(f"two trials of the grid would share the run directory {twice[0]!r} (names keep only "
                             "letters, digits and .,=+-_); give values that differ in those characters")
        return trials


def make_grid(algo, env, seeds=0, overrides: dict[str, Any] | None = None) -> Grid:
    """A checked Grid from flags or Python values (see `axis_values` for the override values)."""
    algos = parse_names(algo, "--algo")
    unknown = [a for a in algos if a not in ALGOS]
    if unknown:
        raise SweepError(f"invalid --algo {unknown[0]!r}: must be one of {', '.join(ALGOS)}")
    keys = {k: k.replace("-", "_") for k in overrides or {}}
    axes = tuple(sorted((key, axis_values(key, overrides[k])) for k, key in keys.items()))  # sorted: the same
    # flags in another order name the same trials
    return Grid(algos, parse_names(env, "--env"), parse_seeds(seeds), axes)


def trial_configs(trials: list[Trial]) -> dict[str, TrainConfig]:
    """Every trial's validated config, every env checked once (`mbrlax.api.prepare_env`): SweepError naming
    the trial."""
    from mbrlax.api import prepare_env
    from mbrlax.envs import UnknownEnvError

    configs, checked = {}, set()
    for t in trials:
        cfg = t.config()
        env_key = (cfg.env, cfg.termination, cfg.reward, cfg.algo == "dam")
        try:
            if env_key not in checked:
                prepare_env(cfg)
                checked.add(env_key)
            validate(cfg)
        except (ConfigError, UnknownEnvError) as e:
            raise SweepError(f"trial {t.name}: {e}") from e
        configs[t.name] = cfg
    return configs


# --------------------------------------------------------------------------- the sweep directory


def ship_registered_envs(out: Path, env_ids: set[str]) -> None:
    """DIR/registered_envs.pkl: the specs of the sweep's envs registered in this process, for the trial processes
    (removed when there are none)."""
    from ray import cloudpickle

    from mbrlax.envs import registered_spec

    specs = {i: spec for i in sorted(env_ids) if (spec := registered_spec(i)) is not None}
    path = out / ENVS_NAME
    if not specs:
        path.unlink(missing_ok=True)
        return
    try:
        data = cloudpickle.dumps(specs)
    except Exception as e:  # noqa: BLE001 -- whatever the user's functions hold that cannot be pickled
        raise SweepError(f"the registered env(s) {', '.join(specs)} cannot be sent to the trial processes ({e}); "
                         "register functions that cloudpickle can pickle, or give --env as an import path "
                         "(my_pkg.my_mod:make_env)") from e
    _write_atomically(path, data)


def register_shipped_envs(out: Path) -> None:
    """In a trial process: register the envs the sweep's driver shipped (`ship_registered_envs`)."""
    import pickle

    from mbrlax.envs import register

    path = out / ENVS_NAME
    if path.is_file():
        for spec in pickle.loads(path.read_bytes()).values():
            register(spec.id, spec.make_fn, spec.termination, spec.reward)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file beside `path`, then rename it over `path` (readers see the old or the new file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    _write_atomically(path, json.dumps(data, indent=2).encode())


def read_sweep(out: str | Path) -> dict:
    """DIR/sweep.json: {"grid": ..., "trials": [...]}."""
    path = Path(out) / SWEEP_NAME
    if not path.is_file():
        raise SweepError(f"{out} is not a sweep directory: no {SWEEP_NAME} (`mbrlax sweep ... --out {out}` writes it)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise SweepError(f"{path} is corrupt ({e}); run the sweep again into a new --out") from e


def claim_dir(out: Path, grid: Grid, trials: list[Trial]) -> None:
    """Write DIR/sweep.json, or check that the one there holds the same grid."""
    out.mkdir(parents=True, exist_ok=True)
    want = grid.to_json()
    if (out / SWEEP_NAME).is_file():
        have = read_sweep(out).get("grid")
        if json.dumps(have, sort_keys=True) != json.dumps(want, sort_keys=True):
            there = {k: json.dumps((have or {}).get(k), sort_keys=True) for k in want}
            diff = "; ".join(f"{k}: {there[k]} there, {json.dumps(want[k], sort_keys=True)} now"
                             for k in want if there[k] != json.dumps(want[k], sort_keys=True))
            raise SweepError(f"{out} holds a sweep with another grid ({diff}); re-run it with its own flags "
                             f"(see {out / SWEEP_NAME}) to continue it, or give a new --out for this grid")
        return
    _write_json(out / SWEEP_NAME, {"grid": want, "trials": [t.to_json() for t in trials]})


def is_done(run_dir: Path) -> bool:
    return (run_dir / DONE_NAME).is_file()


def error_line(run_dir: Path) -> str:
    """The last line of a trial's error.txt (its exception), '' if none."""
    path = run_dir / ERROR_NAME
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- a trial, in its own process


def pin_to_cores(cores: set[int]) -> None:
    """Every thread of this process onto `cores`; threads started later (JAX's) inherit it."""
    tasks = Path("/proc/self/task")
    for tid in (int(t) for t in os.listdir(tasks)) if tasks.is_dir() else [0]:
        try:
            os.sched_setaffinity(tid, cores)
        except ProcessLookupError:  # a thread that just ended
            pass


def _die_with_parent(parent: int) -> None:
    """SIGTERM (checkpoint and stop) when the slot that started this process dies (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _clear_unstarted(run_dir: Path) -> None:
    """What a run killed before its first checkpoint left: its rows are redone, so `train` may start there."""
    for name in ("metrics.csv", "config.json"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("tb", "checkpoints"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _start_or_resume(run_dir: Path, cfg: TrainConfig):
    import mbrlax
    from mbrlax.run import has_checkpoint, run_lock

    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):  # RunLockedError while a process of a killed sweep still writes the run
        pass
    if has_checkpoint(run_dir):
        return mbrlax.resume(run_dir)
    _clear_unstarted(run_dir)
    return mbrlax.train(replace(cfg, out=str(run_dir)))


def run_trial(run_dir: Path, cfg: TrainConfig, lock_wait_s: float = LOCK_WAIT_S):
    """Train or resume the trial's run (see the module doc), waiting up to `lock_wait_s` for its lock."""
    from mbrlax.run import RunLockedError

    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            return _start_or_resume(run_dir, cfg)
        except RunLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _trial_main(argv: list[str]) -> None:
    """Entry of a trial process: RUN_DIR CORES PARENT_PID CONFIG_JSON. Exit status 0: done; 1: failed (traceback
    in error.txt); 128 + signal: stopped by that signal after a checkpoint."""
    run_dir, cores, parent, cfg_json = Path(argv[0]), {int(c) for c in argv[1].split(",")}, int(argv[2]), argv[3]
    _die_with_parent(parent)
    pin_to_cores(cores)  # before JAX starts (mbrlax.train / resume configure it)
    from mbrlax.run import RunStopped

    (run_dir / ERROR_NAME).unlink(missing_ok=True)
    print(f"mbrlax sweep: trial {run_dir.name} on core(s) {sorted(cores)} of {socket.gethostname()}", flush=True)
    try:
        register_shipped_envs(run_dir.parent)
        run = run_trial(run_dir, config_from_dict(json.loads(cfg_json)))
    except (RunStopped, KeyboardInterrupt) as e:
        print(f"mbrlax sweep: trial stopped: {e}", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))
    except Exception:  # noqa: BLE001 -- every failure of a trial is reported the same way
        (run_dir / ERROR_NAME).write_text(traceback.format_exc())
        traceback.print_exc()
        sys.exit(1)
    import jax

    m = run.metrics
    done = {"env_steps": int(m["env_steps"][-1]), "eval_return": float(m["eval_return"][-1]),
            "cores": sorted(cores), "jax_devices": len(jax.devices()), "host": socket.gethostname()}
    _write_json(run_dir / DONE_NAME, done)
    print(f"mbrlax sweep: trial done: {done}", flush=True)


# --------------------------------------------------------------------------- slots (Ray actors)


def core_lock_dir() -> Path:
    """The per-host directory of the per-core lock files (node-local /tmp)."""
    return Path(tempfile.gettempdir()) / f"mbrlax-cores-{socket.gethostname()}-{os.getuid()}"


def claim_cores(n: int, lock_dir: Path | None = None, poll_s: float = 1.0) -> list[tuple[int, int]]:
    """`n` cores of this process's affinity that no other trial holds, as (core, locked fd); waits until there
    are (all or none, so two claims never hold each other's cores)."""
    import fcntl

    lock_dir = lock_dir or core_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    if n > len(cores):
        raise SweepError(f"--cpus-per-trial {n}: this node has only {len(cores)} usable cores")
    while True:
        held = []
        for core in cores:
            fd = os.open(lock_dir / f"core{core}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((core, fd))
            if len(held) == n:
                return held
        for _, fd in held:
            os.close(fd)
        time.sleep(poll_s * random.uniform(0.5, 1.5))


TRIAL_ENTRY = "import sys; from mbrlax.sweep import _trial_main; _trial_main(sys.argv[1:])"


class TrialSlot:
    """Ray actor running one trial at a time, each in its own process pinned to cores claimed for it."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._stopping = False

    def run(self, run_dir: str, cfg_json: str, cpus: int, cwd: str) -> int:
        """The trial process's exit status (see `_trial_main`); error.txt says why it died of a signal."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        held = claim_cores(cpus)
        try:
            if self._stopping:
                return 128 + signal.SIGTERM
            cores = ",".join(str(c) for c, _ in held)
            cmd = [sys.executable, "-c", TRIAL_ENTRY, str(run_dir), cores, str(os.getpid()), cfg_json]
            with open(run_dir / LOG_NAME, "a") as log:
                # The trial keeps its cores' locks (pass_fds) while it lives, even if this slot dies first.
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              cwd=cwd if os.path.isdir(cwd) else None, pass_fds=[fd for _, fd in held])
                rc = self._proc.wait()
        finally:
            for _, fd in held:
                os.close(fd)
        if rc < 0:
            why = " (out of memory?)" if rc == -signal.SIGKILL else ""
            (run_dir / ERROR_NAME).write_text(f"the trial process was killed by {signal.Signals(-rc).name}{why}; "
                                              f"its output is in {run_dir / LOG_NAME}\n")
        return rc

    def stop(self) -> None:
        """SIGTERM the running trial (it checkpoints and exits); a trial not started yet does not start."""
        self._stopping = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()


def _slot_nodes(ray, n_trials: int, cpus_per_trial: int, trials_per_node: int | None) -> list[str]:
    """Node id of every slot: up to `trials_per_node` (default: as many as fit) per alive node, spread
    round-robin, no more than there are trials."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = {n["NodeID"]: int(n["Resources"].get("CPU", 0)) // cpus_per_trial for n in nodes}
    per_node = {node: min(fit, trials_per_node or fit) for node, fit in fits.items()}
    if not any(per_node.values()):
        raise SweepError(f"no Ray node has {cpus_per_trial} CPUs for a trial (--cpus-per-trial)")
    spread = [node for i in range(max(per_node.values())) for node, k in per_node.items() if i < k]
    return spread[:n_trials]


def _make_slots(ray, n_trials: int, cpus_per_trial: int, trials_per_node: int | None) -> list:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(TrialSlot)
    return [actor.options(num_cpus=cpus_per_trial, max_concurrency=2,  # run + stop
                          scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            for node in _slot_nodes(ray, n_trials, cpus_per_trial, trials_per_node)]


@contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[Any]:
    """Ray for the sweep: a local instance of `num_cpus` CPUs, or the cluster at `address`; shut down at the end
    (also on errors and Ctrl-C). A Ray already initialized in this process is used and left running."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    quiet = dict(log_to_driver=False, configure_logging=False)  # trial output goes to DIR/<trial>/trial.log
    with warnings.catch_warnings():  # JAX's warning about fork: Ray forks only to exec its processes
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM to the driver (in the main thread) stops the sweep as Ctrl-C does, the running trials checkpoint;
    then RunStopped (the CLI's exit status: 128 + SIGTERM)."""
    import threading

    from mbrlax.run import RunStopped

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received = []

    def stop(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt  # the exception Ray's waits let through

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except KeyboardInterrupt:
        if received:
            raise RunStopped("stopped by SIGTERM (the running trials checkpointed); the same command continues "
                             "the sweep", received[0]) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- the live table


class TrialTable:
    """Trial states (queued, running, done, failed, stopped) with env steps and the last eval return from each
    trial's metrics.csv: a rich live table on terminals, a line per state change elsewhere."""

    ORDER = ("running", "failed", "stopped", "queued", "done")
    STYLE = {"running": "cyan", "failed": "red", "stopped": "yellow", "queued": "dim", "done": "green"}

    def __init__(self, out: Path, trials: list[Trial], totals: dict[str, int], live: bool | None = None):
        from rich.console import Console

        self.out, self.trials, self.totals = out, trials, totals
        self.states = {t.name: "done" if is_done(out / t.name) else "queued" for t in trials}
        self.notes: dict[str, str] = {}
        self._cache: dict[str, tuple[float, tuple]] = {}
        self.console = Console()
        self.live = sys.stdout.isatty() if live is None else live
        self._live = None

    def set(self, name: str, state: str, note: str = "") -> None:
        self.states[name], self.notes[name] = state, note
        if not self.live:
            steps, ret = self.progress(name)
            detail = f"env steps {steps}/{self.totals[name]}, eval return {ret}"
            print(f"mbrlax sweep: {name}: {state} ({detail}){': ' + note if note else ''}", flush=True)

    def progress(self, name: str) -> tuple[str, str]:
        """Last env steps and eval return of a trial's metrics.csv as text ('-' before its first row)."""
        from mbrlax.run.metrics import read_metrics

        path = self.out / name / "metrics.csv"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return "-", "-"
        if self._cache.get(name, (None,))[0] != mtime:
            try:
                m = read_metrics(path)
                last = (f"{int(m['env_steps'][-1])}", f"{m['eval_return'][-1]:.1f}") if len(m["env_steps"]) else None
            except (OSError, ValueError, KeyError):  # being written, or not a metrics file: try again next time
                last = None
            self._cache[name] = (mtime, last or ("-", "-"))
        return self._cache[name][1]

    def counts(self) -> str:
        n = {state: sum(s == state for s in self.states.values()) for state in self.ORDER}
        return ", ".join(f"{k} {state}" for state, k in n.items() if k)

    def render(self):
        from rich.table import Table

        table = Table(title=f"mbrlax sweep {self.out}: {self.counts()}", title_justify="left")
        for col in ("trial", "state", "env steps", "eval return", "note"):
            table.add_column(col, justify="right" if col in ("env steps", "eval return") else "left",
                             overflow="fold")
        for t in sorted(self.trials, key=lambda t: self.ORDER.index(self.states[t.name])):
            state = self.states[t.name]
            steps, ret = self.progress(t.name)
            table.add_row(t.name, f"[{self.STYLE[state]}]{state}[/]", f"{steps}/{self.totals[t.name]}", ret,
                          self.notes.get(t.name, ""))
        return table

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)

    def __enter__(self) -> "TrialTable":
        if self.live:
            from rich.live import Live

            self._live = Live(self.render(), console=self.console, auto_refresh=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        else:
            self.console.print(self.render())


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class SweepResult:
    """What a sweep ended with: every trial's state (done or failed) and the failed ones' errors."""

    out: Path
    states: dict[str, str]
    errors: dict[str, str]
    summary: list[Path]

    @property
    def failed(self) -> list[str]:
        return [name for name, state in self.states.items() if state != "done"]


def _outcome(ray, ref, run_dir: Path, stopping: bool) -> tuple[str, str, bool]:
    """(state, note, whether the slot lives on) of a finished slot call."""
    try:
        rc = ray.get(ref)
    except ray.exceptions.RayError as e:  # the slot raised, or its process or node died
        alive = not isinstance(e, ray.exceptions.RayActorError)
        note = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}; re-run the sweep to resume it"
        return ("stopped" if stopping else "failed"), note, alive
    if rc == 0:
        return "done", "", True
    if rc > 128 and not (run_dir / ERROR_NAME).is_file():
        note = f"stopped by {signal.Signals(rc - 128).name} after a checkpoint; re-run the sweep to resume it"
    else:
        note = error_line(run_dir) or f"exit status {rc}; see {run_dir / LOG_NAME}"
    return ("stopped" if stopping else "failed"), note, True


def _run_trials(ray, out: Path, trials: list[Trial], configs: dict[str, TrainConfig], table: TrialTable,
                cpus_per_trial: int, trials_per_node: int | None) -> None:
    """Run the trials on slots, updating `table`; on Ctrl-C / SIGTERM the running trials checkpoint first."""
    queue = deque(trials)
    slots = _make_slots(ray, len(queue), cpus_per_trial, trials_per_node)
    idle, running = list(slots), {}
    try:
        while queue or running:
            while idle and queue:
                slot, trial = idle.pop(0), queue.popleft()
                ref = slot.run.remote(str(out / trial.name), configs[trial.name].to_json(), cpus_per_trial, os.getcwd())
                running[ref] = (slot, trial)
                table.set(trial.name, "running")
            ready, _ = ray.wait(list(running), num_returns=1, timeout=REFRESH_S)
            for ref in ready:
                slot, trial = running.pop(ref)
                state, note, alive = _outcome(ray, ref, out / trial.name, stopping=False)
                table.set(trial.name, state, note)
                if alive:
                    idle.append(slot)
            if queue and not idle and not running:
                raise SweepError("every Ray worker of the sweep died; re-run the same command to continue")
            table.refresh()
    except BaseException:  # Ctrl-C, SIGTERM, errors: let the running trials checkpoint, then Ray goes down
        _stop_trials(ray, out, slots, running, table)
        raise


def _stop_trials(ray, out: Path, slots: list, running: dict, table: TrialTable) -> None:
    """SIGTERM every running trial and wait (up to STOP_WAIT_S) for them to checkpoint and exit."""
    try:
        for slot in slots:
            slot.stop.remote()
        done = ray.wait(list(running), num_returns=len(running), timeout=STOP_WAIT_S)[0] if running else []
    except Exception:  # noqa: BLE001 -- Ray itself is gone: its shutdown ends the trials
        return
    for ref in done:
        trial = running[ref][1]
        table.set(trial.name, *_outcome(ray, ref, out / trial.name, stopping=True)[:2])


def run_sweep(out: str | Path, algo: str | list[str] = "mbpo", env: str | list[str] = "InvertedPendulum-v5",
              seeds: str | int | list[int] = 0, overrides: dict[str, Any] | None = None, *,
              cpus_per_trial: int = 1, trials_per_node: int | None = None, address: str | None = None,
              steps: list[int] | None = None, mean_between: tuple[int, int] | None = None,
              live: bool | None = None) -> SweepResult:
    """Run (or continue) the sweep of `algo` x `env` x `seeds` x `overrides` into `out`; see the module doc.

    algo, env: a name, comma-separated names or a list. seeds: `0-4`, `0,2,5`, an int or a list.
    overrides: {config key: values}, each one grid axis; values: a list, one value, or text as on the command line
    (`"10,20"`; a tuple field's values in brackets: `"[1,3,1,3],[1,5,1,5]"`); for a tuple field a list of plain
    values is one value. cpus_per_trial: cores each trial is pinned to; trials_per_node: concurrent trials per Ray
    node (default: its CPUs // cpus_per_trial). address: an existing Ray cluster (default: a local one; a Ray
    already initialized in this process is used). steps, mean_between: summary.csv's columns (`summarize_sweep`).
    live: the rich live table (default: on a terminal).

    All input is checked and every trial's config validated before Ray starts (SweepError). Returns the trials'
    states and errors; `result.failed` lists the trials that did not finish.
    """
    out = Path(out)
    grid = make_grid(algo, env, seeds, overrides)
    if cpus_per_trial < 1 or (trials_per_node is not None and trials_per_node < 1):
        raise SweepError(f"invalid --cpus-per-trial {cpus_per_trial} / --trials-per-node {trials_per_node}: "
                         "both must be >= 1")
    window = tuple(parse_ints(mean_between, "--mean-between", 2)) if mean_between is not None else None
    steps = parse_ints(steps, "--steps")
    trials = grid.trials()
    configs = trial_configs(trials)
    cores = usable_cores()
    if not address and (trials_per_node or 1) * cpus_per_trial > cores:
        raise SweepError(f"--trials-per-node {trials_per_node or 1} x --cpus-per-trial {cpus_per_trial} needs "
                         f"{(trials_per_node or 1) * cpus_per_trial} cores; this machine has {cores} usable")
    claim_dir(out, grid, trials)
    ship_registered_envs(out, {cfg.env for cfg in configs.values()})
    table = TrialTable(out, trials, {t.name: configs[t.name].total_steps for t in trials}, live)
    pending = [t for t in trials if table.states[t.name] != "done"]  # finished trials are skipped
    with table:
        if pending:
            with ray_session(address, cores) as ray, _stop_on_sigterm():
                _run_trials(ray, out, pending, configs, table, cpus_per_trial, trials_per_node)
    errors = {name: table.notes.get(name, "") for name, s in table.states.items() if s != "done"}
    written = summarize_sweep(out, steps, window) if any(_evaluated_metrics(out / t.name) is not None for t in trials) else []
    return SweepResult(out, dict(table.states), errors, written)


# --------------------------------------------------------------------------- summary.csv and curves


def _evaluated_metrics(run_dir: Path) -> dict | None:
    """The trial's metrics if it has logged an evaluation, else None."""
    from mbrlax.run.metrics import read_metrics

    try:
        m = read_metrics(run_dir)
    except (FileNotFoundError, ValueError):
        return None
    return m if len(m.get("env_steps", [])) > 0 and "eval_return" in m else None


def summarize_sweep(out: str | Path, steps: list[int] | None = None,
                    mean_between: tuple[int, int] | None = None) -> list[Path]:
    """Write DIR/summary.csv and DIR/curves_<env>.png from the trials that have metrics; returns their paths.

    summary.csv: one row per setting (algo, env, overrides): `setting, algo, env, <override keys>, seeds,
    last_steps`, then for each value its mean over seeds, standard error (`_se`, nan for one seed) and seed count
    (`_n`): `eval_<step>` for each of `steps` (default: the trials' total_steps), `window_mean` (the mean of the
    evals at steps A..B of `mean_between`, for seeds that reached B), `agent_updates`, `s_per_1k_<phase>` (wall
    seconds per 1000 env steps). The curves show mean +- std over seeds of every setting of an env, over the steps
    all its seeds reached."""
    from mbrlax.plot import plot_runs
    from mbrlax.run.summary import group_rows, run_values, write_csv

    out = Path(out)
    trials = list(map(Trial.from_json, read_sweep(out)["trials"]))
    metrics = {t.name: m for t in trials if (m := _evaluated_metrics(out / t.name)) is not None}
    trials = [t for t in trials if t.name in metrics]
    if not trials:
        raise SweepError(f"no trial in {out} has logged an evaluation yet: nothing to summarize")
    window = tuple(mean_between) if mean_between else None
    steps = list(steps or sorted({json.loads((out / t.name / "config.json").read_text())["total_steps"]
                                  for t in trials}))
    groups: dict[str, list[dict]] = {}
    for t in trials:
        groups.setdefault(t.setting, []).append(run_values(metrics[t.name], steps, window))
    first = {t.setting: t for t in reversed(trials)}
    rows = [{"setting": row["setting"], "algo": first[row["setting"]].algo, "env": first[row["setting"]].env,
             **{k: _name_value(v) for k, v in first[row["setting"]].overrides}, **row}
            for row in group_rows(groups, steps, window, label="setting")]
    written = [write_csv(rows, out / SUMMARY_NAME)]
    for env in dict.fromkeys(t.env for t in trials):
        runs = [out / t.name for t in trials if t.env == env]
        written.append(plot_runs(runs, out / f"curves_{safe_name(env)}.png"))
    return written


# --------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class SweepArgs:
    algo: str | None = None
    """Algorithms, comma-separated (e.g. mbpo,sac; default mbpo)."""
    env: str | None = None
    """Environments, comma-separated (e.g. Hopper-v5,Walker2d-v5; default InvertedPendulum-v5)."""
    seeds: str | None = None
    """Seeds: a range 0-4 or a list 0,2,5 (default 0)."""
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """KEY=V1,V2,...: one grid axis of a config field (as `mbrlax train` names them, e.g. sac.updates_per_step=10,20);
    repeat for more axes; a tuple field's values in brackets: rollout.schedule=[20,150,1,15],[20,150,1,5]."""
    total_steps: int | None = None
    """Env steps of every trial (the same as --set total_steps=N)."""
    out: str | None = None
    """Sweep directory (required): one run directory per trial, sweep.json, summary.csv, curves_<env>.png.
    The same command again continues the sweep."""
    config: str | None = None
    """A TOML file with these keys (algo, env, seeds, a [set] table, total_steps, out, ...); flags win."""
    cpus_per_trial: int | None = None
    """Cores each trial is pinned to (default 1)."""
    trials_per_node: int | None = None
    """Concurrent trials per machine (default: its CPU cores // cpus-per-trial)."""
    address: str | None = None
    """Address of an existing Ray cluster (default: a local Ray on this machine's cores)."""
    steps: str | None = None
    """summary.csv: the eval returns at these env steps, comma-separated (default: the trials' total steps)."""
    mean_between: str | None = None
    """summary.csv: also the mean of the evals at env steps A..B, given as A,B."""
    summary: str | None = None
    """Only write summary.csv and the curves of the sweep in this directory (with --steps, --mean-between)."""


TOML_KEYS = ("algo", "env", "seeds", "set", "total_steps", "out", "cpus_per_trial", "trials_per_node", "address",
             "steps", "mean_between")


def load_toml(path: str | Path) -> dict:
    """A sweep's TOML file as keyword arguments of the command (SweepError for unknown keys or bad TOML)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SweepError(f"invalid --config {path}: {e}") from e
    unknown = [k for k in data if k not in TOML_KEYS]
    if unknown:
        raise SweepError(f"invalid --config {path}: unknown key {unknown[0]!r}; keys: {', '.join(TOML_KEYS)}")
    if "set" in data and not isinstance(data["set"], dict):
        raise SweepError(f"invalid --config {path}: set must be a table, e.g. [set] then "
                         '"sac.updates_per_step" = [10, 20]')
    return {**data, "set": _flat(data.get("set", {}))}


def sweep_options(args: SweepArgs) -> dict:
    """The command's options: the TOML file's, then the flags given (a --set replaces the file's axis of its key)."""
    opts = load_toml(args.config) if args.config else {"set": {}}
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)
             if f.name not in ("set", "config", "summary") and getattr(args, f.name) is not None}
    overrides = {**opts.pop("set"), **dict(parse_set(s) for s in args.set)}
    opts.update(flags)
    if "total_steps" in opts:
        overrides["total_steps"] = opts.pop("total_steps")
    return {**opts, "overrides": overrides}


def main(argv: list[str]) -> int:
    """`mbrlax sweep ...`; the exit status: 0 when every trial finished, 1 otherwise."""
    args = tyro.cli(SweepArgs, args=argv, prog="mbrlax sweep")
    if args.summary:
        window = parse_ints(args.mean_between, "--mean-between", 2) if args.mean_between else None
        for path in summarize_sweep(args.summary, parse_ints(args.steps, "--steps"), window):
            print(f"wrote {path}")
        return 0
    opts = sweep_options(args)
    if not opts.get("out"):
        raise SweepError("mbrlax sweep needs --out DIR (or out = \"DIR\" in --config): the same command with the "
                         "same DIR continues the sweep")
    try:
        result = run_sweep(opts.pop("out"), **{k: v for k, v in opts.items() if v is not None})
    except KeyboardInterrupt:
        print("mbrlax sweep: stopped (the running trials checkpointed); the same command continues the sweep",
              file=sys.stderr)
        raise
    for path in result.summary:
        print(f"wrote {path}")
    for name in result.failed:
        print(f"mbrlax sweep: {name} {result.states[name]}: {result.errors[name]} "
              f"(see {result.out / name / ERROR_NAME})", file=sys.stderr)
    return 1 if result.failed else 0
