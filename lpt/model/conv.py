"""2-D convolutions (NHWC states, HWIO kernels) that are fast serially *and* vmapped over layers (DESIGN §9).

The MGRIT relaxation applies the steps of all intervals at once (``vmap`` over intervals, each with its own
kernel). ``lax.conv_general_dilated`` vmapped over its kernel becomes a *grouped* convolution, which XLA runs
two orders of magnitude slower on CPU than the same mathematics as matrix products; and inside a
``lax.scan`` its weight gradient is several times slower than outside one. So lpt has two formulations:

- ``xla``: ``lax.conv_general_dilated`` and its own derivatives (the reference);
- ``matmul``: im2col — the k·k shifted windows of the padded input side by side, (B, H', W', k·k·C_in),
  times the kernel as a (k·k·C_in, C_out) matrix, one ``dot_general`` (a *batched* one under ``vmap``), with
  a custom VJP that stores only (y, K): ∂y is the convolution of the cotangent with the flipped, transposed
  kernel (stride 1; the transpose of the window extraction otherwise) and ∂K = colsᵀ · cotangent.

``auto`` resolves per platform to the formulation measured faster there (:data:`AUTO_CONV_IMPL`;
``scripts/bench_layers.py`` measures both).
"""

from __future__ import annotations

from functools import partial
from typing import Literal, Sequence

import jax
import jax.numpy as jnp

ConvImpl = Literal["auto", "matmul", "xla"]
CONV_IMPLS: tuple[str, ...] = ("auto", "matmul", "xla")

AUTO_CONV_IMPL: dict[str, str] = {"cpu": "matmul", "gpu": "matmul", "cuda": "matmul", "rocm": "matmul",
                                  "tpu": "matmul"}
"""``conv_impl=auto`` per JAX platform. CPU: measured (``scripts/bench_layers.py``: the vmapped XLA
convolution is ~100× slower than im2col, and XLA's weight gradient inside ``lax.scan`` ~4× slower). GPU/TPU:
not measured here (no accelerator); matmul avoids the grouped convolution there too."""

Padding = str | Sequence[tuple[int, int]]


def resolve_conv_impl(impl: str, platform: str | None = None) -> str:
    """``auto`` → the formulation for ``platform`` (default: JAX's default back-end); others unchanged."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r} is not valid; choose one of {', '.join(CONV_IMPLS)}")
    if impl != "auto":
        return impl
    return AUTO_CONV_IMPL.get(platform or jax.default_backend(), "matmul")


def _pads(size: int, k: int, stride: int, padding: Padding, axis: int) -> tuple[int, int]:
    """(low, high) padding of one spatial axis, XLA's convention for "SAME" (extra padding at the end)."""
    if isinstance(padding, str):
        if padding == "VALID":
            return 0, 0
        if padding != "SAME":
            raise ValueError(f"padding={padding!r} is not valid; choose SAME, VALID or ((lo, hi), (lo, hi))")
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return total // 2, total - total // 2
    return tuple(padding[axis])  # type: ignore[return-value]


def _geometry(y_shape, k_shape, strides, padding):
    (kh, kw), (sh, sw) = k_shape[:2], strides
    pads = (_pads(y_shape[1], kh, sh, padding, 0), _pads(y_shape[2], kw, sw, padding, 1))
    ho = (y_shape[1] + sum(pads[0]) - kh) // sh + 1
    wo = (y_shape[2] + sum(pads[1]) - kw) // sw + 1
    return pads, ho, wo


def patches(y: jnp.ndarray, k_shape: tuple[int, int], strides: tuple[int, int], pads, ho: int, wo: int) -> jnp.ndarray:
    """im2col: (B, H, W, C) → (B, H', W', kh·kw·C), window offsets (i, j) outer and channels inner, the
    order of an HWIO kernel reshaped to (kh·kw·C_in, C_out)."""
    (kh, kw), (sh, sw) = k_shape, strides
    yp = jnp.pad(y, ((0, 0), pads[0], pads[1], (0, 0)))
    windows = [yp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :] for i in range(kh) for j in range(kw)]
    return windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)


def _matmul_conv(y, w, strides, pads, ho, wo):
    cols = patches(y, w.shape[:2], strides, pads, ho, wo)
    return jnp.dot(cols, w.reshape(-1, w.shape[-1]))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_matmul(y: jnp.ndarray, w: jnp.ndarray, strides: tuple[int, int], padding) -> jnp.ndarray:
    pads, ho, wo = _geometry(y.shape, w.shape, strides, padding)
    return _matmul_conv(y, w, strides, pads, ho, wo)


def _conv_matmul_fwd(y, w, strides, padding):
    return _conv_matmul(y, w, strides, padding), (y, w)


def _conv_matmul_bwd(strides, padding, res, g):
    y, w = res
    kh, kw, c_in, c_out = w.shape
    pads, ho, wo = _geometry(y.shape, w.shape, strides, padding)
    cols = patches(y, (kh, kw), strides, pads, ho, wo)
    # ∂K = colsᵀ g, contracted over batch and output pixels: (kh·kw·C_in, C_out)
    dw = jax.lax.dot_general(cols, g, (((0, 1, 2), (0, 1, 2)), ((), ()))).reshape(w.shape)
    if strides == (1, 1) and all(p[0] <= k - 1 and p[1] <= k - 1 for p, k in zip(pads, (kh, kw))):
        # ∂y = g ⋆ flip(K)ᵀ: a stride-1 convolution with the padding (k−1−lo, k−1−hi)
        w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)
        tpads = tuple((k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(pads, (kh, kw)))
        dy = _matmul_conv(g, w_t, (1, 1), tpads, y.shape[1], y.shape[2])  # ho + Σtpads − kh + 1 = H
    else:  # the transpose of the window extraction (col2im)
        dcols = jnp.dot(g, w.reshape(-1, c_out).T)
        _, back = jax.vjp(lambda z: patches(z, (kh, kw), strides, pads, ho, wo), y)
        (dy,) = back(dcols)
    return dy, dw


_conv_matmul.defvjp(_conv_matmul_fwd, _conv_matmul_bwd)


def conv2d(y: jnp.ndarray, w: jnp.ndarray, impl: str = "matmul", strides: tuple[int, int] = (1, 1),
           padding: Padding = "SAME") -> jnp.ndarray:
    """K ⋆ y: y (B, H, W, C_in), w (kh, kw, C_in, C_out) → (B, H', W', C_out), no bias.

    Args:
        impl: "matmul" (im2col, custom VJP), "xla" (``lax.conv_general_dilated``) or "auto".
        strides: (s_h, s_w).
        padding: "SAME" (XLA's convention), "VALID" or ((lo, hi), (lo, hi)).
    """
    impl = resolve_conv_impl(impl)
    strides = tuple(int(s) for s in strides)
    if impl == "xla":
        return jax.lax.conv_general_dilated(y, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if not isinstance(padding, str):
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    return _conv_matmul(y, w, strides, padding)
