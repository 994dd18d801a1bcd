"""Inner products and norms of parameter-shaped pytrees whose layer stacks are split over the layer chunks (MPI ranks
with :class:`~lpt.parallel.sharded.ChunkLocal`, or chunks under ``shard_map``): the leaves under ``"layers"`` are
summed over the chunks (one scalar message), the replicated others counted once.

:func:`chunk_products` lends them to optax while an optimiser's update is traced, so that L-BFGS (its two-loop
recursion and its zoom line search take ``optax.tree.vdot`` and ``optax.tree.norm`` of the local trees) computes
what it computes on the whole stack, on each chunk's layers only.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax
import optax.tree

from lpt.parallel.sharded import under_layers


def _parts(tree: Any) -> tuple[list, list]:
    """(leaves under ``"layers"``, the other leaves) of ``tree``, in its order."""
    flat = jax.tree_util.tree_leaves_with_path(tree)
    return [leaf for path, leaf in flat if under_layers(path)], [leaf for path, leaf in flat if not under_layers(path)]


def chunk_vdot(comm: Any, vdot: Callable[[Any, Any], Any] = optax.tree.vdot) -> Callable[[Any, Any], Any]:
    """``(a, b) -> ⟨a, b⟩`` of two parameter-shaped pytrees held as the chunks hold them: ``vdot`` (optax's) of their
    layer leaves summed over the chunks, plus that of the replicated leaves."""
    def product(a, b):
        (layers_a, rest_a), (layers_b, rest_b) = _parts(a), _parts(b)
        # message: one scalar, summed over the chunks
        return comm.layer_sum(jnp.asarray(vdot(layers_a, layers_b))) + vdot(rest_a, rest_b)

    return product


def chunk_norm(comm: Any, vdot: Callable[[Any, Any], Any] = optax.tree.vdot) -> Callable[..., Any]:
    """``tree -> ‖tree‖₂`` (``squared``: its square) of a parameter-shaped pytree whose layer stacks are split over
    the layer chunks of ``comm`` (:func:`chunk_vdot` of the tree with itself). Only the 2-norm (optax's ``ord``
    None or 2)."""
    product = chunk_vdot(comm, vdot)

    def norm(tree, ord=None, squared=False):  # noqa: A002 - optax.tree.norm's signature
        if ord not in (None, 2):
            raise ValueError(f"ord={ord!r}: only the 2-norm of layer-sharded parameters is summed over the chunks")
        square = jnp.real(product(tree, tree))
        return square if squared else jnp.sqrt(square)

    return norm


@contextlib.contextmanager
def chunk_products(comm: Any) -> Iterator[None]:
    """While optimiser code is traced in this block: ``optax.tree.vdot`` and ``optax.tree.norm`` summed over the layer
    chunks of ``comm`` (:func:`chunk_vdot`, :func:`chunk_norm`), so that the optimiser's inner products on one
    chunk's layers are those of the whole network; optax's own functions are back after the block. optax's L-BFGS
    and zoom line search (0.2.5 to 0.2.8 at least) call them through the module ``optax.tree``; a block in which
    neither is called is an error (an optax that computes them otherwise would silently use one chunk's)."""
    saved = optax.tree.vdot, optax.tree.norm
    calls: list[str] = []

    def counted(name: str, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return call

    optax.tree.vdot = counted("vdot", chunk_vdot(comm, saved[0]))
    optax.tree.norm = counted("norm", chunk_norm(comm, saved[0]))
    try:
        yield
    finally:
        optax.tree.vdot, optax.tree.norm = saved
    if not calls:
        raise RuntimeError(f"optax {optax.__version__} computed no inner product through optax.tree.vdot or "
                           "optax.tree.norm: its optimiser cannot run on layer-sharded parameters here; use "
                           "optax 0.2.5 to 0.2.8, or parallel=mesh")
