"""Training state and the jitted training step."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lpt.model import Params, ResNet
from lpt.train.solver import Solver


class TrainState(NamedTuple):
    """Everything a checkpoint holds besides metadata: θ, optimiser state, solver warm-start state, step, and
    the step-size scale s of θ ← θ + s·Δθ (1 until a rejected step multiplies it by ``train.lr_factor``;
    None: s = 1 fixed)."""

    params: Params
    opt_state: Any
    solver_state: Any
    step: jnp.ndarray  # int32 scalar: number of completed (accepted or rejected) optimisation steps
    lr_scale: Any = None  # float32 scalar s, or None


def strong_types(tree: Any) -> Any:
    """Every array leaf without JAX's weak type (optax initialises some scalars as weakly typed Python numbers,
    the updated state holds strongly typed ones: without this the training step compiles again at step 2)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), tree)


def init_state(params: Params, optimizer: optax.GradientTransformation, solver_state: Any = (),
               lr_scale: Any = None) -> TrainState:
    """The training state at step 0 (types fixed, so the jitted step compiles once)."""
    return TrainState(params, strong_types(optimizer.init(params)), strong_types(solver_state),
                      jnp.asarray(0, jnp.int32), lr_scale)


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
                    wrap: Callable[[Callable], Callable] | None = None) -> Callable:
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
    """
    data_mean = _data_mean(comm)

    def train_step(state: TrainState, x: jnp.ndarray, y: jnp.ndarray):
        obj, aux, grads, solver_state, stats = solver.value_and_grad(model, state.params, x, y, state.solver_state)
        obj, grads, aux = data_mean(obj), data_mean(grads), {**aux, "loss": data_mean(aux["loss"])}
        extra = {}
        if line_search:
            extra = dict(value=obj, grad=grads,
                         value_fn=line_search_value(model, solver, x, y, solver_state, data_mean))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
        scale = jnp.asarray(1.0 if state.lr_scale is None else state.lr_scale, jnp.float32)
        updates = jax.tree_util.tree_map(lambda u: u * scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        ok = _everywhere(comm, all_finite((obj, grads, params, solver_state)))  # the same decision on all ranks
        new = TrainState(params, opt_state, solver_state, state.step + 1, state.lr_scale)
        kept = TrainState(state.params, state.opt_state, state.solver_state, state.step + 1, state.lr_scale)
        metrics = {
            "objective": obj,
            "loss": aux["loss"],
            "grad_norm": optax.tree.norm(grads),
            "lr": current_lr(opt_state, lr) * scale,
            **{f"train_{k}": data_mean(v) for k, v in model.metrics(aux["outputs"], y).items()},
            "rejected": ~ok,
        }
        return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, kept), metrics, stats

    return jax.jit(wrap(train_step) if wrap else train_step)


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


def _data_mean(comm: Any) -> Callable[[Any], Any]:
    """Average a pytree over the data-parallel ranks (identity without them)."""
    if comm is None or comm.data == 1:
        return lambda tree: tree
    return lambda tree: jax.tree_util.tree_map(lambda a: comm.data_sum(a) / comm.data, tree)


def make_evaluate(model: ResNet, chunk: int) -> Callable:
    """Build ``evaluate(params, x, y) -> metrics`` over a whole split, in fixed-size chunks (compiled once).

    The last chunk is padded and masked, so the result is exact for any split size.
    """

    def sums(params, xc, yc, mask):
        out = model.forward(params, xc)
        if model.task == "classification":
            return {"correct": jnp.sum(mask * (jnp.argmax(out, -1) == yc)), "loss": jnp.sum(
                mask * optax.softmax_cross_entropy_with_integer_labels(out, yc))}
        err = (out - yc).reshape(out.shape[0], -1)
        return {"sq_err": jnp.sum(mask[:, None] * err**2), "sq_ref": jnp.sum(mask[:, None] * yc.reshape(err.shape) ** 2)}

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
        if model.task == "classification":
            return {"acc": total["correct"] / n, "loss": total["loss"] / n}
        n_out = model.num_outputs
        return {"mse": total["sq_err"] / (n * n_out), "rel_err": (total["sq_err"] / max(total["sq_ref"], 1e-300)) ** 0.5}

    return evaluate
