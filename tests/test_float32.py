"""float32 paths as users run them (issue 15, item 5).

The session runs with x64 enabled (``conftest.py``) for the float64 parity tests. Users run float32 with x64
off, so here (1) the MGRIT solve and gradient are checked with x64 off, against the serial network in float32,
and (2) with x64 on, the traced one-shot gradient of a float32 model holds no float64 value anywhere: the library
passes explicit dtypes, so the session's x64 does not turn float32 paths into float64 ones behind the tests'
back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, MGRITSolver, mgrit_solve
from lpt.model import ResNet, propagate_states
from lpt.model.serial import SerialSolver

F32 = jnp.float32


def _problem(layer: str = "dense", depth: int = 32):
    if layer == "conv":
        model = ResNet(input_shape=(6, 6, 2), num_outputs=3, depth=depth, width=2, T=2.0, layer="conv",
                       opening="conv")
    else:
        model = ResNet(input_shape=(2,), num_outputs=3, depth=depth, width=8, T=5.0)
    params = model.init(jax.random.PRNGKey(0), F32)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, *model.input_shape), F32)
    return model, params, x, jnp.arange(16, dtype=jnp.int32) % model.num_outputs


def _strong(values) -> set:
    """The dtypes of ``values`` that are not weakly typed (a weak Python constant such as ``jnp.full(s, nan,
    float32)``'s NaN takes the dtype of what it meets)."""
    return {v.aval.dtype for v in values if hasattr(v, "aval") and not getattr(v.aval, "weak_type", False)}


def _dtypes(jaxpr) -> set:
    """Every dtype of every (strongly typed) value in ``jaxpr`` and the jaxprs inside it."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    found = _strong((*jaxpr.invars, *jaxpr.outvars))
    for eqn in jaxpr.eqns:
        found |= _strong((*eqn.invars, *eqn.outvars))
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    found |= _dtypes(sub)
    return found


def test_mgrit_in_float32_with_x64_off_matches_the_serial_network(enable_x64):
    """10 cycles converge to float32 rounding: states within 2e-5 of the serial sweep's (relative to their
    scale), the one-shot gradient within 1e-4 of ``jax.grad`` of the serial network, all in float32."""
    with enable_x64(False):
        model, params, x, y = _problem()
        y0 = model.open(params, x)
        hs = model.step_sizes(F32)
        ys, stats = mgrit_solve(model.step, params["layers"], hs, y0, MGRITOptions(max_iter=10, cfactor=4))
        serial = propagate_states(model.step, params["layers"], hs, y0)
        assert ys.dtype == F32 and stats.residuals.dtype == F32
        assert float(jnp.max(jnp.abs(ys - serial))) < 2e-5 * float(jnp.max(jnp.abs(serial)))
        opts = MGRITOptions(max_iter=10, cfactor=4)
        solver = MGRITSolver(fwd=opts, bwd=opts, warm_start=False)
        obj, _, grads, _, _ = jax.jit(lambda p: solver.value_and_grad(model, p, x, y, ()))(params)
        ref_obj, _, ref, _, _ = SerialSolver().value_and_grad(model, params, x, y, ())
        assert obj.dtype == F32 and all(g.dtype == F32 for g in jax.tree_util.tree_leaves(grads))
        np.testing.assert_allclose(obj, ref_obj, rtol=1e-5)
        for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_a_float32_one_shot_gradient_holds_no_float64_under_x64(layer):
    assert jax.config.jax_enable_x64  # the session's setting, which this test guards against
    model, params, x, y = _problem(layer, depth=12)
    solver = MGRITSolver()
    state = solver.init_state(model, params, x)
    jaxpr = jax.make_jaxpr(lambda p, s: solver.value_and_grad(model, p, x, y, s))(params, state)
    dtypes = _dtypes(jaxpr)
    assert jnp.dtype(F32) in dtypes
    assert not {d for d in dtypes if d in (jnp.dtype(jnp.float64), jnp.dtype(jnp.complex128))}, dtypes
