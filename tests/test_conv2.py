"""The two-convolution step (model.layer=conv2, TorchBraid's MNIST step): definition, gradients against
finite differences, and parity of MGRIT with serial propagation (states and gradients) at convergence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, mgrit_propagate
from lpt.model import ModelError, ResNet, propagate
from lpt.model.layers import conv_apply
from lpt.train import objective

F64 = jnp.float64


def conv2_model(depth: int = 6, **kwargs) -> ResNet:
    base = dict(input_shape=(5, 5, 1), num_outputs=3, depth=depth, width=2, T=1.0, layer="conv2",
                opening="conv", activation="relu")
    return ResNet(**{**base, **kwargs})


def perturbed_params(model: ResNet, seed: int = 0):
    """Initial parameters plus noise, so biases are non-zero and every ReLU branch is exercised."""
    params = model.init(jax.random.PRNGKey(seed), F64)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [t + 0.1 * jax.random.normal(k, t.shape, t.dtype) for t, k in zip(leaves, keys)])


def test_conv2_parameters_and_shapes():
    model = conv2_model(depth=4, width=3)
    params = model.init(jax.random.PRNGKey(0), F64)
    layers = params["layers"]
    assert set(layers) == {"K", "b", "K2", "b2"}
    assert layers["K"].shape == layers["K2"].shape == (4, 3, 3, 3, 3)
    assert layers["b"].shape == layers["b2"].shape == (4, 3)
    assert not np.allclose(layers["K"], layers["K2"])  # independent draws
    assert model.state_shape == (5, 5, 3) and model.is_conv


def test_conv2_step_is_two_convolutions_plus_relu():
    """Φ(y) = y + h σ(K2 * σ(K1 * y + b1) + b2), written out with the plain convolution."""
    model = conv2_model(width=2)
    params = perturbed_params(model)
    theta0 = jax.tree_util.tree_map(lambda t: t[0], params["layers"])
    y = jax.random.normal(jax.random.PRNGKey(3), model.states_shape(2), F64)  # the model's layout
    y_nhwc = model.states_to_nhwc(y)
    inner = jnp.maximum(conv_apply(theta0["K"], theta0["b"], y_nhwc), 0)
    expected = y_nhwc + 0.25 * jnp.maximum(conv_apply(theta0["K2"], theta0["b2"], inner), 0)
    np.testing.assert_allclose(model.states_to_nhwc(model.step(theta0, y, 0.25)), expected, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(model.step(theta0, y, 0.0), y)  # h = 0 is the identity (MGRIT padding)


def test_conv2_gradient_matches_finite_differences():
    model = conv2_model(depth=4, activation="tanh", gamma_tik=1e-2, gamma_ddt=1e-3, gamma_class=1e-2)
    params = perturbed_params(model)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 5, 1), F64)
    y = jnp.arange(3) % 3
    f = jax.jit(lambda p: objective(model, p, x, y)[0])
    grads = jax.grad(f)(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    grad_leaves = jax.tree_util.tree_leaves(grads)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for i, leaf in enumerate(leaves):
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in leaf.shape)
            plus = [t.at[idx].add(eps) if j == i else t for j, t in enumerate(leaves)]
            minus = [t.at[idx].add(-eps) if j == i else t for j, t in enumerate(leaves)]
            fd = (f(jax.tree_util.tree_unflatten(treedef, plus))
                  - f(jax.tree_util.tree_unflatten(treedef, minus))) / (2 * eps)
            np.testing.assert_allclose(grad_leaves[i][idx], fd, rtol=1e-6, atol=1e-9)


def test_conv2_mgrit_matches_serial_at_convergence():
    """Forward MGRIT (3 levels, m = 4, FCF) run to a tight tolerance gives the serial y_N, and the adjoint
    MGRIT gradient through ``mgrit_propagate`` equals ``jax.grad`` of the serial network."""
    model = conv2_model(depth=32, width=2)
    params = perturbed_params(model, seed=1)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 5, 1), F64)
    labels = jnp.arange(3) % 3
    opts = MGRITOptions(cfactor=4, max_levels=3, nrelax=1, max_iter=30, abs_tol=1e-13)

    def loss(p, prop):
        y0 = model.open(p, x)
        yN = prop(p["layers"], model.step_sizes(F64), y0)
        return model.data_loss(model.head(p, yN), labels) + model.regularization(p), yN

    serial = lambda th, hs, y0: propagate(model.step, th, hs, y0)  # noqa: E731
    layered = lambda th, hs, y0: mgrit_propagate(model.step, th, hs, y0, opts, opts)  # noqa: E731
    g_ser, y_ser = jax.jit(jax.grad(lambda p: loss(p, serial), has_aux=True))(params)
    g_mg, y_mg = jax.jit(jax.grad(lambda p: loss(p, layered), has_aux=True))(params)
    np.testing.assert_allclose(y_mg, y_ser, rtol=1e-10, atol=1e-11)
    for a, b in zip(jax.tree_util.tree_leaves(g_mg), jax.tree_util.tree_leaves(g_ser)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_conv2_needs_images_and_a_conv_opening():
    with pytest.raises(ModelError, match=r"model\.layer=conv2 needs image inputs"):
        ResNet(input_shape=(2,), num_outputs=2, layer="conv2", opening="conv")
    with pytest.raises(ModelError, match=r"model\.opening='dense' does not fit model\.layer=conv2"):
        conv2_model(opening="dense")
    with pytest.raises(ModelError,
                       match=r"model\.layer='conv3' is not valid; choose one of \['dense', 'conv', 'conv2'\]"):
        conv2_model(layer="conv3")
