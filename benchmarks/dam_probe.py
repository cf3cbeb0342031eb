"""What a saved DAM planner does: one episode per case, returns and actions.

    python benchmarks/dam_probe.py RUN_DIR...

Intersection-v0: one episode with a left turn and one with a right turn of the
oncoming car (``reset(options={"turn_left": ...})``), printing each return and the
first 14 actions (0 = brake, 1 = keep speed, 2 = accelerate; the turn shows after
step 9, the first possible collision is at step 10; the exact optimum brakes a
little before the intersection and then reacts: 106 / 118, ``dam_envs.intersection_value``).
IcyRoad-v0: one episode from the start state (env seed 0: the same swerve draws for
every run), its return and its 5 actions (the optimum accelerates once, then cruises: 10).
"""

from __future__ import annotations

import sys
from pathlib import Path

import mbrlax
from mbrlax import envs
from mbrlax.api import load_config

CASES = {"Intersection-v0": {"left": {"turn_left": True}, "right": {"turn_left": False}},
         "IcyRoad-v0": {"start": {}}}


def probe(policy, env_id: str, options: dict, seed: int = 0, shown: int = 14) -> tuple[float, str]:
    """(return, first `shown` actions as a string) of one episode of `policy` on env_id."""
    env = envs.make(env_id, seed=seed)
    obs, _ = env.reset(seed=seed, options=options)
    actions, ret, done = [], 0.0, False
    while not done:
        a = int(policy.act(obs))
        obs, r, terminated, truncated, _ = env.step(a)
        actions.append(str(a))
        ret, done = ret + float(r), terminated or truncated
    return ret, "".join(actions[:shown])


def probe_run(run_dir) -> dict[str, tuple[float, str]]:
    """{case: (return, actions)} for a saved run on one of the DAM envs."""
    env_id = load_config(run_dir).env
    if env_id not in CASES:
        raise ValueError(f"dam_probe knows {sorted(CASES)}, not {env_id!r} (run {run_dir})")
    policy = mbrlax.load(run_dir)
    return {case: probe(policy, env_id, options) for case, options in CASES[env_id].items()}


def main() -> None:
    for run in sys.argv[1:]:
        cells = [f"{case} {ret:.0f} {acts}" for case, (ret, acts) in probe_run(run).items()]
        print(f"{Path(run).name}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
