"""CPU threading, chosen explicitly where a run starts (`mbrlax` CLI, `mbrlax.train`, `mbrlax.resume`).

Two settings, both fixed once JAX has started its backend:
- one Eigen thread per op (`--xla_cpu_multi_thread_eigen=false` in XLA_FLAGS): the
  200- and 256-wide matmuls of the model and SAC run faster unsplit on a CPU;
- `cpu_devices` host devices (`jax_num_cpu_devices`), over which model training splits
  the ensemble's members (mbrlax/parallel.py); by default one per usable core, at most
  the ensemble size.

Importing mbrlax changes nothing. A program that uses JAX before starting a run
should call `mbrlax.configure()` right after `import jax`; if the backend is
already running with other settings, `configure` warns and the run uses what is
there (results are the same, only the speed differs).
"""

from __future__ import annotations

import os
import warnings

import jax

from mbrlax.parallel import auto_device_count, usable_cores

EIGEN_FLAG = "--xla_cpu_multi_thread_eigen=false"


def _backend_started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def configure(cpu_devices: int | None = None, ensemble_size: int = 7) -> int:
    """Set up JAX's CPU threading for mbrlax before JAX starts; returns the devices JAX has.

    cpu_devices: host devices to create (None or 0: automatic, see `auto_device_count`).
    The user's own XLA_FLAGS setting of `xla_cpu_multi_thread_eigen` is kept.
    """
    want = cpu_devices or auto_device_count(ensemble_size, usable_cores())
    if _backend_started():
        have = jax.devices()
        flags = os.environ.get("XLA_FLAGS", "")
        if have[0].platform == "cpu" and (len(have) < want or "xla_cpu_multi_thread_eigen" not in flags):
            warnings.warn(
                f"mbrlax: JAX started before mbrlax could set its CPU threading ({len(have)} CPU device(s), "
                f"{want} wanted; XLA_FLAGS={flags!r}). Runs are correct but may be slower: call "
                f"mbrlax.configure() right after `import jax`, before any JAX operation.",
                stacklevel=2,
            )
        return len(have)
    if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {EIGEN_FLAG}".strip()
    jax.config.update("jax_num_cpu_devices", max(want, 1))
    return len(jax.devices())
