"""Atomic, crash-safe checkpoints of JAX/NumPy pytrees.

A checkpoint is a single ``.npz`` file (uncompressed; `mbrlax pack` deflates its copy) holding every leaf of the
run state (keyed by its ``jax.tree_util.keystr`` path, prefixed with
``state``) plus a JSON header (user ``meta`` and per-leaf dtype / PRNG-key
information) stored as a ``uint8`` array in the same file, so state and meta
can never disagree.

Writes go to a temporary file in the checkpoint directory which is flushed,
fsync'ed and then moved into place with :func:`os.replace`; the previous
checkpoint is kept as ``ckpt.prev.npz``.  A ``kill -9`` at any moment
therefore leaves at least one complete checkpoint on disk, and so does a failed write
(a full disk): it raises CheckpointError and leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CKPT_NAME = "ckpt.npz"
PREV_NAME = "ckpt.prev.npz"
_HEADER = "__checkpoint__"
_TMP_PREFIX = "ckpt-writing-"
_READ_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or incompatible with the target state."""


# --------------------------------------------------------------------------- paths


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Directory holding the checkpoints of ``run_dir``."""
    return Path(run_dir) / "checkpoints"


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (current or previous)."""
    ckpt_dir = checkpoint_dir(run_dir)
    return (ckpt_dir / CKPT_NAME).is_file() or (ckpt_dir / PREV_NAME).is_file()


# --------------------------------------------------------------------------- leaves


def _is_typed_key(leaf: Any) -> bool:
    """Whether ``leaf`` is a typed JAX PRNG key array (``jax.random.key``)."""
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _leaf_name(path: tuple) -> str:
    """Storage name of the leaf at ``path``."""
    return "state" + jax.tree_util.keystr(path)


def _leaf_spec(leaf: Any) -> tuple[tuple[int, ...], str, str | None]:
    """``(shape, dtype name, key impl or None)`` of a leaf as it is stored."""
    if _is_typed_key(leaf):
        data = jax.random.key_data(leaf)
        return tuple(data.shape), str(data.dtype), str(jax.random.key_impl(leaf))
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    return tuple(np.shape(leaf)), str(jnp.dtype(dtype)), None


def _to_numpy(leaf: Any) -> np.ndarray:
    """Host copy of a leaf, with typed keys replaced by their raw key data."""
    if _is_typed_key(leaf):
        leaf = jax.random.key_data(leaf)
    return np.asarray(jax.device_get(leaf))


# --------------------------------------------------------------------------- save


def _fsync_dir(path: Path) -> None:
    """Persist directory entries (renames) where the OS supports it."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(ckpt_dir: Path) -> None:
    """Delete temporary files left behind by an interrupted save."""
    for tmp in ckpt_dir.glob(_TMP_PREFIX + "*"):
        tmp.unlink(missing_ok=True)


def _write_npz_atomically(arrays: dict[str, np.ndarray], ckpt_dir: Path, compress: bool = False) -> Path:
    """Write ``arrays`` to a fsync'ed temp file in ``ckpt_dir`` (deflated if ``compress``); return its path."""
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".npz", dir=ckpt_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name)


def _json_scalar(value: Any) -> Any:
    """NumPy / JAX scalars in ``meta`` as Python numbers."""
    if np.ndim(value) == 0 and hasattr(value, "item"):
        return value.item()
    raise TypeError(f"checkpoint meta value {value!r} of type {type(value).__name__} is not JSON serializable")


