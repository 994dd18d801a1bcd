"""``lpt.layer_parallel(step, options)``: a layer-parallel drop-in for a ``lax.scan`` over stacked layers."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lpt.api.backend import ChunkedSolver, Warm
from lpt.api.options import LayerParallelOptions
from lpt.api.state import FlatStep, StateCodec
from lpt.mgrit.adjoint import differentiable_solve
from lpt.mgrit.solve import MGRITStats
from lpt.parallel.comm import MeshComm, SingleComm


def _depth(params: Any) -> int:
    """N: the common leading axis of the stacked parameters."""
    shapes = [jnp.shape(a) for a in jax.tree_util.tree_leaves(params)]
    depths = {s[0] for s in shapes if s}
    if not shapes or len(depths) != 1 or any(not s for s in shapes):
        raise ValueError(f"layer_parallel: the stacked parameters must share their leading (layer) axis N; got leaf "
                         f"shapes {shapes}")
    return depths.pop()


class LayerParallel:
    """y_N = Φ_{N−1}∘…∘Φ_0(y_0), Φ_n(y) = step(θ_n, y, h_n), by FAS-MGRIT, differentiable by adjoint MGRIT.

    Made by :func:`layer_parallel`. ``params`` is any pytree of stacked layer parameters (leading axis N on
    every leaf); ``y0`` any pytree of floating-point arrays. All methods work inside ``jax.jit``, ``jax.grad``
    and an optax loop.
    """

    def __init__(self, step: Callable[[Any, Any, Any], Any], options: LayerParallelOptions):
        self.step, self.options = step, options
        opts = options
        if opts.mesh is not None:
            self.comm = MeshComm(layers=opts.layers, data=opts.data)
        else:
            self.comm = SingleComm() if opts.comm is None else opts.comm

    def _solver(self, params: Any, y0: Any, one_shot: bool = False) -> tuple[StateCodec, ChunkedSolver, Any]:
        opts = self.options
        codec = StateCodec.of(y0, opts.batch_axis)
        n = _depth(params)
        if opts.hs is not None and len(opts.hs) != n:
            raise ValueError(f"LayerParallelOptions.hs has {len(opts.hs)} step sizes, the parameters {n} layers")
        if opts.data > 1:
            samples = jnp.shape(jax.tree_util.tree_leaves(y0)[0])[opts.batch_axis]
            if samples % opts.data:
                raise ValueError(f"layer_parallel: the state holds {samples} samples on LayerParallelOptions."
                                 f"batch_axis={opts.batch_axis}, which do not split evenly over the {opts.data} data "
                                 f"ranks")
        fwd, bwd, tol = opts.forward, opts.backward, opts.tol
        if one_shot:
            fwd, bwd = (dataclasses.replace(o, max_iter=k, abs_tol=0.0, rel_tol=0.0)
                        for o, k in zip((fwd, bwd), opts.one_shot_cycles))
            tol = 0.0
        elif tol is None:
            tol = 100 * float(np.finfo(codec.dtype).eps)
        solver = ChunkedSolver(FlatStep(self.step, codec), fwd, bwd, n, self.comm, opts.mesh, float(tol))
        hs = (jnp.full((n,), opts.T / n, codec.dtype) if opts.hs is None else jnp.asarray(opts.hs, codec.dtype))
        return codec, solver, hs

    def __call__(self, params: Any, y0: Any) -> Any:
        """y_N, solved to the tolerance; under ``jax.grad`` the adjoint MGRIT solve gives ∂/∂params and ∂/∂y0."""
        codec, solver, hs = self._solver(params, y0)
        y_final, _ = differentiable_solve(solver, params, hs, codec.flatten(y0), None)
        return codec.unflatten(y_final)

    def states(self, params: Any, y0: Any) -> tuple[Any, MGRITStats]:
        """All states y_0..y_N (a leading axis N+1 on every leaf) and the forward solve's :class:`MGRITStats`.
        Not differentiated (the adjoint solve has no sources at the inner states): differentiate ``lp(…)``."""
        codec, solver, hs = self._solver(params, y0)
        params, y0 = jax.lax.stop_gradient((params, y0))
        ys, _, stats = solver.solve(params, hs, codec.flatten(y0), None)
        return codec.unflatten_states(solver.all_states(ys, params, hs)), stats

    def init_warm(self, params: Any, y0: Any) -> Warm:
        """A cold warm start for ``one_shot`` (``valid`` 0: the first step starts from the coarse-level guess)."""
        codec, solver, _ = self._solver(params, y0, one_shot=True)
        flat = jax.eval_shape(codec.flatten, y0)
        n_local = solver.layouts[0].n_local
        zeros = jnp.zeros((solver.local_chunks * (n_local + 1), *flat.shape), flat.dtype)
        return Warm(zeros, zeros, jnp.zeros((), flat.dtype))

    def one_shot(self, params: Any, y0: Any, warm: Warm | None) -> Any:
        """y_N by ``one_shot_cycles[0]`` forward cycles from ``warm`` (None: the coarse-level guess); its gradient
        by ``one_shot_cycles[1]`` adjoint cycles from ``warm.ybars``.

        The next warm start comes back as the "gradient" with respect to ``warm``::

            grads, warm = jax.grad(loss, argnums=(0, 1))(params, warm)   # loss(params, warm) calls one_shot once

        (forward and adjoint states of this step, ``valid`` 1). Pass ``warm`` straight to one ``one_shot`` call;
        its value there is not a derivative. A forward-only call (no ``jax.grad``) does not renew it.
        """
        codec, solver, hs = self._solver(params, y0, one_shot=True)
        if warm is not None:
            warm = Warm(*warm)
        y_final, _ = differentiable_solve(solver, params, hs, codec.flatten(y0), warm)
        return codec.unflatten(y_final)

    def check_identity(self, params: Any, y0: Any) -> None:
        """Raise ValueError unless step(θ_0, y0, 0) == y0 exactly (the contract: identity steps pad uneven
        chunks). Call it once, outside ``jit``, on real values."""
        theta_0 = jax.tree_util.tree_map(lambda a: a[0], params)
        out = self.step(theta_0, y0, jnp.zeros((), StateCodec.of(y0, None).dtype))
        gaps = [float(jnp.max(jnp.abs(a - b))) if jnp.shape(a) == jnp.shape(b) else float("inf")
                for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(y0))]
        same = jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(y0)
        if not same or max(gaps) != 0:
            raise ValueError(f"layer_parallel: step(θ_0, y0, 0) must equal y0 exactly (identity steps pad uneven "
                             f"layer chunks), it differs by {max(gaps) if same else 'its tree structure'}; write the "
                             f"step as y + h·f(θ, y), e.g. with lpt.residual(f)")


def layer_parallel(step: Callable[[Any, Any, Any], Any], options: LayerParallelOptions | None = None) -> LayerParallel:
    """A layer-parallel ``lax.scan`` over layers: ``lp = layer_parallel(step, options)``, then ``lp(params, y0)``.

    ``lp(params, y0)`` equals ``lax.scan(lambda y, (θ, h): (step(θ, y, h), None), y0, (params, hs))[0]`` with
    h_n = T/N, solved by FAS-MGRIT (forward) and differentiated by adjoint MGRIT (``jax.custom_vjp``), both to
    ``options.tol``.

    Args:
        step: ``step(θ_n, y, h) -> y_next`` for one layer's parameters θ_n (a slice of the stacked ``params``) and
            a state ``y`` of any pytree shape; it must satisfy step(θ, y, 0) = y (:meth:`LayerParallel.check_identity`;
            :func:`lpt.residual` builds y + h·f(θ, y)). Hashable (a function is): compiled solves are cached on it.
        options: :class:`LayerParallelOptions` (solver settings and back-end); None: the defaults, one device.
    """
    if options is None:
        options = LayerParallelOptions()
    if not isinstance(options, LayerParallelOptions):
        raise ValueError(f"layer_parallel: options={options!r} must be an lpt.LayerParallelOptions or None")
    if not callable(step):
        raise ValueError(f"layer_parallel: step={step!r} must be callable as step(θ_n, y, h)")
    return LayerParallel(step, options)
