"""optax's zoom line search with one evaluation of the objective in the compiled program instead of two.

optax's ``scale_by_zoom_linesearch`` (Nocedal & Wright, algorithms 3.5 and 3.6) runs a ``while_loop`` whose body is
``lax.cond(interval_found, zoom_into_interval, search_interval)``, and each branch evaluates the objective and its
gradient at its trial step size. In lpt that evaluation is a whole forward and adjoint MGRIT solve, so the L-BFGS
train step held three copies of the solver (the step's own gradient and one in each branch): an L-BFGS step
compiled about 2.5 × longer than an Adam step of the same network.

:func:`scale_by_zoom_linesearch` does each iteration of the same line search in two passes of optax's own step:

1. a probe pass with a stand-in objective (value −∞, gradient 0), from which only the step size the branch tries
   is kept: both branches choose it from the state alone, before they evaluate, and store it as
   ``state.stepsize`` (the stand-in meets both Wolfe conditions, so optax's "failed" fallback, which could
   replace the stored step size, never runs in this pass);
2. the objective and its gradient evaluated once, outside the branches, at ``params + stepsize · updates``, and
   optax's step run again with those values as its objective.

The second pass is optax's algorithm with the values optax would compute, so the iterates are optax's
(``tests/test_linesearch.py`` compares them). Should an optax release choose the trial point otherwise, the point
asked for differs from the one evaluated: the objective is then NaN there, which the line search treats as a
failed trial (it never takes a step it did not evaluate).

Given an :class:`Objective` instead of ``value_fn``, the line search also keeps what the objective computes besides
value and gradient at its trial points (for lpt's train step: the solver's warm-start state, the metrics and the
solve statistics there) and reports those of the point it accepts: the L-BFGS step that follows starts from them
instead of solving again at the same point (:func:`lpt.train.state.make_train_step`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
import optax.tree

try:  # optax's pieces of its zoom line search (0.2.5 to 0.2.8 at least); without them lbfgs() is optax's own
    from optax._src import linesearch as _optax_linesearch
    _PIECES = all(hasattr(_optax_linesearch, name) for name in
                  ("zoom_linesearch", "ZoomLinesearchInfo", "ScaleByZoomLinesearchState"))
except ImportError:  # pragma: no cover - a future optax
    _PIECES = False


def _defaults() -> dict[str, Any]:
    """The keyword defaults of ``optax.scale_by_zoom_linesearch`` of the installed optax."""
    params = inspect.signature(optax.scale_by_zoom_linesearch).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _probe(step: Any, **_: Any) -> tuple[jnp.ndarray, Any]:
    """The stand-in objective of the probe pass: value −∞ (sufficient decrease met), gradient 0 (curvature met)."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(step))
    return jnp.asarray(-jnp.inf, jnp.real(jnp.empty((), dtype)).dtype), optax.tree.zeros_like(step)


def _evaluated_at(point: Any, value: jnp.ndarray, grad: Any) -> Callable[..., tuple[jnp.ndarray, Any]]:
    """The objective of the second pass: ``(value, grad)``, evaluated at ``point``, for the step optax asks for;
    NaN if that step is not ``point`` (to rounding)."""
    def value_and_grad(step: Any, **_: Any):
        gaps = [jnp.max(jnp.abs(s - p), initial=0.0) <= 1e-6 * (jnp.max(jnp.abs(p), initial=0.0) + 1e-30)
                for s, p in zip(jax.tree_util.tree_leaves(step), jax.tree_util.tree_leaves(point))]
        same = jnp.all(jnp.stack(gaps)) if gaps else jnp.asarray(True)
        return jnp.where(same, value, jnp.nan).astype(value.dtype), grad

    return value_and_grad


