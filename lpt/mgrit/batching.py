"""How many intervals one vectorised call of a step handles (DESIGN §9).

The relaxation applies the step of every interval "at once". On a GPU that is one ``vmap`` over all
intervals: wide kernels fill the device. On a CPU the cores are few and the stacked states of all intervals
(n_c × state) leave the caches: a conv step vmapped over 128 intervals costs ~5× its serial cost per step
(``scripts/bench_layers.py``), while the same steps taken a few intervals at a time (``lax.map`` with a
batch size, the batch ``vmap``-ed) run at the serial speed. ``solver.interval_batch`` sets the batch:

- ``auto``: all intervals on accelerators and for flat (dense) states; on CPU, image states (conv layers)
  in batches whose states fit :data:`CPU_BATCH_BYTES` (``scripts/bench_layers.py``, relaxation / serial per
  layer step, 64 intervals: conv2, 8 channels, 32×32, batch 10: 3.1 with one vmap, 1.16 one interval at a
  time; dense width 8, batch 5000: 1.2–1.55 with one vmap; before the F-relaxation stopped stacking and
  slicing its outputs, 4.0 with one vmap and 5.3 in batches of 3 — so dense stays one vmap);
- ``0``: all intervals (one ``vmap``);
- ``k ≥ 1``: k intervals per vectorised call.

The result is the same for every batch (only the order of independent work changes).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

CPU_BATCH_BYTES = 512 * 1024
"""State bytes of one vectorised batch on CPU under ``auto`` (about an L2 cache)."""


def resolve_batch(spec: int | str, n: int, state_bytes: int, platform: str | None = None,
                  image: bool = True) -> int:
    """Intervals per vectorised call for ``n`` intervals whose states have ``state_bytes`` each; ``image``:
    whether the states are images (conv layers), whose steps expand them k²-fold (im2col)."""
    if spec == "auto":
        if (platform or jax.default_backend()) != "cpu" or not image:
            return n
        return max(1, min(n, CPU_BATCH_BYTES // max(state_bytes, 1)))
    return n if spec == 0 else min(int(spec), n)


def over_intervals(fn: Callable, spec: int | str, state: Any) -> Callable:
    """``fn`` applied to every slice along the leading axis of its (pytree) arguments, as ``vmap(fn)``, in
    batches of :func:`resolve_batch` intervals (``lax.map`` over the batches); ``state``: one interval's
    state (its size and rank decide ``auto``)."""

    def apply(*args):
        n = jax.tree_util.tree_leaves(args)[0].shape[0]
        batch = resolve_batch(spec, n, nbytes(state), image=state.ndim >= 4)
        if batch >= n:
            return jax.vmap(fn)(*args)
        # whole batches only (the last slice repeated, its results dropped): one trace of ``fn``, so outputs
        # that are functions (linearisations) have one structure
        k = -(-n // batch)
        pad = k * batch - n
        grouped = jax.tree_util.tree_map(
            lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]).reshape(k, batch, *a.shape[1:]), args)
        out = jax.lax.map(lambda a: jax.vmap(fn)(*a), grouped)
        return jax.tree_util.tree_map(lambda a: a.reshape(k * batch, *a.shape[2:])[:n], out)

    return apply


def over_steps(fn: Callable, spec: int | str, state: Any, axes: int) -> Callable:
    """:func:`over_intervals` over the first ``axes`` axes of every argument (e.g. (m, n_c) step layouts),
    flattened into one."""
    if axes == 1:
        return over_intervals(fn, spec, state)

    def apply(*args):
        lead = jax.tree_util.tree_leaves(args)[0].shape[:axes]
        flat = jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[axes:]), args)
        out = over_intervals(fn, spec, state)(*flat)
        return jax.tree_util.tree_map(lambda a: a.reshape(*lead, *a.shape[1:]), out)

    return apply


def nbytes(x) -> int:
    """Bytes of one state (any array-like with shape and dtype)."""
    return math.prod(x.shape) * x.dtype.itemsize
