"""Training state and the jitted training step."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lpt.model import Params, ResNet
from lpt.parallel.comm import data_mean as comm_data_mean
from lpt.train.linesearch import Objective
from lpt.train.solver import Solver


class TrainState(NamedTuple):
    """Everything a checkpoint holds besides metadata: θ, optimiser state, solver warm-start state, step, the
    step-size scale s of θ ← θ + s·Δθ (1 until a rejected step multiplies it by ``train.lr_factor``; None: s = 1
    fixed) and the number of consecutive rejected steps (None: not counted)."""

    params: Params
    opt_state: Any
    solver_state: Any
    step: jnp.ndarray  # int32 scalar: number of completed (accepted or rejected) optimisation steps
    lr_scale: Any = None  # float32 scalar s, or None
    rejections: Any = None  # int32 scalar: consecutive rejected steps before this state, or None
    carried: Any = None  # L-BFGS: :class:`Carried`, the line search's evaluation at ``params``; None otherwise


class Carried(NamedTuple):
    """What the last L-BFGS step's line search computed at the parameters it accepted, which are the state's
    ``params`` (the gradient is the line search's state in ``opt_state``; the warm-start state there is the state's
    ``solver_state``): the next step takes them instead of solving again at the same point. ``found`` is False
    where they do not belong to ``params`` (the first step, a rejected step, a scaled step size, a line search
    that fell back to an earlier point): that step solves."""

    found: jnp.ndarray  # bool scalar
    objective: jnp.ndarray
    metrics: dict  # "loss" and the model's train metrics
    stats: dict  # the solver's statistics of that solve

    def lost(self) -> "Carried":
        """These values marked as not belonging to the parameters (the next step solves)."""
        return self._replace(found=jnp.zeros_like(self.found))


class FaultPolicy(NamedTuple):
    """What the compiled step itself does with a rejected step (``train.on_nonfinite``), so that the loop need
    not wait for each step's flag: ``scale_lr`` multiplies s by ``lr_factor`` (reduce_lr); the
    ``halt_after``-th consecutive rejection (1 for stop, ``train.max_rejections`` otherwise) returns the state
    before it unchanged, and every later step leaves the state as it is (the run is over; the loop stops at its
    next look at the flags)."""

    scale_lr: bool
    lr_factor: float
    halt_after: int


def strong_types(tree: Any) -> Any:
    """Every array leaf without JAX's weak type (optax initialises some scalars as weakly typed Python numbers,
    the updated state holds strongly typed ones: without this the training step compiles again at step 2)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), tree)


def init_state(params: Params, optimizer: optax.GradientTransformation, solver_state: Any = (),
               lr_scale: Any = None, count_rejections: bool = False) -> TrainState:
    """The training state at step 0 (types fixed, so the jitted step compiles once)."""
    return own_buffers(TrainState(params, strong_types(optimizer.init(params)), strong_types(solver_state),
                                  jnp.asarray(0, jnp.int32), lr_scale,
                                  jnp.asarray(0, jnp.int32) if count_rejections else None))


def own_buffers(tree: Any) -> Any:
    """``tree`` with every leaf that occurs twice (the same array object, e.g. one zero array that two optimiser
    moments start from) replaced by a copy: a donated state must not hand one buffer over twice."""
    seen: set[int] = set()

    def own(x):
        if id(x) in seen:
            return jnp.array(x, copy=True)
        seen.add(id(x))
        return x

    return jax.tree_util.tree_map(own, tree)


