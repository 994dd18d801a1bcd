"""The transformer as an ODE (``model=transformer``): the block step, causality, MGRIT parity with the serial
network (states and gradient), the Shakespeare data set and its split, option errors, the two presets."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpt.cli.compose import compose_config
from lpt.data import DataError, load_dataset
from lpt.data.shakespeare import split_windows
from lpt.logging import read_run
from lpt.mgrit import MGRITOptions, MGRITSolver, mgrit_solve
from lpt.model import ModelError, propagate_states
from lpt.model.transformer import Transformer, attention, layer_norm
from lpt.train import ConfigError, run
from lpt.train.solver import SerialSolver

F64 = jnp.float64


def vit(depth: int = 8, dtype=F64, **kw):
    """A tiny vision transformer on 8×8×1 images (4×4 patches → 4 tokens, d = 8), its parameters, inputs, labels."""
    model = Transformer(input_shape=(8, 8, 1), num_outputs=3, depth=depth, d_model=8, heads=2, patch=4, **kw)
    params = model.init(jax.random.PRNGKey(0), dtype)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1), dtype)
    return model, params, x, jnp.arange(4) % 3


def charlm(depth: int = 8, dtype=F64, **kw):
    """A tiny causal character model (vocabulary 11, context 6, d = 8)."""
    model = Transformer(input_shape=(6,), num_outputs=11, depth=depth, d_model=8, heads=2, task="sequence", **kw)
    params = model.init(jax.random.PRNGKey(0), dtype)
    x = jax.random.randint(jax.random.PRNGKey(1), (3, 6), 0, 11)
    return model, params, x, jnp.roll(x, -1, axis=1)


def block_by_hand(t, X, h, heads, causal):
    """X + h(φ₁(X) + φ₂(X + φ₁(X))) written out, with a Python loop over heads."""
    z = layer_norm(X, t["ln1_s"], t["ln1_b"])
    dh, L = X.shape[-1] // heads, X.shape[1]
    outs = []
    for i in range(heads):
        cols = slice(i * dh, (i + 1) * dh)
        q, k, v = z @ t["Wq"][:, cols], z @ t["Wk"][:, cols], z @ t["Wv"][:, cols]
        s = q @ jnp.swapaxes(k, 1, 2) / np.sqrt(dh)
        if causal:
            s = jnp.where(np.tril(np.ones((L, L))) > 0, s, -jnp.inf)
        outs.append(jax.nn.softmax(s, axis=-1) @ v)
    phi1 = jnp.concatenate(outs, axis=-1) @ t["Wo"]
    u = layer_norm(X + phi1, t["ln2_s"], t["ln2_b"])
    phi2 = jax.nn.gelu(u @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
    return X + h * (phi1 + phi2)


def perturbed(params, scale=0.1):
    """Parameters with every leaf shifted randomly (non-zero LayerNorm offsets and biases too)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    return tree.unflatten([a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


@pytest.mark.parametrize("make", [vit, charlm])
def test_serial_forward_is_the_explicit_block_loop(make):
    model, params, x, _ = make(depth=5)
    params = perturbed(params)
    X = model.open(params, x)
    block = jax.jit(partial(block_by_hand, heads=model.heads, causal=model.is_causal))
    for n in range(model.depth):
        X = block(jax.tree_util.tree_map(lambda a: a[n], params["layers"]), X, model.h)
    np.testing.assert_allclose(jax.jit(model.forward)(params, x), model.head(params, X), rtol=1e-12, atol=1e-12)


def test_patch_embedding_reads_row_major_patches():
    model, params, x, _ = vit()
    patch_1 = x[:, 0:4, 4:8, :].reshape(4, -1)  # second patch: rows 0-3, columns 4-7
    expected = patch_1 @ params["opening"]["W"] + params["opening"]["b"] + params["opening"]["pos"][1]
    np.testing.assert_allclose(model.open(params, x)[:, 1], expected, rtol=1e-13)


def test_causal_outputs_do_not_depend_on_later_inputs():
    model, params, x, _ = charlm()
    params = perturbed(params)
    forward = jax.jit(model.forward)
    out = forward(params, x)
    later = x.at[:, 3:].set((x[:, 3:] + 5) % 11)  # change positions 3..5
    out2 = forward(params, later)
    np.testing.assert_allclose(out2[:, :3], out[:, :3], rtol=1e-13, atol=1e-13)
    assert float(jnp.max(jnp.abs(out2[:, 3:] - out[:, 3:]))) > 1e-3
    # without the mask every position sees all: an image model's attention is not causal
    z = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 8), F64)
    theta0 = jax.tree_util.tree_map(lambda a: a[0], params["layers"])
    full, masked = attention(theta0, z, 2, False), attention(theta0, z, 2, True)
    np.testing.assert_allclose(full[:, -1], masked[:, -1], rtol=1e-13)  # the last position sees all in both
    assert float(jnp.max(jnp.abs(full[:, 0] - masked[:, 0]))) > 1e-3


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("make, restrict", [(vit, "inject"), (charlm, "average")])
def test_mgrit_states_converge_to_the_serial_states(make, restrict):
    model, params, x, _ = make(depth=16)
    params = perturbed(params)
    y0 = model.open(params, x)
    serial = propagate_states(model.step, params["layers"], model.step_sizes(F64), y0)
    opts = MGRITOptions(cfactor=2, max_levels=3, nrelax=1, max_iter=5, restrict=restrict)
    ys, stats = jax.jit(partial(mgrit_solve, model.step, options=opts))(params["layers"], model.step_sizes(F64), y0)
    res = np.asarray(stats.residuals) / float(stats.state_norm)
    assert np.all(res[1:3] < 0.5 * res[:2]) and res[-1] < 1e-13, res  # then exact: at round-off
    np.testing.assert_allclose(ys, serial, rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(serial))))


