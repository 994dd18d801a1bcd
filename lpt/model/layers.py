"""Linear maps of the layers: dense (matrix) and convolutional (k×k, same padding, NHWC / HWIO).

Layer kinds of the residual step: ``dense`` and ``conv`` (one linear map K_n per step) and ``conv2`` (two k×k
convolutions per step, TorchBraid's MNIST step).
"""

from __future__ import annotations

from typing import Literal

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
    return (scale / jnp.sqrt(fan_in)) * jax.random.normal(key, shape, dtype)
