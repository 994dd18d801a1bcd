"""A state of any pytree shape as the one array the MGRIT solver works on, and steps on it.

Every leaf is laid out samples-first (``batch_axis`` moved to the front, if given) and flattened, and the leaves
are concatenated: (B, D) with a batch axis, (D,) without. The wrapped step unflattens, calls the user's step and
flattens again, so the array-state solver serves unchanged (norms and tolerances are those of the flat state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class StateCodec:
    """Static description of a state pytree: tree structure, per-leaf shapes without the batch axis, dtypes."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    batch_axis: int | None
    dtype: Any

    @classmethod
    def of(cls, y: Any, batch_axis: int | None) -> "StateCodec":
        leaves, treedef = jax.tree_util.tree_flatten(y)
        if not leaves:
            raise ValueError("layer_parallel: the state y0 has no array leaves")
        shapes, batches = [], set()
        for leaf in leaves:
            shape = tuple(jnp.shape(leaf))
            if batch_axis is not None:
                if batch_axis >= len(shape):
                    raise ValueError(f"LayerParallelOptions.batch_axis={batch_axis} is not an axis of a state leaf "
                                     f"of shape {shape}")
                batches.add(shape[batch_axis])
                shape = shape[:batch_axis] + shape[batch_axis + 1:]
            shapes.append(shape)
        if len(batches) > 1:
            raise ValueError(f"LayerParallelOptions.batch_axis={batch_axis}: the state leaves hold different numbers "
                             f"of samples {sorted(batches)} on that axis")
        dtypes = tuple(np.dtype(jnp.result_type(leaf)) for leaf in leaves)
        if not all(jnp.issubdtype(d, jnp.inexact) for d in dtypes):
            raise ValueError(f"layer_parallel: every state leaf must be floating point, got dtypes {dtypes}")
        return cls(treedef, tuple(shapes), dtypes, batch_axis, np.dtype(jnp.result_type(*dtypes)))

    @property
    def size(self) -> int:
        """Entries of one sample's flat state."""
        return sum(math.prod(s) for s in self.shapes)

    def flatten(self, y: Any) -> jnp.ndarray:
        """State pytree → (B, D) (with a batch axis) or (D,)."""
        leaves = self.treedef.flatten_up_to(y)
        if self.batch_axis is None:
            return jnp.concatenate([jnp.ravel(a).astype(self.dtype) for a in leaves])
        parts = [jnp.moveaxis(a, self.batch_axis, 0) for a in leaves]
        return jnp.concatenate([a.reshape(a.shape[0], -1).astype(self.dtype) for a in parts], axis=1)

    def unflatten(self, flat: jnp.ndarray) -> Any:
        """(B, D) or (D,) → the state pytree (any B: a data rank holds its samples only)."""
        sizes = np.cumsum([math.prod(s) for s in self.shapes])[:-1]
        parts = jnp.split(flat, sizes, axis=-1)
        if self.batch_axis is None:
            leaves = [p.reshape(s).astype(d) for p, s, d in zip(parts, self.shapes, self.dtypes)]
        else:
            leaves = [jnp.moveaxis(p.reshape(p.shape[0], *s), 0, self.batch_axis).astype(d)
                      for p, s, d in zip(parts, self.shapes, self.dtypes)]
        return self.treedef.unflatten(leaves)

    def unflatten_states(self, flat: jnp.ndarray) -> Any:
        """States (K, …flat) → the state pytree with a leading axis K on every leaf."""
        return jax.vmap(self.unflatten)(flat)


@dataclass(frozen=True)
class FlatStep:
    """The user's ``step(θ_n, y, h)`` on flat states (hashable: a static argument of the compiled solves)."""

    step: Callable[[Any, Any, Any], Any]
    codec: StateCodec

    def __call__(self, theta_n: Any, y: jnp.ndarray, h: jnp.ndarray) -> jnp.ndarray:
        return self.codec.flatten(self.step(theta_n, self.codec.unflatten(y), h))


@dataclass(frozen=True)
class Residual:
    """The residual step y + h·f(θ, y), leaf by leaf; step(θ, y, 0) = y exactly for finite f."""

    f: Callable[[Any, Any], Any]

    def __call__(self, theta_n: Any, y: Any, h: Any) -> Any:
        return jax.tree_util.tree_map(lambda a, b: a + jnp.asarray(h, a.dtype) * b, y, self.f(theta_n, y))


def residual(f: Callable[[Any, Any], Any]) -> Residual:
    """The step y_{n+1} = y_n + h_n·f(θ_n, y_n) (a ResNet layer; forward Euler on y' = f(θ(t), y)), applied leaf by
    leaf to a pytree state; it meets the contract step(θ, y, 0) = y. ``f(θ_n, y)`` returns a pytree like ``y``."""
    return Residual(f)
