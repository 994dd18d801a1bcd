"""lpt's L-BFGS (lpt.train.linesearch): optax's zoom line search with the objective evaluated once per iteration in the
compiled program, and the iterates of optax's own L-BFGS."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lpt.train import linesearch


def rosenbrock(p):
    x = p["x"]
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2) + jnp.sum(jnp.cosh(p["w"]))


START = {"x": np.linspace(-1.5, 1.2, 6), "w": np.array([[0.3, -2.0], [1.0, 0.5]])}


def trajectory(opt, steps):
    """(objective before each step, line-search iterations of each step) of ``steps`` steps from START."""
    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(rosenbrock)(p)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=rosenbrock)
        return optax.apply_updates(p, u), s, v, optax.tree_utils.tree_get(s, "num_linesearch_steps")

    p = jax.tree_util.tree_map(jnp.asarray, START)
    s, values, counts = opt.init(p), [], []
    for _ in range(steps):
        p, s, v, n = step(p, s)
        values.append(float(v))
        counts.append(int(n))
    return np.array(values), counts


@pytest.mark.parametrize("lr", [1.0, 30.0, 0.01])
def test_lbfgs_takes_the_steps_of_optax_lbfgs(lr):
    """float64, 12 steps of L-BFGS (memory 5) on a Rosenbrock function: the objective before every step equals that
    of ``optax.lbfgs`` to 1e-10 and every step takes as many line-search iterations; at lr 30 the line search
    zooms (3 or more iterations in a step). (The two programs evaluate the objective in differently nested
    branches, which XLA may round differently in the last bit; Rosenbrock's valley amplifies that over tens of
    steps, so the comparison stops at 12.)"""
    ours, our_counts = trajectory(linesearch.lbfgs(lr, 5), 12)
    theirs, their_counts = trajectory(optax.lbfgs(learning_rate=lr, memory_size=5), 12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    assert our_counts == their_counts
    assert ours[-1] < 0.5 * ours[0]
    if lr == 30.0:
        assert max(our_counts) >= 3, our_counts


def _objective_evaluations(opt) -> int:
    """How many times the update's program evaluates the objective (``cosh`` appears once in each evaluation's
    forward pass; sinh in its gradient)."""
    p = jax.tree_util.tree_map(jnp.asarray, START)
    v, g = jax.value_and_grad(rosenbrock)(p)
    jaxpr = jax.make_jaxpr(lambda s: opt.update(g, s, p, value=v, grad=g, value_fn=rosenbrock))(opt.init(p))
    return str(jaxpr).count("cosh")


def test_the_compiled_update_evaluates_the_objective_once():
    """optax's line search evaluates the objective in both branches of its loop; lpt's once."""
    assert _objective_evaluations(optax.lbfgs(memory_size=5)) == 2
    assert _objective_evaluations(linesearch.lbfgs(1.0, 5)) == 1


def test_a_step_other_than_the_one_evaluated_gets_nan():
    """The second pass's objective: the evaluated value at the evaluated point (to rounding), NaN elsewhere, so a
    line search that chose its trial point otherwise than the probe found fails that trial instead of using a
    value of another point."""
    point = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    value_and_grad = linesearch._evaluated_at(point, jnp.asarray(5.0), point)
    assert float(value_and_grad(jax.tree_util.tree_map(lambda a: a * (1 + 1e-12), point))[0]) == 5.0
    assert np.isnan(float(value_and_grad({"a": jnp.array([1.0, 2.5]), "b": jnp.array(3.0)})[0]))


def test_an_objective_with_by_products_gives_those_of_the_point_the_line_search_accepts():
    """float64, 12 steps from START at lr 1 and 30 (zooms): with an :class:`Objective` the line search takes the
    steps it takes with ``value_fn``, and where it reports ``found`` its by-products (here the value and 2·x at the
    trial point) are those of the new parameters; ``found`` holds at most steps (the step it takes is the last
    point it evaluated)."""
    for lr in (1.0, 30.0):
        opt = linesearch.lbfgs(lr, 5)

        def extras(p):
            return rosenbrock(p), 2.0 * p["x"]

        @jax.jit
        def step(p, s):
            v, g = jax.value_and_grad(rosenbrock)(p)
            objective = linesearch.Objective(lambda q: (*jax.value_and_grad(rosenbrock)(q), extras(q)), extras(p))
            u, s = opt.update(g, s, p, value=v, grad=g, objective=objective)
            return optax.apply_updates(p, u), s, v, objective.accepted

        p = jax.tree_util.tree_map(jnp.asarray, START)
        s, values, found = opt.init(p), [], []
        for _ in range(12):
            p, s, v, (ok, (value, twice)) = step(p, s)
            values.append(float(v))
            found.append(bool(ok))
            if ok:
                assert float(value) == pytest.approx(float(rosenbrock(p)), rel=1e-12)
                np.testing.assert_allclose(twice, 2.0 * p["x"], rtol=1e-12)
        np.testing.assert_allclose(values, trajectory(opt, 12)[0], rtol=1e-10)
        assert sum(found) >= 9, found