class Objective:
    """The objective of a line search with by-products: ``fn(point) -> (value, grad, extras)``, ``extras`` a pytree
    of the structure and types of ``start`` (the by-products at the current parameters).

    After the update of :func:`scale_by_zoom_linesearch`, :attr:`accepted` is ``(found, extras)``: ``found`` (a
    bool scalar) is True iff the step taken is the last point the line search evaluated, and ``extras`` are that
    point's by-products. Both are values of the update's own computation (outputs of its loop), for the caller
    to read in the same trace.
    """

    def __init__(self, fn: Callable[[Any], tuple[jnp.ndarray, Any, Any]], start: Any):
        self.fn, self.start = fn, start
        self.accepted: tuple[jnp.ndarray, Any] | None = None


def scale_by_zoom_linesearch(max_linesearch_steps: int, **options: Any) -> optax.GradientTransformationExtraArgs:
    """``optax.scale_by_zoom_linesearch(max_linesearch_steps, **options)`` with one evaluation of the objective
    per iteration in the compiled program (module docstring). Same options, state and results."""
    opts = {**_defaults(), **options}
    reference = optax.scale_by_zoom_linesearch(max_linesearch_steps, **opts)
    init_ls, step_ls, cond_ls = _optax_linesearch.zoom_linesearch(
        max_linesearch_steps=max_linesearch_steps, max_stepsize=opts["max_learning_rate"], tol=opts["tol"],
        increase_factor=opts["increase_factor"], slope_rtol=opts["slope_rtol"], curv_rtol=opts["curv_rtol"],
        approx_dec_rtol=opts["approx_dec_rtol"], interval_threshold=opts["stepsize_precision"],
        verbose=opts["verbose"])

    def update_fn(updates, state, params, *, value, grad, value_fn=None, objective: Objective | None = None,
                  **fn_kwargs):
        if objective is None:
            value_and_grad_fn = jax.value_and_grad(value_fn)
            objective = Objective(lambda point: (*value_and_grad_fn(point, **fn_kwargs), ()), ())

        def step(carry):
            ls_state, _, _ = carry
            stepsize = step_ls(ls_state, value_and_grad_fn=_probe, fn_kwargs={}).stepsize
            point = optax.tree.add_scale(ls_state.params, stepsize, ls_state.updates)
            value, grad, extras = objective.fn(point)
            evaluated = _evaluated_at(point, value, grad)
            return step_ls(ls_state, value_and_grad_fn=evaluated, fn_kwargs={}), extras, stepsize

        init_state = init_ls(updates, params, value=value, grad=grad, prev_stepsize=state.learning_rate,
                             initial_guess_strategy=opts["initial_guess_strategy"])
        final, extras, tried = jax.lax.while_loop(lambda carry: cond_ls(carry[0]), step,
                                                  (init_state, objective.start,
                                                   jnp.full_like(init_state.stepsize, jnp.nan)))
        objective.accepted = (final.stepsize == tried, extras)
        info = _optax_linesearch.ZoomLinesearchInfo(num_linesearch_steps=final.count,
                                                    decrease_error=final.decrease_error,
                                                    curvature_error=final.curvature_error)
        new_state = _optax_linesearch.ScaleByZoomLinesearchState(learning_rate=final.stepsize, value=final.value,
                                                                 grad=final.grad, info=info)
        return optax.tree.scale(final.stepsize, updates), optax.tree.cast_like(new_state, other_tree=state)

    return optax.GradientTransformationExtraArgs(reference.init, update_fn)


def carries_evaluations() -> bool:
    """Whether :func:`lbfgs`'s line search takes an :class:`Objective` (it does where the installed optax has the
    pieces it reuses; optax's own line search does not)."""
    return _PIECES


def lbfgs(learning_rate: float, memory_size: int) -> optax.GradientTransformationExtraArgs:
    """``optax.lbfgs(learning_rate, memory_size)`` with its default line search (zoom, at most 20 steps, first
    guess 1) evaluating the objective once per line-search iteration in the compiled program (optax's own line
    search where the installed optax lacks the pieces it reuses)."""
    if not _PIECES:  # pragma: no cover - a future optax
        return optax.lbfgs(learning_rate=learning_rate, memory_size=memory_size)
    return optax.lbfgs(learning_rate=learning_rate, memory_size=memory_size,
                       linesearch=scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one"))