def all_finite(tree: Any) -> jnp.ndarray:
    """True (a bool scalar) iff every floating-point entry of the pytree ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def current_lr(opt_state: Any, default: float) -> jnp.ndarray:
    """The step size in effect: the line-search step of L-BFGS if the state has one, else the configured lr."""
    found = optax.tree_utils.tree_get(opt_state, "learning_rate", default=None)
    return jnp.asarray(default if found is None else found, jnp.float32)


def make_train_step(model: ResNet, solver: Solver, optimizer: optax.GradientTransformationExtraArgs,
                    *, lr: float, line_search: bool, comm: Any = None,
                    wrap: Callable[[Callable], Callable] | None = None, faults: FaultPolicy | None = None,
                    donate: bool = False, norm: Callable[[Any], jnp.ndarray] = optax.tree.norm,
                    products: Callable[[], Any] = contextlib.nullcontext, carry: bool = False) -> Callable:
    """Build the jitted step ``(state, x, y) -> (state, metrics, stats)``.

    The step computes (objective, gradient) with the solver, applies the optimiser update θ ← θ + s·Δθ and
    returns scalar metrics evaluated at the parameters before the update. A step whose objective, gradient,
    new parameters or new solver state hold NaN or inf is rejected inside the compiled function: the returned
    state is the input state with only ``step`` advanced, and ``metrics["rejected"]`` is True (no exception is
    raised under ``jit``; the loop applies the ``train.on_nonfinite`` policy). Shapes never change between
    calls, so it compiles once.

    With data-parallel ranks (``comm.data`` > 1) each rank holds its own samples: objective, gradient and
    metrics are averaged over the ranks before the update, so parameters stay identical everywhere. ``wrap``
    adapts the per-chunk step to the back-end (``shard_map`` on a device mesh).

    ``norm`` is the gradient norm logged (on MPI ranks with layer-sharded parameters a sum over the chunks,
    :func:`lpt.parallel.products.chunk_norm`; the non-finite check is reduced over all ranks in any case), and
    ``products()`` the context in which an optimiser with a line search (L-BFGS) is traced there: its inner products
    summed over the chunks (:func:`lpt.parallel.products.chunk_products`).

    With ``faults`` (and a state that counts ``rejections``) the step applies the policy itself
    (:class:`FaultPolicy`). With ``donate`` the input state's buffers are given to the output (the caller must
    not use the state it passed in again): the step does not hold the state twice.

    With ``carry`` and a line search (L-BFGS; a :class:`Carried` in the state, :func:`initial_carry`) a step takes
    the values at its parameters from the last line search: the same values, one solve fewer (:class:`Carried`).
    """
    data_mean = comm_data_mean(comm)
    evaluate = _evaluation(model, solver, comm)
    carrying = carry and line_search

    def train_step(state: TrainState, x: jnp.ndarray, y: jnp.ndarray):
        evaluated = _at_params(evaluate, state, x, y, carrying)
        obj, grads, solver_state, point, stats = evaluated
        extra = dict(value=obj, grad=grads) if line_search else {}  # the line search's arguments
        objective = _objective(evaluate, evaluated, x, y) if carrying else None
        if objective is not None:
            extra["objective"] = objective
        elif line_search:
            extra["value_fn"] = line_search_value(model, solver, x, y, solver_state, data_mean)
        with products() if line_search else contextlib.nullcontext():
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
        scale = jnp.asarray(1.0 if state.lr_scale is None else state.lr_scale, jnp.float32)
        updates = jax.tree_util.tree_map(lambda u: u * scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        ok = _everywhere(comm, all_finite((obj, grads, params, solver_state)))  # the same decision on all ranks
        carried, next_solver_state = _carried(state.carried, objective, scale, solver_state)
        new = TrainState(params, opt_state, next_solver_state, state.step + 1, state.lr_scale, state.rejections,
                         carried)
        kept = state._replace(step=state.step + 1, carried=_lost(state.carried))
        metrics = {"objective": obj, "loss": point["loss"], "grad_norm": norm(grads),
                   "lr": current_lr(opt_state, lr) * scale,
                   **{k: v for k, v in point.items() if k != "loss"}, "rejected": ~ok}
        return _select(ok, new, kept, state, faults), metrics, stats

    step = wrap(train_step) if wrap else train_step
    return jax.jit(step, donate_argnums=0) if donate else jax.jit(step)


@functools.lru_cache(maxsize=8)
def _evaluation(model: ResNet, solver: Solver, comm: Any) -> Callable:
    """``evaluate(params, x, y, solver_state) -> (objective, gradient, new solver state, metrics, stats)``: one
    solve, averaged over data ranks; metrics are the loss and the model's train metrics at ``params``.

    A jitted function, one per (model, solver, comm) (the last few kept): where a program evaluates twice at the
    same shapes (the L-BFGS step: at its parameters and in its line search) and :func:`initial_carry` traces it
    for the shapes of its results, jax traces and lowers the solve once and reuses it."""
    data_mean = comm_data_mean(comm)

    @jax.jit
    def evaluate(params, x, y, solver_state):
        obj, aux, grads, new_state, stats = solver.value_and_grad(model, params, x, y, solver_state)
        point = {"loss": data_mean(aux["loss"]),
                 **{f"train_{k}": data_mean(v) for k, v in model.metrics(aux["outputs"], y).items()}}
        return data_mean(obj), data_mean(grads), new_state, point, stats

    return evaluate


def _objective(evaluate: Callable, evaluated: tuple, x: jnp.ndarray, y: jnp.ndarray) -> Objective:
    """The line search's objective: evaluations warm-started from the state ``evaluated`` ends with, by-products
    starting from those of ``evaluated`` (the evaluation at the current parameters)."""
    solver_state = evaluated[2]
    return Objective(lambda p: _split(evaluate(p, x, y, solver_state)), start=_split(evaluated)[2])


def _split(evaluated: tuple) -> tuple:
    """An evaluation as :class:`~lpt.train.linesearch.Objective` gives it: (value, gradient, by-products)."""
    obj, grads, solver_state, point, stats = evaluated
    return obj, grads, (solver_state, obj, point, stats)


def _at_params(evaluate: Callable, state: TrainState, x: jnp.ndarray, y: jnp.ndarray, carry: bool) -> tuple:
    """The evaluation at ``state.params``: with ``carry`` the one the last line search carried over if it belongs
    there (only the branch taken runs), else a solve warm-started from ``state.solver_state``."""
    c = state.carried
    if not carry:
        return evaluate(state.params, x, y, state.solver_state)
    if c is None:
        raise ValueError("make_train_step(carry=True) needs a state that holds a Carried (initial_carry)")
    grads = optax.tree.cast_like(optax.tree.get(state.opt_state, "grad"), state.params)
    return jax.lax.cond(c.found, lambda: (c.objective, grads, state.solver_state, c.metrics, c.stats),
                        lambda: evaluate(state.params, x, y, state.solver_state))


def _carried(carried: Carried | None, objective: Objective | None, scale: jnp.ndarray,
             solver_state: Any) -> tuple[Carried | None, Any]:
    """The new state's :class:`Carried` and warm-start state: the line search's at the point it accepted where
    that point is the new parameters (the step size unscaled), else the old ones marked as not found."""
    if objective is None:
        return _lost(carried), solver_state
    found, (next_state, obj, point, stats) = objective.accepted
    found = found & (scale == 1.0)
    next_state = jax.tree_util.tree_map(lambda a, b: jnp.where(found, a, b), next_state, solver_state)
    return Carried(found, obj, point, stats), next_state


def _lost(carried: Carried | None) -> Carried | None:
    """``carried`` marked as not belonging to the parameters (None stays None)."""
    return None if carried is None else carried.lost()


def initial_carry(model: ResNet, solver: Solver, state: TrainState, x: jnp.ndarray, y: jnp.ndarray, *,
                  comm: Any = None, wrap: Callable[[Callable], Callable] | None = None) -> Carried:
    """A :class:`Carried` with ``found`` False and zeros of the shapes the step's evaluation gives (traced, not
    run): the state an L-BFGS run starts from holds one, so the compiled step keeps one structure from step 1."""
    evaluate = _evaluation(model, solver, comm)

    def parts(state, x, y):
        obj, _, _, point, stats = evaluate(state.params, x, y, state.solver_state)
        return state, {"objective": obj, **point}, stats

    _, point, stats = jax.eval_shape(wrap(parts) if wrap else parts, state, x, y)
    zeros = lambda tree: jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), tree)  # noqa: E731
    obj = point.pop("objective")
    return Carried(jnp.asarray(False), zeros(obj), zeros(point), zeros(stats))


def _where(ok: jnp.ndarray, a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(lambda u, v: jnp.where(ok, u, v), a, b)


def _select(ok: jnp.ndarray, new: TrainState, kept: TrainState, state: TrainState,
            faults: FaultPolicy | None) -> TrainState:
    """The state after a step: ``new`` if ``ok``, else ``kept`` (the input state, step advanced) or, with a
    fault policy, what :class:`FaultPolicy` says."""
    if faults is None or state.rejections is None:
        return _where(ok, new, kept)
    count = state.rejections
    if faults.scale_lr and state.lr_scale is not None:
        kept = kept._replace(lr_scale=state.lr_scale * jnp.float32(faults.lr_factor))
    kept = kept._replace(rejections=count + 1)
    halting = count + 1 >= faults.halt_after  # this rejection ends the run: the state before it is the last good
    kept = _where(halting, state._replace(rejections=count + 1), kept)
    out = _where(ok, new._replace(rejections=jnp.zeros_like(count)), kept)
    return _where(count >= faults.halt_after, state, out)  # halted before: nothing changes any more


def line_search_value(model: ResNet, solver: Solver, x: jnp.ndarray, y: jnp.ndarray, solver_state: Any,
                      data_mean: Callable = lambda v: v) -> Callable:
    """The objective θ ↦ J(θ) that a line search evaluates at trial points, averaged over data ranks.

    Its value is the solver's forward solve only; its gradient (the zoom line search of L-BFGS asks for one at
    every trial point) is the solver's own ``value_and_grad`` (custom VJP) — for MGRIT the one-shot forward
    and adjoint solves — instead of reverse-mode differentiation through every forward cycle, which would
    store all intermediate iterates and cannot pass the MPI collectives of a layer-parallel solve.
    """

    @jax.custom_vjp
    def value(params):
        return data_mean(solver.value(model, params, x, y, solver_state))

    def value_fwd(params):
        obj, _, grads, _, _ = solver.value_and_grad(model, params, x, y, solver_state)
        return data_mean(obj), data_mean(grads)

    def value_bwd(grads, g):
        return (jax.tree_util.tree_map(lambda a: (g * a).astype(a.dtype), grads),)

    value.defvjp(value_fwd, value_bwd)
    return value


def _everywhere(comm: Any, flag: jnp.ndarray) -> jnp.ndarray:
    """True iff ``flag`` holds on every rank of the grid."""
    if comm is None or comm.data * comm.layers == 1:
        return flag
    return comm.data_sum(comm.layer_sum((~flag).astype(jnp.int32))) == 0


def make_evaluate(model: ResNet, chunk: int) -> Callable:
    """Build ``evaluate(params, x, y) -> metrics`` over a whole split, in fixed-size chunks (compiled once).

    The last chunk is padded and masked, so the result is exact for any split size.
    """

    def sums(params, xc, yc, mask):
        out = model.forward(params, xc)
        if model.task != "regression":  # classification; sequence: per sample the mean over its positions
            per_sample = lambda v: v.reshape(v.shape[0], -1).mean(axis=1)  # noqa: E731
            return {"correct": jnp.sum(mask * per_sample(jnp.argmax(out, -1) == yc)), "loss": jnp.sum(
                mask * per_sample(optax.softmax_cross_entropy_with_integer_labels(out, yc)))}
        err = (out - yc).reshape(out.shape[0], -1)
        return {"sq_err": jnp.sum(mask[:, None] * err**2),
                "sq_ref": jnp.sum(mask[:, None] * yc.reshape(err.shape) ** 2)}

    sums = jax.jit(sums)

    def evaluate(params, x, y) -> dict[str, float]:
        n = x.shape[0]
        c = min(chunk, n)
        total: dict[str, float] = {}
        for start in range(0, n, c):
            xc, yc = x[start:start + c], y[start:start + c]
            m = xc.shape[0]
            mask = jnp.ones((c,), x.dtype).at[m:].set(0) if m < c else jnp.ones((c,), x.dtype)
            if m < c:
                pad = [(0, c - m)] + [(0, 0)] * (x.ndim - 1)
                xc = jnp.pad(xc, pad)
                yc = jnp.pad(yc, [(0, c - m)] + [(0, 0)] * (y.ndim - 1))
            for k, v in jax.device_get(sums(params, xc, yc, mask)).items():
                total[k] = total.get(k, 0.0) + float(v)
        if model.task != "regression":
            return {"acc": total["correct"] / n, "loss": total["loss"] / n}
        n_out = model.num_outputs
        return {"mse": total["sq_err"] / (n * n_out),
                "rel_err": (total["sq_err"] / max(total["sq_ref"], 1e-300)) ** 0.5}

    return evaluate