@pytest.mark.slow(seconds=50)
@pytest.mark.parametrize("make", [vit, charlm])
def test_converged_mgrit_gradient_equals_jax_grad_of_the_serial_loss(make):
    model, params, x, y = make(depth=8, gamma_tik=1e-3, gamma_ddt=1e-3, gamma_class=1e-3)
    params = perturbed(params)
    opts = MGRITOptions(cfactor=2, max_levels=2, nrelax=1, max_iter=8, abs_tol=1e-13)
    solver = MGRITSolver(fwd=opts, bwd=opts, warm_start=False)
    obj, aux, grads, _, stats = jax.jit(solver.value_and_grad, static_argnums=0)(model, params, x, y, ())
    ref_obj, _, ref_grads, _, _ = jax.jit(SerialSolver().value_and_grad, static_argnums=0)(model, params, x, y, ())
    assert not stats["fallback"]
    assert abs(float(obj - ref_obj)) < 1e-12 * abs(float(ref_obj))
    flat = lambda t: jnp.concatenate([a.ravel() for a in jax.tree_util.tree_leaves(t)])  # noqa: E731
    err = float(jnp.linalg.norm(flat(grads) - flat(ref_grads)) / jnp.linalg.norm(flat(ref_grads)))
    assert err < 1e-9, err
    assert aux["outputs"].shape == ((3, 6, 11) if model.task == "sequence" else (4, 3))


