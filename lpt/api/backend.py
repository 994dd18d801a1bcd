"""The solves behind :func:`lpt.layer_parallel` on the three back-ends, one code per layer chunk (DESIGN §4).

:class:`ChunkedSolver` is the ``solver`` of :func:`lpt.mgrit.adjoint.differentiable_solve`: ``forward`` runs the
forward FAS-MGRIT solve, ``backward`` the adjoint MGRIT solve and the layer gradient. Each runs one function per
layer chunk, written against a :class:`~lpt.parallel.comm.Comm`: called directly on one device (``SingleComm``)
and on an MPI rank (``MPIComm``: every rank passes the whole parameter stack and holds its chunk's states), and
under ``jax.shard_map`` over the "layers" (and "data") axes of a mesh (``MeshComm``). The parameters come in
whole and replicated; each chunk slices its layers (``lpt.mgrit.layout.chunk``), and the layer gradient is
gathered over the chunks (and summed over data ranks), so y_N, ȳ_0 and the gradient are the same everywhere.
States (the warm start) stay per chunk: (n_local+1, …) per chunk, chunk after chunk on a mesh. As in training, a
depth whose last r layers cost less serially than the padding (:func:`lpt.mgrit.layout.serial_tail`: N = 1025 with
cfactor 4) is solved as N − r layers by MGRIT and r serially after them, on every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lpt.mgrit.adjoint import adjoint_gradient_chunk
from lpt.mgrit.layout import (Layout, chunk, chunk_real, join_tail, mgrit_part, paired_layouts, tail_part,
                              through_tail, unspread)
from lpt.mgrit.options import MGRITOptions
from lpt.mgrit.solve import forward_chunk, padded
from lpt.model.propagate import propagate, propagate_states


class Warm(NamedTuple):
    """The one-shot warm start that the caller threads through the training steps.

    Attributes:
        ys: forward states of the last step, per layer chunk (chunks × (n_local+1), …flat state).
        ybars: adjoint states of the last step, same layout.
        valid: 1.0 when the states hold a previous step's solution, 0.0 for a cold start (the cheap coarse-level
            guess is used); a float, so that ``jax.grad`` can return the next warm start as its "cotangent".
    """

    ys: jnp.ndarray
    ybars: jnp.ndarray
    valid: jnp.ndarray


@dataclass(frozen=True)
class ChunkedSolver:
    """Forward and adjoint MGRIT of y_{n+1} = step(θ_n, y_n, h_n), n < ``n``, on one back-end (hashable: the
    static argument of the compiled solves).

    Attributes:
        step: the step on flat states (:class:`lpt.api.state.FlatStep`).
        fwd, bwd: options of the forward and the adjoint solve.
        n: the depth N.
        comm: ``SingleComm``, ``MeshComm`` (with ``mesh``) or ``MPIComm``.
        mesh: the mesh of a ``MeshComm``, else None.
        tol: relative tolerance ‖r‖₂ ≤ tol·‖u‖₂ of both solves; 0: the options' own stopping rule.
    """

    step: Any
    fwd: MGRITOptions
    bwd: MGRITOptions
    n: int
    comm: Any
    mesh: Any = None
    tol: float = 0.0

    @property
    def layouts(self) -> tuple[Layout, Layout]:
        return paired_layouts(self.n, self.fwd, self.bwd, self.comm.layers, tail=True)


    @property
    def local_chunks(self) -> int:
        """Chunks whose states this process holds: all of them on one device or a mesh, one on an MPI rank."""
        return self.comm.layers if self.mesh is not None or self.comm.layers == 1 else 1

    def _target(self, dtype: Any) -> jnp.ndarray | None:
        return jnp.asarray(self.tol, dtype) if self.tol > 0 else None

    def _specs(self) -> tuple[P, P]:
        """(states, one state) partition specs on the mesh: samples split over "data" when there are data ranks."""
        if self.comm.data > 1:
            return P("layers", "data"), P("data")
        return P("layers"), P()

    def _run(self, fn, args: tuple, in_specs: tuple, out_specs: tuple):
        if self.mesh is None:
            return fn(*args)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)(*args)

    def _local(self, theta: Any, hs: jnp.ndarray) -> tuple[Any, jnp.ndarray]:
        layout = self.layouts[0]
        return chunk(theta, self.comm.layer_rank(), layout), chunk_real(hs, self.comm.layer_rank(), layout)

    def _forward_chunk(self, theta, hs, y0, warm):
        u_init, valid = (None, None) if warm is None else (warm.ys, warm.valid > 0)
        return forward_chunk(self.step, *self._local(theta, hs), y0, self.fwd, self.layouts[0], self.comm, u_init,
                             valid, self._target(y0.dtype))

    @partial(jax.jit, static_argnums=0)
    def solve(self, theta: Any, hs: jnp.ndarray, y0: jnp.ndarray, warm: Warm | None):
        """This process's chunk states (local_chunks·(n_local+1), …), y_{N−r} (y_N without a serial tail) and the
        forward :class:`MGRITStats`."""
        theta, hs = padded(*mgrit_part(theta, hs, self.layouts[0]), self.layouts[0])
        states, state = self._specs()
        warm_spec = None if warm is None else Warm(states, states, P())
        return self._run(self._forward_chunk, (theta, hs, y0, warm), (P(), P(), state, warm_spec),
                         (states, state, P()))

    def _backward_chunk(self, theta, hs, ys, ybar_final, warm):
        comm = self.comm
        w_init, valid = (None, None) if warm is None else (warm.ybars, warm.valid > 0)
        grads, ybar_0, ybars, stats = adjoint_gradient_chunk(
            self.step, *self._local(theta, hs), ys, ybar_final, self.bwd, self.layouts[1], comm, w_init, valid,
            self._target(ybar_final.dtype))
        # message: the layer gradient, gathered over the chunks and summed over the data ranks
        grads = jax.tree_util.tree_map(lambda g: comm.data_sum(comm.layer_gather(g)), grads)
        return grads, ybar_0, ybars, stats

    @partial(jax.jit, static_argnums=0)
    def adjoint(self, theta: Any, hs: jnp.ndarray, ys: jnp.ndarray, ybar_final: jnp.ndarray, warm: Warm | None):
        """(θ̄ (N − r, …: the MGRIT part), ȳ_0, this process's chunk adjoint states, the adjoint
        :class:`MGRITStats`) from ȳ_{N−r}."""
        theta, hs = padded(*mgrit_part(theta, hs, self.layouts[0]), self.layouts[0])
        states, state = self._specs()
        warm_spec = None if warm is None else Warm(states, states, P())
        grads, ybar_0, ybars, stats = self._run(self._backward_chunk, (theta, hs, ys, ybar_final, warm),
                                                (P(), P(), states, state, warm_spec), (P(), state, states, P()))
        return unspread(grads, self.layouts[0]._replace(tail=0)), ybar_0, ybars, stats

    # --- the solver protocol of differentiable_solve ----------------------------------------------------
    def forward(self, theta, hs, y0, warm):
        ys, y_mid, _ = self.solve(theta, hs, y0, warm)
        return through_tail(self.step, tail_part(theta, hs, self.layouts[0]), y_mid), ys, (ys, y_mid)

    def backward(self, theta, hs, saved, ybar_final, warm):
        ys, y_mid = saved
        tail, g_tail = tail_part(theta, hs, self.layouts[0]), None
        if tail is not None:  # the serial tail's adjoint: ȳ_{N−r} and its layers' gradient
            _, vjp = jax.vjp(lambda th, y: propagate(self.step, th, tail[1], y), tail[0], y_mid)
            g_tail, ybar_final = vjp(ybar_final)
        grads, ybar_0, ybars, _ = self.adjoint(theta, hs, ys, ybar_final, warm)
        grads = join_tail(grads, g_tail)
        new_warm = None if warm is None else Warm(ys, ybars, jnp.ones_like(warm.valid))
        return grads, ybar_0, new_warm

    def all_states(self, ys: jnp.ndarray, theta: Any, hs: jnp.ndarray) -> jnp.ndarray:
        """y_0..y_N (N+1, …) from the chunk states (gathered from the ranks on MPI) and, after y_{N−r}, the serial
        tail's states."""
        if self.local_chunks != self.comm.layers:
            ys = self.comm.layer_gather(ys)  # message: all states (only where the caller asks for them)
        layout = self.layouts[0]
        blocks, stride = ys.reshape(self.comm.layers, -1, *ys.shape[1:]), layout.stride
        states = jnp.concatenate([*(blocks[p, :stride] for p in range(self.comm.layers - 1)), blocks[-1]])
        states, tail = states[: layout.n + 1], tail_part(theta, hs, layout)
        if tail is None:
            return states
        return jnp.concatenate([states, propagate_states(self.step, *tail, states[-1])[1:]])
