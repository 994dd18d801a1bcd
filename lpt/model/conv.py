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

States are NHWC (B, H, W, C) or CNHW (C, B, H, W): channels first, then the batch (``model.conv_layout``,
:func:`resolve_conv_layout`). In CNHW the im2col windows are pieces of whole image rows and the product is
one (C_out, k·k·C_in) × (k·k·C_in, B·H'·W') matrix product; with few channels NHWC copies pieces of only C
floats, and building the columns costs more than the product (``scripts/profile_gradient.py``: 62 % of a
layer-parallel conv2 gradient with 8 channels in NHWC, 35 % in CNHW).
"""

from __future__ import annotations

from functools import partial
from typing import Literal, Sequence

import jax
import jax.numpy as jnp

from lpt.config.choices import CONV_IMPLS as CONV_IMPLS, CONV_LAYOUTS as CONV_LAYOUTS  # defined with the schema

ConvImpl = Literal["auto", "matmul", "xla"]

AUTO_CONV_IMPL: dict[str, str] = {"cpu": "matmul", "gpu": "matmul", "cuda": "matmul", "rocm": "matmul",
                                  "tpu": "matmul"}
"""``conv_impl=auto`` per JAX platform. CPU: measured (``scripts/bench_layers.py``: the vmapped XLA
convolution is ~100× slower than im2col, and XLA's weight gradient inside ``lax.scan`` ~4× slower). GPU/TPU:
not measured here (no accelerator); matmul avoids the grouped convolution there too."""

Padding = str | Sequence[tuple[int, int]]

CNHW_MAX_CHANNELS = 8
"""``conv_layout=auto`` on CPU: states with at most this many channels are stored CNHW (channels first), wider
ones NHWC. Measured single-threaded (``scripts/bench_layers.py``, fwd+bwd per layer step): with 4 and 8
channels CNHW makes serial steps 1.2–1.4× and the relaxation 1.1–1.5× faster; with 16 channels the serial
step is faster but the relaxation slower in CNHW. Accelerators: NHWC (not measured here)."""


def resolve_conv_layout(layout: str, channels: int, platform: str | None = None) -> str:
    """``auto`` → the state layout for ``channels``-channel states on ``platform``; others unchanged."""
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"conv_layout={layout!r} is not valid; choose one of {', '.join(CONV_LAYOUTS)}")
    if layout != "auto":
        return layout
    cpu = (platform or jax.default_backend()) == "cpu"
    return "CNHW" if cpu and channels <= CNHW_MAX_CHANNELS else "NHWC"


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


LAYOUTS: tuple[str, ...] = CONV_LAYOUTS[1:]
SPATIAL = {"NHWC": (1, 2), "CNHW": (2, 3)}
"""The spatial axes (H, W) of a state in each layout; the channel axis is the last (NHWC) or first (CNHW)."""


def _geometry(y_shape, k_shape, strides, padding, layout: str = "NHWC"):
    (kh, kw), (sh, sw) = k_shape[:2], strides
    ah, aw = SPATIAL[layout]
    pads = (_pads(y_shape[ah], kh, sh, padding, 0), _pads(y_shape[aw], kw, sw, padding, 1))
    ho = (y_shape[ah] + sum(pads[0]) - kh) // sh + 1
    wo = (y_shape[aw] + sum(pads[1]) - kw) // sw + 1
    return pads, ho, wo


def patches(y: jnp.ndarray, k_shape: tuple[int, int], strides: tuple[int, int], pads, ho: int, wo: int,
            layout: str = "NHWC") -> jnp.ndarray:
    """im2col: the kh·kw shifted windows side by side along the channel axis, window offsets (i, j) outer and
    channels inner (the order of an HWIO kernel reshaped to (kh·kw·C_in, C_out)).
    NHWC: (B, H, W, C) → (B, H', W', kh·kw·C); CNHW: (C, B, H, W) → (kh·kw·C, B, H', W')."""
    (kh, kw), (sh, sw) = k_shape, strides
    ah, aw = SPATIAL[layout]
    pad = [(0, 0)] * 4
    pad[ah], pad[aw] = pads
    yp = jnp.pad(y, pad)

    def window(i, j):
        index = [slice(None)] * 4
        index[ah] = slice(i, i + (ho - 1) * sh + 1, sh)
        index[aw] = slice(j, j + (wo - 1) * sw + 1, sw)
        return yp[tuple(index)]

    windows = [window(i, j) for i in range(kh) for j in range(kw)]
    return windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1 if layout == "NHWC" else 0)


def _times_kernel(cols: jnp.ndarray, w2: jnp.ndarray, layout: str) -> jnp.ndarray:
    """im2col columns times the kernel as a (kh·kw·C_in, C_out) matrix, in the layout of the columns."""
    if layout == "NHWC":
        return jnp.dot(cols, w2)
    return jax.lax.dot_general(w2, cols, (((0,), (0,)), ((), ())))  # (C_out, B, H', W')


def _matmul_conv(y, w, strides, pads, ho, wo, layout="NHWC"):
    cols = patches(y, w.shape[:2], strides, pads, ho, wo, layout)
    return _times_kernel(cols, w.reshape(-1, w.shape[-1]), layout)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_matmul(y: jnp.ndarray, w: jnp.ndarray, strides: tuple[int, int], padding, layout: str) -> jnp.ndarray:
    pads, ho, wo = _geometry(y.shape, w.shape, strides, padding, layout)
    return _matmul_conv(y, w, strides, pads, ho, wo, layout)


def _conv_matmul_fwd(y, w, strides, padding, layout):
    return _conv_matmul(y, w, strides, padding, layout), (y, w)


def _conv_matmul_bwd(strides, padding, layout, res, g):
    y, w = res
    kh, kw, c_in, c_out = w.shape
    pads, ho, wo = _geometry(y.shape, w.shape, strides, padding, layout)
    cols = patches(y, (kh, kw), strides, pads, ho, wo, layout)
    # ∂K = colsᵀ g, contracted over batch and output pixels: (kh·kw·C_in, C_out)
    pixels = (0, 1, 2) if layout == "NHWC" else (1, 2, 3)
    dw = jax.lax.dot_general(cols, g, ((pixels, pixels), ((), ()))).reshape(w.shape)
    if strides == (1, 1) and all(p[0] <= k - 1 and p[1] <= k - 1 for p, k in zip(pads, (kh, kw))):
        # ∂y = g ⋆ flip(K)ᵀ: a stride-1 convolution with the padding (k−1−lo, k−1−hi)
        w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)
        tpads = tuple((k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(pads, (kh, kw)))
        ah, aw = SPATIAL[layout]
        dy = _matmul_conv(g, w_t, (1, 1), tpads, y.shape[ah], y.shape[aw], layout)  # ho + Σtpads − kh + 1 = H
    else:  # the transpose of the window extraction (col2im)
        dcols = _times_kernel(g, w.reshape(-1, c_out).T, layout)
        _, back = jax.vjp(lambda z: patches(z, (kh, kw), strides, pads, ho, wo, layout), y)
        (dy,) = back(dcols)
    return dy, dw


_conv_matmul.defvjp(_conv_matmul_fwd, _conv_matmul_bwd)


def conv2d(y: jnp.ndarray, w: jnp.ndarray, impl: str = "matmul", strides: tuple[int, int] = (1, 1),
           padding: Padding = "SAME", layout: str = "NHWC") -> jnp.ndarray:
    """K ⋆ y: w (kh, kw, C_in, C_out); y (B, H, W, C_in) → (B, H', W', C_out) in the NHWC layout, y (C_in, B,
    H, W) → (C_out, B, H', W') in the CNHW layout; no bias.

    Args:
        impl: "matmul" (im2col, custom VJP), "xla" (``lax.conv_general_dilated``) or "auto".
        strides: (s_h, s_w).
        padding: "SAME" (XLA's convention), "VALID" or ((lo, hi), (lo, hi)).
        layout: "NHWC" or "CNHW" (channels first, then the batch: the im2col windows are whole image rows).
    """
    impl = resolve_conv_impl(impl)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not valid; choose one of {', '.join(LAYOUTS)}")
    strides = tuple(int(s) for s in strides)
    if impl == "xla":
        return jax.lax.conv_general_dilated(y, w, strides, padding, dimension_numbers=(layout, "HWIO", layout))
    if not isinstance(padding, str):
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    return _conv_matmul(y, w, strides, padding, layout)
