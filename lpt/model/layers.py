"""Linear maps of the layers: dense (matrix) and convolutional (k×k, same padding, NHWC / HWIO).

Layer kinds of the residual step: ``dense`` and ``conv`` (one linear map K_n per step) and ``conv2`` (two k×k
convolutions per step, TorchBraid's MNIST step).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from lpt.config.choices import LAYER_KINDS as LAYER_KINDS  # defined with the schema
from lpt.model.conv import conv2d

LayerKind = Literal["dense", "conv", "conv2"]
CONV_KINDS: tuple[str, ...] = ("conv", "conv2")
"""Layer kinds whose state is an image (H, W, C) and whose linear maps are convolutions."""


def dense_apply(weight: jnp.ndarray, bias: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """K y + b for a batch: y (B, d_in), weight (d_out, d_in), bias (d_out,) → (B, d_out)."""
    return y @ weight.T + bias


def conv_apply(weight: jnp.ndarray, bias: jnp.ndarray, y: jnp.ndarray, impl: str = "auto",
               layout: str = "NHWC") -> jnp.ndarray:
    """K * y + b, a k×k convolution with same padding, weight (k, k, C_in, C_out): y (B, H, W, C_in) → (B, H, W,
    C_out) in the NHWC layout, (C_in, B, H, W) → (C_out, B, H, W) in the CNHW layout.

    ``impl``: the formulation of :func:`lpt.model.conv.conv2d` (auto | matmul | xla)."""
    out = conv2d(y, weight, impl, layout=layout)
    return out + (bias if layout == "NHWC" else bias[:, None, None, None])


def linear_apply(kind: LayerKind, weight: jnp.ndarray, bias: jnp.ndarray, y: jnp.ndarray,
                 conv_impl: str = "auto", layout: str = "NHWC") -> jnp.ndarray:
    """Apply the dense or convolutional linear map of a layer (``conv2``: one of its convolutions)."""
    return dense_apply(weight, bias, y) if kind == "dense" else conv_apply(weight, bias, y, conv_impl, layout)


def init_weight(key: jax.Array, shape: tuple[int, ...], fan_in: int, scale: float, dtype) -> jnp.ndarray:
    """Normal weights with standard deviation scale/√fan_in."""
    return normal(key, shape, dtype, scale / jnp.sqrt(fan_in))


def normal(key: jax.Array, shape: tuple[int, ...], dtype, factor: Any = 1.0) -> jnp.ndarray:
    """``factor * jax.random.normal(key, shape, dtype)``, bit for bit, from programs shared across shapes.

    Each shape of ``jax.random.normal`` is a program of its own (the counter-based generator, ~0.1 s to compile
    without XLA's optimisations), and a model draws a few shapes, a test session hundreds. With jax's
    partitionable threefry (its default) value i of a draw depends on the key and i alone, so the first n values
    of a draw of 2^k ≥ n values are the draw of n: one program per power of two draws them, and a small one per
    shape takes the first n, reshapes and scales (``tests/test_model.py`` checks the bits against jax's). It draws
    fewer than twice the values it returns, once per model. 96 initialisations of 48 ResNets (depths 4–70, widths
    4–16, dense and conv, float32 and float64) at the tests' compile settings took 6.0 / 6.1 CPU-s against
    12.7 / 12.9 with a program per shape (one core, alternating, load 1.2)."""
    n = math.prod(shape)
    if not jax.config.jax_threefry_partitionable or n == 0:
        return factor * jax.random.normal(key, shape, dtype)
    return _first(_draw(key, 1 << (n - 1).bit_length(), dtype), tuple(shape), factor)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(key: jax.Array, size: int, dtype) -> jnp.ndarray:
    return jax.random.normal(key, (size,), dtype)


@functools.partial(jax.jit, static_argnums=(1,))
def _first(values: jnp.ndarray, shape: tuple[int, ...], factor: Any) -> jnp.ndarray:
    return factor * values[:math.prod(shape)].reshape(shape)
