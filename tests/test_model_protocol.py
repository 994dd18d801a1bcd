"""Every network meets the :class:`lpt.model.Model` contract, identity steps included (issue 15, item 2).

The MGRIT solver pads uneven depths and coarse levels with steps of size h = 0; its iterates at real layers
do not depend on that padding only if ``step(θ, y, 0) == y`` exactly. Checked bit for bit, in float32 and
float64, at random parameters and states of every model kind.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.model import PARAM_PARTS, Model, ResNet, propagate
from lpt.model.transformer import Transformer

MODELS = {
    "dense": lambda: ResNet(input_shape=(2,), num_outputs=3, depth=6, width=5),
    "dense regression": lambda: ResNet(input_shape=(2,), num_outputs=1, depth=5, width=4, task="regression",
                                       activation="relu"),
    "conv": lambda: ResNet(input_shape=(6, 6, 1), num_outputs=4, depth=4, width=3, layer="conv", opening="conv"),
    "vision transformer": lambda: Transformer(input_shape=(8, 8, 1), num_outputs=3, depth=3, d_model=8, heads=2,
                                              patch=4),
    "character transformer": lambda: Transformer(input_shape=(6,), num_outputs=11, depth=3, d_model=8, heads=2,
                                                 task="sequence"),
    "conv2": lambda: ResNet(input_shape=(6, 6, 1), num_outputs=4, depth=4, width=3, layer="conv2", opening="conv",
                            activation="relu"),
}


def _inputs(model, key, batch=3, dtype=jnp.float64):
    if model.task == "sequence":  # character indices (the loop passes them in the run's dtype)
        return jax.random.randint(key, (batch, *model.input_shape), 0, model.num_outputs).astype(dtype)
    return jax.random.normal(key, (batch, *model.input_shape), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", MODELS)
def test_the_model_meets_the_contract_and_its_zero_steps_are_the_identity(name, dtype):
    model = MODELS[name]()
    assert isinstance(model, Model)
    key_p, key_x, key_y = jax.random.split(jax.random.PRNGKey(0), 3)
    params = model.init(key_p, dtype)
    assert tuple(params) == PARAM_PARTS
    for leaf in jax.tree_util.tree_leaves(params["layers"]):
        assert leaf.shape[0] == model.depth and leaf.dtype == dtype
    x = _inputs(model, key_x, dtype=dtype)
    y0 = model.open(params, x)
    y = 3 * jax.random.normal(key_y, y0.shape, dtype)  # any state, not only reachable ones
    step = jax.jit(model.step)
    for n in range(model.depth):
        theta_n = jax.tree_util.tree_map(lambda a: 5 * a[n], params["layers"])
        out = step(theta_n, y, jnp.zeros((), dtype))
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, y)
        # and not because the step ignores its input: at h = 1 it moves the state
        assert not np.allclose(step(theta_n, y, jnp.ones((), dtype)), y)
    zeros = jax.tree_util.tree_map(lambda a: jnp.zeros_like(a[0]), params["layers"])  # MGRIT's padding steps
    np.testing.assert_array_equal(step(zeros, y, jnp.zeros((), dtype)), y)
    hs = model.step_sizes(dtype)
    assert hs.shape == (model.depth,) and hs.dtype == dtype
    np.testing.assert_allclose(hs.sum(), model.T, rtol=1e-6)
    by_parts = model.head(params, propagate(model.step, params["layers"], hs, y0))
    np.testing.assert_array_equal(model.forward(params, x), by_parts)


def test_an_object_without_a_step_is_not_a_model():
    class Half:
        depth, T, task, num_outputs = 1, 1.0, "classification", 2

        def open(self, params, x):
            return x

    assert not isinstance(Half(), Model)
