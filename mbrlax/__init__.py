"""mbrlax: fast model-based reinforcement learning on JAX (MBPO family, DAM).

Importing mbrlax sets nothing: CPU threading is chosen where a run starts
(`mbrlax.configure`, called by the CLI, `mbrlax.train` and `mbrlax.resume`).
"""

__version__ = "0.1.0"

from mbrlax.api import Policy, Run, load, pack, resume, train, train_seeds  # noqa: E402
from mbrlax.config import TrainConfig, preset  # noqa: E402
from mbrlax.runtime import configure  # noqa: E402

__all__ = ["Policy", "Run", "TrainConfig", "configure", "load", "pack", "preset", "resume", "train", "train_seeds"]
