"""Convolutions as matrix products (model.conv_impl, DESIGN §9), interval batching of the relaxation
(solver.interval_batch) and XBraid's skip of the first down-cycle (solver.skip_first_down).

- the im2col formulation equals ``lax.conv_general_dilated`` — values and both VJPs — for kernel sizes
  1, 3, 5, 7, strides 1 and 2, SAME / VALID / explicit padding (float64 ≤ 1e-12, float32 ≤ 1e-5 relative),
  also vmapped over per-layer kernels (the relaxation's use);
- conv and conv2 networks give the same outputs and gradients with either formulation;
- MGRIT iterates do not depend on the interval batch;
- with skip_first_down, k cycles from the coarse guess are the guess plus k − 1 cycles.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.mgrit import MGRITOptions, MGRITSolver, mgrit_solve
from lpt.mgrit.adjoint import adjoint_solve, layer_gradient
from lpt.mgrit.batching import resolve_batch
from lpt.model import ModelError, ResNet
from lpt.model.conv import conv2d, resolve_conv_impl, resolve_conv_layout
from lpt.model.propagate import propagate_states
from test_mgrit_training import value_and_grad

TOL = {jnp.float64: 1e-12, jnp.float32: 1e-5}


def rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


CASES = ([(k, (1, 1), "SAME") for k in (1, 3, 5, 7)]  # the layers' convolutions
         + [(3, (2, 2), "SAME"), (5, (1, 2), "VALID"), (3, (1, 1), ((1, 2), (0, 3))), (7, (2, 1), ((3, 0), (2, 2)))])


@pytest.mark.slow(seconds=12)
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_matmul_and_channels_first_convolutions_equal_xla(dtype):
    """Values and both VJPs for kernel sizes 1, 3, 5, 7 with same padding (the layers' use), and strides
    2 / (1, 2) / (2, 1) with SAME, VALID and explicit paddings (the general formulation): the matrix-product
    formulation in the NHWC layout, and both formulations in the CNHW layout (channels first), equal XLA's NHWC
    convolution. One compiled program per case."""
    rng = np.random.default_rng(0)
    for k, strides, padding in CASES:
        y = jnp.asarray(rng.normal(size=(2, 9, 11, 3)), dtype)
        w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), dtype)
        shape = jax.eval_shape(lambda y, w: conv2d(y, w, "xla", strides, padding), y, w).shape
        g = jnp.asarray(rng.normal(size=shape), dtype)

        def pairs(y, w, g):  # {(formulation, layout): ((got, XLA's NHWC reference) for value, dy, dw)}
            want, want_vjp = jax.vjp(lambda y, w: conv2d(y, w, "xla", strides, padding), y, w)
            want = (want, *want_vjp(g))
            got, got_vjp = jax.vjp(lambda y, w: conv2d(y, w, "matmul", strides, padding), y, w)
            out = {("matmul", "NHWC"): tuple(zip((got, *got_vjp(g)), want))}
            for impl in ("xla", "matmul"):
                got, got_vjp = jax.vjp(lambda y, w: conv2d(y, w, impl, strides, padding, "CNHW"),
                                       jnp.moveaxis(y, -1, 0), w)
                dy, dw = got_vjp(jnp.moveaxis(g, -1, 0))
                out[impl, "CNHW"] = tuple(zip((jnp.moveaxis(got, 0, -1), jnp.moveaxis(dy, 0, -1), dw), want))
            return out

        for key, results in jax.jit(pairs)(y, w, g).items():
            for a, b in results:
                assert a.dtype == dtype and a.shape == b.shape
                assert rel(a, b) <= TOL[dtype], (key, k, strides, padding)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_matmul_convolution_vmapped_over_layers(dtype):
    """A different kernel and state per layer (the relaxation's vmap): batched matmuls, same numbers."""
    rng = np.random.default_rng(1)
    ys = jnp.asarray(rng.normal(size=(6, 2, 8, 8, 4)), dtype)
    ws = jnp.asarray(rng.normal(size=(6, 3, 3, 4, 4)), dtype)

    def f(impl):
        return jax.vmap(lambda w, y: jnp.tanh(conv2d(y, w, impl)))

    ref, ref_vjp = jax.vjp(f("xla"), ws, ys)
    out, out_vjp = jax.vjp(f("matmul"), ws, ys)
    g = jnp.ones_like(ref)
    assert rel(out, ref) <= TOL[dtype]
    for got, want in zip(out_vjp(g), ref_vjp(g)):
        assert rel(got, want) <= TOL[dtype]
    # no grouped convolution is left in the vmapped matmul formulation
    hlo = jax.jit(f("matmul")).lower(ws, ys).as_text()
    assert "convolution" not in hlo and "dot_general" in hlo


@pytest.mark.slow(seconds=14)
@pytest.mark.parametrize("layer", ["conv", "conv2"])
def test_networks_agree_across_conv_impls_and_layouts(layer):
    """The same parameters give the same loss and gradient with every formulation and state layout (and the
    zero opening in both layouts)."""
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 6, 2), jnp.float64)
    labels = jnp.arange(4) % 3
    for opening in ("conv", "zero"):
        base = dict(input_shape=(6, 6, 2), num_outputs=3, depth=5, width=3, T=1.0, layer=layer, opening=opening,
                    activation="tanh")
        nets = {(impl, layout): ResNet(**base, conv_impl=impl, conv_layout=layout)
                for impl in ("xla", "matmul") for layout in ("NHWC", "CNHW")}
        params = nets["xla", "NHWC"].init(jax.random.PRNGKey(0), jnp.float64)
        res = {key: jax.value_and_grad(lambda p: net.data_loss(net.forward(p, x), labels))(params)
               for key, net in nets.items()}
        ref = res["xla", "NHWC"]
        assert nets["matmul", "CNHW"].open(params, x).shape == nets["matmul", "CNHW"].states_shape(4) == (3, 4, 6, 6)
        for key, (value, grads) in res.items():
            assert abs(float(value - ref[0])) <= 1e-12 * abs(float(ref[0])), key
            for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref[1])):
                assert rel(a, b) <= 1e-12, key


