"""Plain-pytree MLPs: a list of {"w", "b"} layers, optionally with a leading
ensemble axis. Kept minimal so the ensemble can be batched by einsum and the
per-layer weight decay of MBPO stays explicit."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Params = list[dict[str, jax.Array]]


def mlp_init(key, sizes: list[int], init: str = "lecun") -> Params:
    """Layers mapping sizes[i] -> sizes[i+1]; zero biases.

    init="lecun": variance-scaling (1/fan_in) uniform, as torch/flax defaults;
    init="truncnorm": truncated normal with std 1/(2 sqrt(fan_in)) (MBPO model).
    """
    layers = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        if init == "truncnorm":
            w = jax.random.truncated_normal(k, -2.0, 2.0, (n_in, n_out)) / (2.0 * jnp.sqrt(n_in))
        else:
            lim = jnp.sqrt(1.0 / n_in)
            w = jax.random.uniform(k, (n_in, n_out), minval=-lim, maxval=lim)
        layers.append({"w": w, "b": jnp.zeros((n_out,))})
    return layers


def mlp_apply(params: Params, x: jax.Array, act=jax.nn.relu) -> jax.Array:
    """Hidden layers with `act`, linear output."""
    for layer in params[:-1]:
        x = act(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def ensemble_init(key, n: int, sizes: list[int], init: str = "lecun") -> Params:
    """n independent MLPs stacked on a leading axis: w [n, in, out], b [n, out]."""
    return jax.vmap(lambda k: mlp_init(k, sizes, init))(jax.random.split(key, n))


def ensemble_apply(params: Params, x: jax.Array, act=jax.nn.relu) -> jax.Array:
    """x [n, batch, in] -> [n, batch, out], member i on batch slice i (one batched matmul per layer)."""
    for layer in params[:-1]:
        x = act(jnp.einsum("nbi,nio->nbo", x, layer["w"]) + layer["b"][:, None])
    return jnp.einsum("nbi,nio->nbo", x, params[-1]["w"]) + params[-1]["b"][:, None]
