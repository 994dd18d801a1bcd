"""The ResNet-ODE model: activations, the residual step, serial propagation, gradients, bad settings."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.model import ModelError, ResNet, propagate, propagate_states, smoothrelu
from lpt.train import objective


def test_smoothrelu_matches_definition_and_is_c1():
    eta = 0.1
    x = jnp.array([-1.0, -eta, -0.05, 0.0, 0.05, eta, 2.0], jnp.float64)
    expected = jnp.array([0.0, 0.0, (0.05) ** 2 / (4 * eta), eta / 4, 0.15**2 / (4 * eta), eta, 2.0])
    np.testing.assert_allclose(smoothrelu(x), expected, rtol=0, atol=1e-15)
    d = jax.vmap(jax.grad(smoothrelu))(jnp.array([-eta, eta], jnp.float64))
    np.testing.assert_allclose(d, [0.0, 1.0], atol=1e-12)  # derivative continuous at the blend ends


@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_step_is_forward_euler(layer):
    shape = (5, 5, 2) if layer == "conv" else (3,)
    model = ResNet(input_shape=shape, num_outputs=2, depth=4, width=3, T=2.0, layer=layer,
                   opening="conv" if layer == "conv" else "dense")
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    y = jax.random.normal(jax.random.PRNGKey(1), model.states_shape(2), jnp.float64)
    theta0 = jax.tree_util.tree_map(lambda t: t[0], params["layers"])
    # zero step size is the identity; the increment is linear in h
    np.testing.assert_array_equal(model.step(theta0, y, 0.0), y)
    d1 = model.step(theta0, y, 0.25) - y
    d2 = model.step(theta0, y, 0.5) - y
    np.testing.assert_allclose(d2, 2 * d1, rtol=1e-13)
    assert float(jnp.abs(d1).max()) > 0


def test_serial_propagation_matches_a_plain_loop():
    model = ResNet(input_shape=(2,), num_outputs=5, depth=7, width=4, T=3.0)
    params = model.init(jax.random.PRNGKey(2), jnp.float64)
    y0 = model.open(params, jax.random.normal(jax.random.PRNGKey(3), (6, 2), jnp.float64))
    hs = model.step_sizes(jnp.float64)
    states = propagate_states(model.step, params["layers"], hs, y0)
    y = y0
    for n in range(model.depth):  # the reference loop (test only)
        K, b = params["layers"]["K"][n], params["layers"]["b"][n]
        y = y + model.h * jnp.tanh(y @ K.T + b)
        np.testing.assert_allclose(states[n + 1], y, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(propagate(model.step, params["layers"], hs, y0), states[-1])


def _finite_difference_check(model: ResNet, x, y, seed: int = 0):
    params = model.init(jax.random.PRNGKey(seed), jnp.float64)
    noise = lambda t: 0.1 * jax.random.normal(jax.random.PRNGKey(9), t.shape, t.dtype)  # noqa: E731
    params = jax.tree_util.tree_map(lambda t: t + noise(t), params)
    f = jax.jit(lambda p: objective(model, p, x, y)[0])
    grads = jax.grad(f)(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    grad_leaves = jax.tree_util.tree_leaves(grads)
    rng = np.random.default_rng(seed)
    eps = 1e-6
    checked = 0
    for i, leaf in enumerate(leaves):
        for _ in range(3):
            idx = tuple(rng.integers(0, s) for s in leaf.shape)
            plus = [leaf.at[idx].add(eps) if j == i else leaf for j, leaf in enumerate(leaves)]
            minus = [leaf.at[idx].add(-eps) if j == i else leaf for j, leaf in enumerate(leaves)]
            unflat = lambda ls: jax.tree_util.tree_unflatten(treedef, ls)  # noqa: E731
            fd = (f(unflat(plus)) - f(unflat(minus))) / (2 * eps)
            np.testing.assert_allclose(grad_leaves[i][idx], fd, rtol=1e-6, atol=1e-9)
            checked += 1
    assert checked == 3 * len(leaves)


def test_gradient_matches_finite_differences_dense():
    model = ResNet(input_shape=(2,), num_outputs=3, depth=6, width=4, T=2.0, activation="tanh",
                   gamma_tik=1e-2, gamma_ddt=1e-3, gamma_class=1e-2)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 2), jnp.float64)
    y = jnp.arange(8) % 3
    _finite_difference_check(model, x, y)


def test_gradient_matches_finite_differences_conv_regression():
    model = ResNet(input_shape=(5, 5, 1), num_outputs=2, depth=4, width=2, T=1.0, layer="conv",
                   opening="conv", activation="smoothrelu", task="regression", gamma_tik=1e-2, gamma_ddt=1e-3)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 5, 1), jnp.float64)
    y = jax.random.normal(jax.random.PRNGKey(2), (3, 2), jnp.float64)
    _finite_difference_check(model, x, y)


def test_regularization_terms():
    model = ResNet(input_shape=(2,), num_outputs=2, depth=3, width=2, T=3.0, gamma_tik=2.0, gamma_ddt=3.0,
                   gamma_class=5.0)
    ones = jnp.ones((3, 2, 2), jnp.float64)
    params = {"opening": {}, "layers": {"K": ones * jnp.arange(3.0)[:, None, None], "b": jnp.zeros((3, 2))},
              "classifier": {"W": jnp.ones((2, 4)), "b": jnp.zeros(2)}}
    tik = 4 * (0 + 1 + 4)          # Σ_n ‖K_n‖²
    ddt = 2 * 4 * 1.0 / 1.0**2     # two differences of 1 in 4 entries, h = 1
    cls = 8.0
    assert float(model.regularization(params)) == pytest.approx(0.5 * (2 * tik + 3 * ddt + 5 * cls))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"activation": "swish"}, r"model\.activation='swish'.*choose one of"),
        ({"depth": 0}, r"model\.depth=0 must be an integer ≥ 1"),
        ({"depth": -3}, r"model\.depth=-3"),
        ({"T": 0.0}, r"model\.T=0\.0 must be a positive"),
        ({"T": -1.0}, r"model\.T=-1\.0"),
        ({"width": 0}, r"model\.width=0"),
        ({"layer": "conv"}, r"model\.layer=conv needs image inputs"),
        ({"opening": "zero", "width": 1}, r"model\.width=1 must be at least"),
        ({"kernel_size": 2}, r"model\.kernel_size=2"),
        ({"gamma_tik": -1.0}, r"model\.gamma_tik=-1\.0"),
    ],
)
def test_bad_model_settings_raise_clear_errors(kwargs, match):
    base = dict(input_shape=(2,), num_outputs=5)
    with pytest.raises(ModelError, match=match):
        ResNet(**{**base, **kwargs})


@pytest.mark.parametrize("x64", [True, False])
def test_weights_drawn_from_shared_programs_are_jaxs_draws_bit_for_bit(x64, enable_x64):
    """:func:`lpt.model.layers.normal` takes each draw from a draw of the next power of two (one program per power,
    not per shape): its values, scaled as the initialisers scale them, equal ``jax.random.normal``'s bit for bit,
    with x64 on (the session) and off (as users run float32), and fewer programs are compiled than shapes drawn."""
    from lpt.model.layers import _draw, init_weight, normal

    shapes = [(1,), (5,), (8,), (9,), (3, 4), (7, 3, 3, 2), (100, 8, 8), (33, 17)]
    with enable_x64(x64):
        _draw.clear_cache()
        for dtype, key in itertools.product((jnp.float32, jnp.float64) if x64 else (jnp.float32,),
                                            (jax.random.PRNGKey(11), jax.random.key(11))):  # raw and typed keys
            for shape in shapes:
                k = jax.random.fold_in(key, len(shape))
                expected = jax.random.normal(k, shape, dtype)
                for got, want in [(normal(k, shape, dtype), expected),
                                  (normal(k, shape, dtype, 0.02), 0.02 * expected),
                                  (init_weight(k, shape, 6, 0.5, dtype), (0.5 / jnp.sqrt(6)) * expected)]:
                    assert got.dtype == want.dtype and got.shape == want.shape
                    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert _draw._cache_size() == (2 if x64 else 1) * 2 * 6  # sizes 1, 8, 16, 128, 1024, 8192 for 8 shapes