def test_float32_forward_stays_float32_and_matches_float64():
    model, params64, x, _ = vit()
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params64)
    out32 = model.forward(params32, x.astype(jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, model.forward(params64, x), rtol=1e-4, atol=1e-5)


def test_sequence_loss_is_nats_per_character_and_accuracy_per_character():
    model, params, x, y = charlm()
    out = model.forward(params, x)
    logp = jax.nn.log_softmax(out)
    manual = -np.mean([logp[b, t, y[b, t]] for b in range(3) for t in range(6)])
    assert float(model.data_loss(out, y)) == pytest.approx(manual, rel=1e-12)
    acc = np.mean(np.argmax(out, -1) == np.asarray(y))
    assert float(model.metrics(out, y)["acc"]) == pytest.approx(acc)


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=30, heads=4), "model.d_model=30 is not divisible by model.heads=4"),
    (dict(patch=5), "model.patch=5 does not divide the 8×8 images; choose a common divisor of 8 and 8 (e.g. 2, 4, 8)"),
    (dict(heads=0), "model.heads=0 must be an integer ≥ 1"),
    (dict(T=0.0), "model.T=0.0 must be a positive finite number"),
    (dict(causal="yes"), "model.causal='yes' must be true, false or null"),
    (dict(embed_scale=0.0), "model.embed_scale=0.0 must be a positive finite number"),
    (dict(input_shape=(64,)), "needs image inputs (H, W, C)"),
    (dict(task="regression"), "this data set's task is 'regression'"),
    (dict(task="sequence", input_shape=(6,), causal=False), "model.causal=false with a sequence data set"),
])
def test_bad_options_are_one_clear_line(kwargs, message):
    base = dict(input_shape=(8, 8, 1), num_outputs=3, d_model=8, heads=2, patch=4)
    with pytest.raises(ModelError) as info:
        Transformer(**{**base, **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("make", [vit, charlm])
def test_the_block_jacobian_falls_as_the_embedding_grows(make):
    """The attention sees X through LayerNorm only and the MLP through LN(X + attention), so ρ(∂Φ/∂X) at
    X_0 = c·embedding falls about as 1/c once ‖X‖ outgrows the attention's output (c = 1 → 4: less than 0.35 of
    it for both tiny models; on vit_mnist at N = 16 the first coarse level's H·ρ is 13.1 / 3.5 / 0.93 for
    c = 1, 4, 16, README "Transformers"):
    ``model.embed_scale`` is the knob for stable coarse MGRIT steps (H·ρ < 2)."""
    from lpt.mgrit.stability import spectral_radius

    rho = []
    for c in (1.0, 4.0):
        model, params, x, _ = make(embed_scale=c)
        theta = jax.tree_util.tree_map(lambda a: a[0], params["layers"])
        y0 = model.open(params, x)
        np.testing.assert_allclose(y0, c * make()[0].open(params, x), rtol=1e-12)
        rho.append(float(spectral_radius(model.step, theta, y0, iters=60, burn=20)))
    assert 0.15 < rho[1] / rho[0] < 0.35, rho


def test_bad_config_values_are_refused_before_loading(tmp_path):
    with pytest.raises(ModelError, match="model.d_model=30 is not divisible by model.heads=4"):
        run(compose_config(["+experiment=vit_mnist", "model.d_model=30", "model.heads=4"]), tmp_path)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['width'\] for model.arch=transformer"):
        run(compose_config(["+experiment=vit_mnist", "+model.width=8"]), tmp_path)


# --- the Shakespeare data set ------------------------------------------------------------------------------
def test_split_windows_contiguous_blocks_no_overlap_seeded():
    n, context, block = 10_000, 16, 1000
    train, val = split_windows(n, context, block, 0.2, np.random.default_rng(0))
    train2, val2 = split_windows(n, context, block, 0.2, np.random.default_rng(0))
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert not np.array_equal(val, split_windows(n, context, block, 0.2, np.random.default_rng(1))[1])
    val_blocks = np.unique(val // block)
    assert len(val_blocks) == 2 and not np.isin(train // block, val_blocks).any()
    # every window (context + 1 characters) lies inside one block, in the text, and windows do not share targets
    for starts in (train, val):
        assert np.all(starts // block == (starts + context) // block) and np.all(starts + context < n)
        assert np.all(np.diff(np.sort(starts)) >= context)
    assert len(train) + len(val) == 10 * ((block - 1) // context)


def test_shakespeare_windows_are_the_text_shifted_by_one(shared_data):
    data = load_dataset("shakespeare", data_dir=shared_data, seed=3, context=32, n_train=200, n_val=50)
    assert data.task == "sequence" and data.num_outputs == 80 and data.x_train.shape == (200, 32)
    assert data.x_val.shape == data.y_val.shape == (50, 32) and data.x_train.dtype == np.int32
    np.testing.assert_array_equal(data.x_train[:, 1:], data.y_train[:, :-1])
    again = load_dataset("shakespeare", data_dir=shared_data, seed=3, context=32, n_train=200, n_val=50)
    np.testing.assert_array_equal(again.x_val, data.x_val)


def test_shakespeare_errors(tmp_path, shared_data):
    with pytest.raises(DataError, match=r"no plays \(\*_gut.txt\) found in .*shakespeare"):
        load_dataset("shakespeare", data_dir=tmp_path)
    with pytest.raises(DataError, match="invalid option context=0; expected an integer >= 1"):
        load_dataset("shakespeare", data_dir=shared_data, context=0)
    with pytest.raises(DataError, match="invalid option n_val=100000; this split has only"):
        load_dataset("shakespeare", data_dir=shared_data, n_val=100_000)


# --- the presets through the CLI's run -----------------------------------------------------------------------
TINY_VIT = ["dataset.n_train=64", "dataset.n_val=32", "model.depth=8", "model.d_model=16", "train.batch_size=16",
            "train.steps=4", "train.eval_every=2"]


@pytest.mark.slow(seconds=60)
def test_vit_mnist_preset_trains_with_mgrit_and_adaptive_control(tmp_path, shared_data):
    # min_coarse 2: the preset's 8 would leave depth 8 a single level (a serial sweep, no coarse level to test)
    cfg = compose_config(["+experiment=vit_mnist", *TINY_VIT, "solver=mgrit", "solver.min_coarse=2",
                          "solver.control=adaptive", "solver.control_every=2", "solver.control_min_cos=0.0",
                          f"data_dir={shared_data}"])
    result = run(cfg, tmp_path)
    rec = read_run(result.log_path)
    h, m = rec.history, rec.mgrit
    np.testing.assert_array_equal(h["step"], [1, 2, 3, 4])
    assert np.all(np.isfinite(h["loss"])) and np.isfinite(h["val_acc"][-1]) and rec.attrs["status"] == "completed"
    # the adaptive control checked the gradient at steps 2 and 4 against the exact one, and it was close
    checked = np.flatnonzero(np.isfinite(m["grad_cos"])) + 1
    np.testing.assert_array_equal(checked, [2, 4])
    assert np.all(m["grad_cos"][checked - 1] > 0.9) and np.all(m["mode"] == 0)


@pytest.mark.slow(seconds=30)
def test_charlm_preset_reports_nats_per_character(tmp_path, shared_data):
    cfg = compose_config(["+experiment=charlm_shakespeare", "dataset.context=16", "dataset.n_train=64",
                          "dataset.n_val=32", "model.depth=4", "model.d_model=16", "train.batch_size=16",
                          "train.steps=3", "train.eval_every=3", f"data_dir={shared_data}"])
    result = run(cfg, tmp_path)
    h = read_run(result.log_path).history
    # at initialisation the loss is about ln 80 = 4.38 nats per character; accuracy is per character
    assert 3.0 < h["val_loss"][-1] < 6.0 and 0.0 <= h["val_acc"][-1] <= 1.0
    assert abs(h["loss"][0] - np.log(80)) < 1.5
    # the README's sampler reads the run's config and checkpoint: the prompt and 20 characters of the vocabulary
    import subprocess
    import sys
    from pathlib import Path

    from lpt.data.shakespeare import shakespeare_vocabulary

    script = Path(__file__).resolve().parents[1] / "scripts" / "sample_charlm.py"
    out = [subprocess.run([sys.executable, str(script), str(tmp_path), "--chars", "20", "--prompt", "ROMEO.",
                           "--seed", "0"], capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert out[0].returncode == 0, out[0].stderr[-2000:]
    text = out[0].stdout[:-1]  # print's newline
    assert text.startswith("ROMEO.") and len(text) == 26 and set(text) <= set(shakespeare_vocabulary(shared_data))
    assert out[1].stdout == out[0].stdout  # seeded


@pytest.mark.slow(seconds=25)
def test_vit_mnist_preset_mgrit_factor_is_bounded_in_depth(capsys, shared_data):
    """The preset's hierarchy (cfactor 2 down to min_coarse = 8 steps) keeps the coarsest step H = T/8 at every
    depth, and at its initial weights (init_scale 0.5) H·ρ < 0.5 on every coarse level: the cold solve's factor
    is the same at N = 16 and 64 (README "Transformers": 0.167 / 0.188 / 0.188 at N = 16 / 32 / 64, 32 samples,
    8 cycles; with init_scale 1, H·ρ ≈ 1.75 on the coarsest level and 0.138 / 0.561 / 0.660, not flat)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_convergence.py"
    spec = importlib.util.spec_from_file_location("check_convergence", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def report(depth: int) -> tuple[list[int], list[float], float]:
        script.main(["vit_mnist", f"model.depth={depth}", "dataset.n_train=16", "dataset.n_val=8", "--samples", "8",
                     "--cycles", "6", f"data_dir={shared_data}"])
        out = capsys.readouterr().out.splitlines()
        levels = [int(n) for n in out[0].split("levels (steps) [")[1].rstrip("]").split(",")]
        hrho = [float(v) for v in out[1].split(":")[1].split()]
        return levels, hrho, float(out[-1].split(":")[1])

    factors = []
    for depth in (16, 64):
        levels, hrho, factor = report(depth)
        assert levels == [depth // 2**k for k in range(len(levels))] and levels[-1] == 8, levels
        assert max(hrho) < 0.5, hrho
        factors.append(factor)
    assert max(factors) < 0.3 and max(factors) < 1.5 * min(factors), factors