def test_conv_impl_and_layout_are_validated():
    with pytest.raises(ModelError,
                       match=r"model.conv_impl='cudnn' is not valid; choose one of \['auto', 'matmul', 'xla'\]"):
        ResNet(input_shape=(4, 4, 1), num_outputs=2, layer="conv", opening="conv", conv_impl="cudnn")
    assert resolve_conv_impl("auto", "cpu") == "matmul" and resolve_conv_impl("xla") == "xla"
    with pytest.raises(ModelError,
                       match=r"model.conv_layout='NCHW' is not valid; choose one of \['auto', 'NHWC', 'CNHW'\]"):
        ResNet(input_shape=(4, 4, 1), num_outputs=2, layer="conv", opening="conv", conv_layout="NCHW")
    assert resolve_conv_layout("auto", 8, "cpu") == "CNHW" and resolve_conv_layout("auto", 16, "cpu") == "NHWC"
    assert resolve_conv_layout("auto", 4, "gpu") == "NHWC" and resolve_conv_layout("CNHW", 64, "gpu") == "CNHW"


# --- interval batching ----------------------------------------------------------------------------------
def conv_net(depth=12):
    return ResNet(input_shape=(5, 5, 1), num_outputs=3, depth=depth, width=2, T=1.0, layer="conv2",
                  opening="conv", activation="tanh")


def test_resolve_batch():
    assert resolve_batch(0, 64, 10**6) == 64 and resolve_batch(5, 64, 1) == 5 and resolve_batch(100, 64, 1) == 64
    assert resolve_batch("auto", 64, 8, platform="gpu") == 64
    assert resolve_batch("auto", 64, 8, platform="cpu") == 64  # small states: all intervals at once
    assert resolve_batch("auto", 64, 327_680, platform="cpu") == 1  # a conv state of 320 KiB: one at a time
    assert resolve_batch("auto", 64, 100_000, platform="cpu") == 5
    assert resolve_batch("auto", 64, 327_680, platform="cpu", image=False) == 64  # dense: one vmap
    with pytest.raises(ValueError, match=r"solver.interval_batch=-1 must be auto, 0 \(all intervals"):
        MGRITOptions(interval_batch=-1)