def save_checkpoint(run_dir: str | Path, state: Any, meta: dict, compress: bool = False) -> Path:
    """Atomically save ``state`` (a pytree) and JSON-serializable ``meta`` (``compress``: deflated, slower to
    write; loading reads either form).

    Returns the path of the written checkpoint (``run_dir/checkpoints/ckpt.npz``).
    The previous checkpoint, if any, is kept as ``ckpt.prev.npz``.
    """
    ckpt_dir = checkpoint_dir(run_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(ckpt_dir)

    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    arrays, specs = {}, {}
    for path, leaf in leaves:
        name = _leaf_name(path)
        _, dtype, impl = _leaf_spec(leaf)
        arrays[name] = _to_numpy(leaf)
        specs[name] = {"dtype": dtype, "key_impl": impl}
    header = json.dumps({"meta": meta, "leaves": specs}, default=_json_scalar).encode()
    arrays[_HEADER] = np.frombuffer(header, dtype=np.uint8)

    ckpt, prev = ckpt_dir / CKPT_NAME, ckpt_dir / PREV_NAME
    try:
        tmp = _write_npz_atomically(arrays, ckpt_dir, compress)
    except OSError as e:
        full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        kept = f"the previous checkpoint {ckpt} is intact" if ckpt.exists() else "no checkpoint was saved before"
        raise CheckpointError(
            f"could not write a checkpoint in {ckpt_dir}: {e.strerror or e}{full}; {kept}; free space and "
            f"continue with `mbrlax resume {run_dir}`"
        ) from e
    if ckpt.exists():
        os.replace(ckpt, prev)
    os.replace(tmp, ckpt)
    _fsync_dir(ckpt_dir)
    return ckpt


# --------------------------------------------------------------------------- load


def _read_npz(file: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read every array and the header of a checkpoint file (raises on corruption)."""
    with open(file, "rb") as f, np.load(f, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(arrays.pop(_HEADER).tobytes().decode())
    return arrays, header


def _read_with_fallback(ckpt_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read the current checkpoint, falling back (with a warning) to the previous one."""
    ckpt, prev = ckpt_dir / CKPT_NAME, ckpt_dir / PREV_NAME
    if not ckpt.is_file() and not prev.is_file():
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    error = f"checkpoint file {ckpt} is missing"
    if ckpt.is_file():
        try:
            return _read_npz(ckpt)
        except _READ_ERRORS as e:
            error = f"checkpoint file {ckpt} is corrupt or truncated ({type(e).__name__}: {e})"
    if not prev.is_file():
        raise CheckpointError(error)
    try:
        result = _read_npz(prev)
    except _READ_ERRORS as e:
        raise CheckpointError(
            f"{error}; previous checkpoint {prev} is unreadable too ({type(e).__name__}: {e})"
        ) from e
    warnings.warn(f"{error}; falling back to previous checkpoint {prev}", stacklevel=3)
    return result


def _config_error(detail: str) -> CheckpointError:
    """Error for a checkpoint whose leaves do not match the target state."""
    return CheckpointError(f"{detail}; the checkpoint was made with a different config")


def _mismatch(name: str, expected: str, found: str) -> CheckpointError:
    """Error for a leaf whose stored form does not match the target."""
    return _config_error(f"checkpoint leaf {name!r}: expected {expected}, found {found}")


def _describe(shape: tuple, dtype: str, impl: str | None) -> str:
    """Human-readable form of a stored leaf spec."""
    return f"shape {shape} dtype {dtype}" + (f" key<{impl}>" if impl else "")


def _restore_leaf(name: str, target_leaf: Any, arrays: dict, specs: dict) -> Any:
    """Check the stored leaf ``name`` against ``target_leaf`` and convert it back."""
    expected = _leaf_spec(target_leaf)
    if name not in arrays:
        raise _mismatch(name, _describe(*expected), "no such leaf")
    value, spec = arrays[name], specs.get(name, {})
    found = (tuple(value.shape), spec.get("dtype", str(value.dtype)), spec.get("key_impl"))
    if found != expected:
        raise _mismatch(name, _describe(*expected), _describe(*found))
    _, dtype, impl = expected
    if value.dtype != jnp.dtype(dtype):  # e.g. bfloat16, stored as raw void bytes
        value = value.view(jnp.dtype(dtype))
    if impl is not None:
        return jax.random.wrap_key_data(jnp.asarray(value), impl=impl)
    return jnp.asarray(value)


def stored_shape(run_dir: str | Path, name: str) -> tuple[int, ...] | None:
    """The shape of leaf ``name`` (e.g. ``state.imagined.data.reward``) in the run's newest readable
    checkpoint file, reading only that leaf; None if there is none (load_checkpoint then says why)."""
    for file in (checkpoint_dir(run_dir) / CKPT_NAME, checkpoint_dir(run_dir) / PREV_NAME):
        try:
            with open(file, "rb") as f, np.load(f, allow_pickle=False) as npz:
                return tuple(npz[name].shape) if name in npz.files else None
        except _READ_ERRORS:
            continue
    return None


def load_checkpoint(run_dir: str | Path, target: Any) -> tuple[Any, dict]:
    """Load the checkpoint of ``run_dir`` into the structure of ``target``.

    ``target`` is a freshly initialized state of the same config; every leaf must
    be present in the checkpoint with the same shape and dtype.  Returns
    ``(state, meta)`` with leaves as JAX arrays (typed PRNG keys where the target
    has typed keys).  Raises :class:`CheckpointError` if there is no checkpoint,
    if it is unreadable (and no readable previous one exists), or if it does not
    match ``target``.
    """
    arrays, header = _read_with_fallback(checkpoint_dir(run_dir))
    specs = header.get("leaves", {})
    leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
    names = [_leaf_name(path) for path, _ in leaves]
    restored = [
        _restore_leaf(name, leaf, arrays, specs) for name, (_, leaf) in zip(names, leaves)
    ]
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise _config_error(f"checkpoint leaf {extra[0]!r} does not exist in the target state")
    return jax.tree_util.tree_unflatten(treedef, restored), header.get("meta", {})
