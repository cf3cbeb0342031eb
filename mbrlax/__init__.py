"""mbrlax: fast model-based reinforcement learning on JAX (MBPO family, DAM)."""

import os

__version__ = "0.1.0"

# Small matmuls (256-wide SAC layers, 200-wide model layers) run faster on one
# Eigen thread per op than split across cores on CPU; set XLA_FLAGS yourself
# to override (see README, "Speed").
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

from mbrlax.api import Policy, Run, load, resume, train  # noqa: E402
from mbrlax.config import TrainConfig, preset  # noqa: E402

__all__ = ["Policy", "Run", "TrainConfig", "load", "preset", "resume", "train"]