@pytest.mark.slow(seconds=29)
def test_iterates_do_not_depend_on_the_interval_batch():
    """Forward and adjoint iterates and the layer gradient: batches of 4 intervals (lax.map; 6 intervals on
    the finest level leave a remainder of 2, the 3 of the next level fit one batch) equal one vmap over all
    intervals (float64)."""
    batch = 4
    net = conv_net()
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 1), jnp.float64)
    y0, theta, hs = net.open(params, x), params["layers"], net.step_sizes(jnp.float64)
    opts = MGRITOptions(cfactor=2, max_levels=3, nrelax=1, max_iter=2, interval_batch=0)
    ref, _ = mgrit_solve(net.step, theta, hs, y0, opts)
    got, _ = mgrit_solve(net.step, theta, hs, y0, replace(opts, interval_batch=batch))
    assert rel(got, ref) <= 1e-13
    ybar = jnp.ones_like(y0)
    w_ref, _ = adjoint_solve(net.step, theta, hs, ref, ybar, opts)
    w_got, _ = adjoint_solve(net.step, theta, hs, ref, ybar, replace(opts, interval_batch=batch))
    assert rel(w_got, w_ref) <= 1e-13
    g_ref = layer_gradient(net.step, theta, hs, ref, w_ref, 0)
    g_got = layer_gradient(net.step, theta, hs, ref, w_ref, batch)
    for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_ref)):
        assert rel(a, b) <= 1e-13


# --- skip the first down-cycle ---------------------------------------------------------------------------
@pytest.mark.slow(seconds=18)
def test_skip_first_down_counts_the_coarse_guess_as_the_first_cycle():
    net = conv_net(depth=16)
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 1), jnp.float64)
    y0, theta, hs = net.open(params, x), params["layers"], net.step_sizes(jnp.float64)
    exact = propagate_states(net.step, theta, hs, y0)
    opts = MGRITOptions(cfactor=2, max_levels=3, nrelax=1, max_iter=2)
    plain1, s1 = mgrit_solve(net.step, theta, hs, y0, replace(opts, max_iter=1))
    skip2, s2 = mgrit_solve(net.step, theta, hs, y0, replace(opts, skip_first_down=True))
    # guess + 1 cycle == 2 cycles with the first one skipped
    assert rel(skip2, plain1) <= 1e-14
    assert int(s2.iterations) == 2 and np.isnan(float(s2.initial_residual))
    assert float(s2.residuals[0]) == pytest.approx(float(s1.initial_residual), rel=1e-12)
    assert float(s2.residuals[1]) == pytest.approx(float(s1.residuals[0]), rel=1e-12)
    # the cycles still converge to the serial states (exact after enough cycles on 3 levels)
    conv, _ = mgrit_solve(net.step, theta, hs, y0, replace(opts, max_iter=10, skip_first_down=True))
    assert rel(conv, exact) <= 1e-12
    # it saves work: one cycle with skip is the guess alone
    guess_only, s = mgrit_solve(net.step, theta, hs, y0, replace(opts, max_iter=1, skip_first_down=True))
    assert int(s.iterations) == 1 and rel(guess_only, exact) > 1e-6


@pytest.mark.slow(seconds=14)
def test_skip_first_down_in_the_one_shot_gradient():
    """One-shot gradients with skip_first_down equal those of one cycle fewer without it (cold start)."""
    net = ResNet(input_shape=(2,), num_outputs=3, depth=16, width=4, T=2.0)
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 2), jnp.float64)
    labels = jnp.arange(3) % 3
    o2 = MGRITOptions(cfactor=2, max_levels=3, nrelax=1, max_iter=2, skip_first_down=True)
    o1 = replace(o2, max_iter=1, skip_first_down=False)
    with_skip = value_and_grad(MGRITSolver(fwd=o2, bwd=o2, warm_start=False), net, params, x, labels, ())
    without = value_and_grad(MGRITSolver(fwd=o1, bwd=o1, warm_start=False), net, params, x, labels, ())
    assert float(with_skip[0]) == pytest.approx(float(without[0]), rel=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(with_skip[2]), jax.tree_util.tree_leaves(without[2])):
        assert rel(a, b) <= 1e-12
