"""What a saved DAM planner does on Intersection-v0 when the oncoming car's turn is forced.

    python benchmarks/dam_probe.py RUN_DIR...

For each run: one episode with a left turn and one with a right turn
(``reset(options={"turn_left": ...})``), printing the return and the first 14
actions (0 = brake, 1 = keep speed, 2 = accelerate; the cars meet around step 9).
"""

from __future__ import annotations

import sys
from pathlib import Path

import mbrlax
from mbrlax import envs


def probe(policy, turn_left: bool, seed: int = 0) -> tuple[float, str]:
    env = envs.make("Intersection-v0", seed=seed)
    obs, _ = env.reset(seed=seed, options={"turn_left": turn_left})
    actions, ret, done = [], 0.0, False
    while not done:
        a = int(policy.act(obs))
        obs, r, terminated, truncated, _ = env.step(a)
        actions.append(str(a))
        ret, done = ret + float(r), terminated or truncated
    return ret, "".join(actions[:14])


def main() -> None:
    for run in sys.argv[1:]:
        policy = mbrlax.load(run)
        cells = [f"{side} {ret:.0f} {acts}" for side, left in (("left", True), ("right", False))
                 for ret, acts in [probe(policy, left)]]
        print(f"{Path(run).name}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
