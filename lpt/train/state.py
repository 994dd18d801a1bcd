"""Training state and the jitted training step."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lpt.model import Params, ResNet
from lpt.train.solver import Solver


class TrainState(NamedTuple):
    """Everything a checkpoint holds besides metadata: θ, optimiser state, solver warm-start state, step."""

    params: Params
    opt_state: Any
    solver_state: Any
    step: jnp.ndarray  # int32 scalar: number of completed optimisation steps


def current_lr(opt_state: Any, default: float) -> jnp.ndarray:
    """The step size in effect: the line-search step of L-BFGS if the state has one, else the configured lr."""
    found = optax.tree_utils.tree_get(opt_state, "learning_rate", default=None)
    return jnp.asarray(default if found is None else found, jnp.float32)


def make_train_step(model: ResNet, solver: Solver, optimizer: optax.GradientTransformationExtraArgs,
                    *, lr: float, line_search: bool) -> Callable:
    """Build the jitted step ``(state, x, y) -> (state, metrics)``.

    The step computes (objective, gradient) with the solver, applies the optimiser update θ ← θ + Δθ and
    returns scalar metrics evaluated at the parameters before the update. Shapes never change between calls,
    so it compiles once.
    """

    def train_step(state: TrainState, x: jnp.ndarray, y: jnp.ndarray):
        obj, aux, grads, solver_state, stats = solver.value_and_grad(model, state.params, x, y, state.solver_state)
        extra = {}
        if line_search:
            extra = dict(value=obj, grad=grads,
                         value_fn=lambda p: solver.value(model, p, x, y, solver_state))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "objective": obj,
            "loss": aux["loss"],
            "grad_norm": optax.tree.norm(grads),
            "lr": current_lr(opt_state, lr),
            **{f"train_{k}": v for k, v in model.metrics(aux["outputs"], y).items()},
        }
        return TrainState(params, opt_state, solver_state, state.step + 1), metrics, stats

    return jax.jit(train_step)


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
