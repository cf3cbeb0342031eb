"""How the ensemble's members are split over devices: the one module that knows.

Members are independent except for the few parameters they share (MBPO's
log-variance bounds, an MDN's target standardizer), so model training and the
holdout score run under `shard_map` with the member axis split over a 1-D mesh
of devices: every device trains its own members, and only the gradients of the
shared leaves are summed across devices (one small all-reduce per minibatch).
On a CPU the devices are host devices, one per core (`mbrlax.runtime`); on a
GPU the mesh is the one GPU and the member axis stays on it.

When the ensemble size is not a multiple of the device count, zero members are
appended for the duration of a training: zero parameters, zero sample weights
and zero Adam moments give them zero gradients, so they stay zero, add exactly
0 to the loss, and are dropped again at the end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mbrlax.config import ConfigError

AXIS = "members"
MEMBERS, SHARED = PartitionSpec(AXIS), PartitionSpec()


def usable_cores() -> int:
    """CPU cores this process may run on (respects `taskset`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_device_count(ensemble_size: int, cores: int) -> int:
    """Fewest devices that give the smallest per-device member count: 7 members on 2 cores -> 2
    (4 + 4, one zero member), on 4 or 5 cores -> 4 (2 each), on 7 or more -> 7."""
    per_device = math.ceil(ensemble_size / max(1, min(cores, ensemble_size)))
    return math.ceil(ensemble_size / per_device)


def member_mask(params: dict) -> dict:
    """True for leaves with a leading member axis (everything under params["layers"])."""
    return {k: jax.tree.map(lambda _: k == "layers", v) for k, v in params.items()}


@dataclass(frozen=True)
class MemberSplit:
    """`ensemble_size` members split over `n_devices` devices (the first n of jax.devices())."""

    ensemble_size: int
    n_devices: int = 1

    def __post_init__(self):
        have = len(jax.devices())
        if not 1 <= self.n_devices <= have:
            raise ConfigError(
                f"invalid model.devices={self.n_devices}: JAX has {have} {jax.devices()[0].platform} device(s); "
                f"use 0 (automatic) or at most {have} (on a CPU, more host devices need "
                f"mbrlax.configure(cpu_devices=N) before JAX starts)"
            )

    @classmethod
    def for_config(cls, ensemble_size: int, devices: int = 0) -> "MemberSplit":
        """`devices` = 0: automatic (one per core on a CPU, at most the ensemble size, and no
        more than JAX has; 1 on an accelerator)."""
        if devices == 0:
            have = jax.devices()
            cores = usable_cores() if have[0].platform == "cpu" else 1
            devices = min(auto_device_count(ensemble_size, cores), len(have))
        return cls(ensemble_size, devices)

    @cached_property
    def mesh(self) -> Mesh:
        return Mesh(np.array(jax.devices()[: self.n_devices]), (AXIS,))

    @property
    def padded_size(self) -> int:
        return math.ceil(self.ensemble_size / self.n_devices) * self.n_devices

    # -- padding the member axis and placing the members ---------------------------------
    def _resize(self, tree, mask, size: int):
        def fit(leaf, is_member):
            if not is_member:
                return leaf
            if size <= leaf.shape[0]:
                return leaf[:size]
            return jnp.concatenate([leaf, jnp.zeros((size - leaf.shape[0],) + leaf.shape[1:], leaf.dtype)])

        return jax.tree.map(fit, tree, mask)

    @staticmethod
    def _opt_tree(opt: optax.GradientTransformation, opt_state, params_tree, other):
        """A tree shaped like opt_state: `params_tree` where it holds params copies, `other` elsewhere."""
        return optax.tree_map_params(opt, lambda _, t: t, opt_state, params_tree, transform_non_params=lambda _: other)

    def param_specs(self, params: dict):
        # On one device P("members") == P(); jit returns P(), so placing with P() avoids a retrace.
        split = self.n_devices > 1
        return jax.tree.map(lambda m: MEMBERS if m and split else SHARED, member_mask(params))

    def opt_specs(self, params: dict, opt: optax.GradientTransformation, opt_state):
        return self._opt_tree(opt, opt_state, self.param_specs(params), SHARED)

    def place(self, params: dict, opt: optax.GradientTransformation, opt_state):
        """Params and optimizer state with zero members appended, each member on its device."""
        mask = member_mask(params)
        params = self._resize(params, mask, self.padded_size)
        opt_state = self._resize(opt_state, self._opt_tree(opt, opt_state, mask, False), self.padded_size)
        on_mesh = lambda specs: jax.tree.map(lambda s: NamedSharding(self.mesh, s), specs)
        return (jax.device_put(params, on_mesh(self.param_specs(params))),
                jax.device_put(opt_state, on_mesh(self.opt_specs(params, opt, opt_state))))

    def unplace(self, params: dict, opt: optax.GradientTransformation, opt_state):
        """Inverse of `place`: the real members only, back on the first device with the rest of the run."""
        mask = member_mask(params)
        opt_mask = self._opt_tree(opt, opt_state, mask, False)
        home = jax.devices()[0]
        # Through the host: device_put keeps the mesh in the arrays' types, and every jitted consumer's outputs
        # (rollouts, a strategy's state) would then carry it too and re-trace the next consumer once.
        params = jax.tree.map(np.asarray, self._resize(params, mask, self.ensemble_size))
        return (jax.device_put(params, home),
                jax.device_put(self._resize(opt_state, opt_mask, self.ensemble_size), home))

    def pad_host(self, a: np.ndarray, axis: int, fill) -> np.ndarray:
        """A host array with a member axis (minibatch indices, flags) padded like `place` pads members."""
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, self.padded_size - self.ensemble_size)
        return np.pad(a, pad, constant_values=fill)

    def replicate(self, tree):
        """Copy arrays (the training data) to every device once, before a training."""
        return jax.device_put(tree, NamedSharding(self.mesh, SHARED))

    def over_members(self, fn, in_specs, out_specs):
        """`fn` runs on every device with its own members (shard_map over the member axis)."""
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    @staticmethod
    def sum_shared(grads: dict) -> dict:
        """Inside `over_members`: sum the shared leaves' gradients over devices (members' own stay local)."""
        return {k: v if k == "layers" else jax.lax.psum(v, AXIS) for k, v in grads.items()}

    @staticmethod
    def total(x):
        """Inside `over_members`: the sum over devices of a per-device value."""
        return jax.lax.psum(x, AXIS)
