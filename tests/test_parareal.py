"""Tests of the parareal neural network (Lee, Park, Lee; lpt.model.parareal) and the CIFAR-10 loader.

    z_1 = g^1(C^1 x),  z_{j+1} = g^{j+1}(C^{j+1} x) + F^j(z_j) − F^j(C^{j+1} x),  output = h(z_{N_p})
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lpt.data import DataError, load_dataset
from lpt.data.cifar10 import load_cifar10
from lpt.logging import read_run
from lpt.model import ModelError, ResNet
from lpt.model.parareal import ParaRealNet, default_coarse_units
from lpt.train import build_dataset, build_model, run
from lpt.train.build import ConfigError
from conftest import child_xla_flags

F64 = jnp.float64


def resnet(layer: str = "dense", *, depth: int = 12, activation: str = "identity", **kw) -> ResNet:
    shape = (6, 6, 2) if layer == "conv" else (5,)
    return ResNet(input_shape=shape, num_outputs=3, depth=depth, width=3, T=2.0, activation=activation,
                  layer=layer, opening="conv" if layer == "conv" else "dense", **kw)


def random_params(model: ParaRealNet, seed: int = 0) -> dict:
    """Parameters of ``model.init``'s shapes, all entries (biases too) N(0, 0.3²), so no term vanishes.

    Drawn with numpy: eager ``jax.random`` compiles one kernel per shape, which costs seconds on a CPU.
    """
    shapes = jax.eval_shape(lambda k: model.init(k, F64), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape)), shapes)


def flat_resnet_params(model: ParaRealNet, params: dict) -> dict:
    """The original ResNet's parameters: the fine units of all subnetworks in order, padding dropped."""
    layers = jax.tree_util.tree_map(lambda t: t.reshape(-1, *t.shape[2:])[:model.depth], params["layers"])
    return {"opening": params["opening"], "layers": layers, "classifier": params["classifier"]}


def inputs(model: ParaRealNet, n: int = 7) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(7).standard_normal((n, *model.resnet.input_shape)))


# --- mathematics ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer,depth,n_p", [("dense", 12, 4), ("conv", 6, 3)])
def test_proposition1_linear_network_with_exact_coarse_propagators(layer, depth, n_p):
    """Lee, Park, Lee Prop. 1: σ = identity and F^j = g^{j+1} reproduce the original ResNet exactly."""
    net = resnet(layer, depth=depth)
    model = ParaRealNet(net, num_parallel=n_p, coarse_units=depth // n_p)
    params = random_params(model)
    params["coarse"] = jax.tree_util.tree_map(lambda t: t[1:], params["layers"])  # F^j := g^{j+1}
    x = inputs(model)
    forward = jax.jit(model.forward)
    reference = jax.jit(net.forward)(flat_resnet_params(model, params), x)
    err = float(jnp.max(jnp.abs(forward(params, x) - reference)))
    assert err < 1e-10 * float(jnp.max(jnp.abs(reference)))
    # The same network with its own coarse propagators F^j ≠ g^{j+1} is a different function.
    own = {**params, "coarse": random_params(model, seed=1)["coarse"]}
    assert float(jnp.max(jnp.abs(forward(own, x) - reference))) > 1e-3


def test_one_subnetwork_is_the_resnet():
    """N_p = 1: no coarse network, no C^j; the output is the ResNet's for any σ."""
    net = resnet("dense", depth=5, activation="tanh")
    model = ParaRealNet(net, num_parallel=1)
    params = random_params(model)
    assert params["coarse"] == {} and params["precond"] == {}
    x = inputs(model)
    np.testing.assert_allclose(model.forward(params, x), net.forward(flat_resnet_params(model, params), x),
                               rtol=1e-13, atol=1e-13)


def test_parallel_part_is_the_subnetworks_and_coarse_part_is_the_parareal_update():
    """Each part against a plain loop over j of the ResNet's own serial propagation."""
    net = resnet("dense", depth=10, activation="tanh")
    model = ParaRealNet(net, num_parallel=4, coarse_units=2)  # U = 3, last subnetwork 1 unit + 2 padding
    params = random_params(model)
    x = inputs(model)
    starts = model.preprocess(params, x)
    fine = model.subnetworks(params, starts)
    np.testing.assert_allclose(starts[0], net.open(params, x), rtol=1e-14)  # C^1 = the ResNet's opening
    for j in range(1, 4):  # C^{j+1} x = σ(W_j x + b_j), dense
        pre = params["precond"]
        np.testing.assert_allclose(starts[j], jnp.tanh(x @ pre["W"][j - 1].T + pre["b"][j - 1]), rtol=1e-13)
    counts = model.unit_counts()
    assert list(counts) == [3, 3, 3, 1] and model.padding == 2
    z = None
    for j in range(4):
        th_g = jax.tree_util.tree_map(lambda t: t[j, :counts[j]], params["layers"])
        g_j = jax.lax.scan(lambda y, th: (net.step(th, y, net.h), None), starts[j], th_g)[0]
        np.testing.assert_allclose(fine[j], g_j, rtol=1e-12, atol=1e-12)
        if j == 0:
            z = g_j
            continue
        th = jax.tree_util.tree_map(lambda t: t[j - 1], params["coarse"])
        h_c = counts[j] * net.h / 2
        f = lambda y: jax.lax.scan(lambda y, t: (net.step(t, y, h_c), None), y, th)[0]  # noqa: E731
        z = g_j + f(z) - f(starts[j])
    np.testing.assert_allclose(model.coarse(params, fine, starts), z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.forward(params, x), net.head(params, z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_gradient_matches_central_finite_differences(layer):
    """∇ of loss + regularisation against central differences along random directions (float64)."""
    net = resnet(layer, depth=5, activation="tanh", gamma_tik=0.01, gamma_ddt=0.001, gamma_class=0.1)
    model = ParaRealNet(net, num_parallel=3, coarse_units=2)  # U = 2: one padding unit
    params = random_params(model, seed=3)
    x = inputs(model, 4)
    y = jnp.array([0, 1, 2, 1])

    @jax.jit
    def objective(p):
        return model.data_loss(model.forward(p, x), y) + model.regularization(p)

    grad = jax.jit(jax.grad(objective))(params)
    for i in range(3):
        v = random_params(model, seed=50 + i)
        eps = 1e-5
        plus = objective(jax.tree_util.tree_map(lambda p, d: p + eps * d, params, v))
        minus = objective(jax.tree_util.tree_map(lambda p, d: p - eps * d, params, v))
        fd = (plus - minus) / (2 * eps)
        exact = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(v)))
        assert abs(float(fd - exact)) < 1e-7 * max(1.0, abs(float(exact)))
    # Identity padding units (h = 0) get no gradient from the loss, and stay zero under Tikhonov.
    assert float(jnp.max(jnp.abs(grad["layers"]["K"][-1, 1:]))) < 1e-12 or model.padding == 0


def test_regularization_is_the_resnets_plus_each_coarse_network():
    net = resnet("dense", depth=6, activation="tanh", gamma_tik=0.3, gamma_ddt=0.02, gamma_class=0.5)
    model = ParaRealNet(net, num_parallel=3, coarse_units=4)
    params = random_params(model)
    expected = net.regularization(flat_resnet_params(model, params))
    h_c = 2 * net.h / 4
    for j in range(2):
        for t in (params["coarse"]["K"][j], params["coarse"]["b"][j]):
            expected += 0.5 * (0.3 * jnp.sum(t**2) + 0.02 * jnp.sum(((t[1:] - t[:-1]) / h_c) ** 2))
    np.testing.assert_allclose(model.regularization(params), expected, rtol=1e-12)


# --- settings ---------------------------------------------------------------------------------------

def test_defaults_and_shapes():
    net = resnet("conv", depth=12)
    model = ParaRealNet(net, num_parallel=4)
    assert model.coarse_units == default_coarse_units(4) == 3 and model.precond == "conv1x1"
    assert (model.depth, model.width, model.layer, model.activation) == (12, 3, "conv", "identity")
    shapes = jax.tree_util.tree_map(jnp.shape, jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    assert shapes["layers"] == {"K": (4, 3, 3, 3, 3, 3), "b": (4, 3, 3)}
    assert shapes["coarse"] == {"K": (3, 3, 3, 3, 3, 3), "b": (3, 3, 3)}
    assert shapes["precond"] == {"W": (3, 1, 1, 2, 3), "b": (3, 3)}
    assert default_coarse_units(5) == 3 and default_coarse_units(12) == 1 and default_coarse_units(24) == 1
    # Same key: the network starts from the original ResNet's parameters.
    net = resnet("dense", depth=4)
    model = ParaRealNet(net, num_parallel=2)
    p_net, p_par = net.init(jax.random.PRNGKey(1)), model.init(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(flat_resnet_params(model, p_par)["layers"]["K"], p_net["layers"]["K"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_parallel=40), "model.num_parallel=40 exceeds model.depth=32"),
    (dict(num_parallel=0), "model.num_parallel=0 must be an integer ≥ 1"),
    (dict(coarse_units=0), "model.coarse_units=0 must be an integer ≥ 1 or null"),
    (dict(num_parallel=2.5), "model.num_parallel=2.5"),
    (dict(num_parallel=12), "leave subnetwork 12 empty"),  # ⌈32/12⌉ = 3 units: 11 subnetworks hold all 32
    (dict(precond="conv1x1"), "model.precond='conv1x1' does not fit model.layer=dense"),
])
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ParaRealNet(resnet("dense", depth=32), **kwargs)


class _Data:
    x_train = np.zeros((4, 5), np.float32)
    num_outputs = 3
    task = "classification"


def test_from_config_and_mgrit_is_refused():
    cfg = dict(arch="parareal", layer="dense", depth=8, width=3, T=1.0, activation="tanh", opening=None,
               num_parallel=2, coarse_units=None, precond=None, gamma_tik=0.0)
    model = build_model(cfg, _Data())
    assert isinstance(model, ParaRealNet) and model.coarse_units == 6 and model.resnet.opening == "dense"
    with pytest.raises(ConfigError, match="unknown option"):
        build_model({**cfg, "cfactor": 2}, _Data())
    with pytest.raises(ModelError, match="model.num_parallel=9 exceeds model.depth=8"):
        build_model({**cfg, "num_parallel": 9}, _Data())
    with pytest.raises(ModelError, match="model.arch=parareal.*solver=serial"):
        model.step({}, jnp.zeros((1, 3)), 0.1)


# --- training ---------------------------------------------------------------------------------------

def composed(overrides: list[str]) -> dict:
    with initialize_config_module(config_module="lpt.configs", version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)


MNIST_BUDGET = ["dataset.n_train=2000", "dataset.n_val=2000", "train.steps=200", "train.batch_size=32",
                "train.eval_every=200", "logging.progress=false"]


@pytest.mark.optimized
@pytest.mark.slow(seconds=31)
def test_parareal_mnist_matches_the_plain_resnet(shared_data, tmp_path):
    """+experiment=parareal_mnist on a short budget vs the same ResNet (model=conv) with the same budget."""
    common = ["+experiment=parareal_mnist", f"data_dir={shared_data}", *MNIST_BUDGET]
    pr_cfg = composed(common)
    plain_cfg = composed([*common, "model=conv", "~model.coarse_units"])
    assert pr_cfg["model"]["arch"] == "parareal" and plain_cfg["model"]["arch"] == "resnet"
    for key in ("layer", "depth", "width", "T", "activation"):
        assert pr_cfg["model"][key] == plain_cfg["model"][key]
    pr = run(pr_cfg, tmp_path / "parareal")
    plain = run(plain_cfg, tmp_path / "plain")
    acc_pr, acc_plain = pr.final["val_acc"], plain.final["val_acc"]
    print(f"\nvalidation accuracy: parareal {acc_pr:.4f}, plain ResNet {acc_plain:.4f}")
    assert acc_pr >= acc_plain - 0.01
    record = read_run(pr.log_path)
    assert list(record.history["step"]) == list(range(1, 201))
    assert np.isfinite(record.history["loss"]).all()
    assert np.count_nonzero(np.isfinite(record.history["val_acc"])) == 1
    assert "arch: parareal" in record.attrs["config"]


@pytest.mark.slow(seconds=17)
def test_lpt_train_cli_runs_parareal(tmp_path):
    """`lpt-train model=parareal` on the default (peaks) data writes its HDF5 log."""
    exe = Path(sys.executable).with_name("lpt-train")
    cmd = [str(exe) if exe.exists() else "lpt-train", "model=parareal", "model.depth=6", "model.num_parallel=3",
           "train.steps=3", "train.eval_every=3", "dataset.n_train=50", "dataset.n_val=20",
           f"hydra.run.dir={tmp_path}", "logging.progress=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XLA_FLAGS": child_xla_flags(), "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    record = read_run(tmp_path)
    assert list(record.history["step"]) == [1, 2, 3] and "num_parallel: 3" in record.attrs["config"]


# --- CIFAR-10 ---------------------------------------------------------------------------------------

def write_cifar(folder: Path, n_per_batch: int = 12, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Synthetic CIFAR-10 python batches (Python-2-style dicts with byte-string keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2)
        batches[name] = (data, labels)
    return batches


def test_cifar10_reads_python_batches(tmp_path):
    batches = write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=tmp_path, n_train=30, n_val=5)
    assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_val.shape == (5, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.num_outputs == 10
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    data1, labels1 = batches["data_batch_1"]
    data3, labels3 = batches["data_batch_3"]
    # Row layout: channel planes of 32×32, row-major; image 2, row 5, column 7, green.
    assert ds.x_train[2, 5, 7, 1] == np.float32(data1[2, 1024 + 5 * 32 + 7] / 255)
    assert ds.x_train[24, 31, 0, 2] == np.float32(data3[0, 2048 + 31 * 32] / 255)
    assert list(ds.y_train[:12]) == labels1 and list(ds.y_train[24:30]) == labels3[:6]
    assert list(ds.y_val) == batches["test_batch"][1][:5]
    full = load_cifar10(data_dir=tmp_path, standardize=True, dtype="float64")
    assert full.x_train.shape == (60, 32, 32, 3) and full.x_val.shape == (12, 32, 32, 3)
    np.testing.assert_allclose(full.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(full.x_train.std(axis=(0, 1, 2)), 1, atol=1e-12)


@pytest.mark.parametrize("sub", ["cifar-10-batches-py", "."])
def test_cifar10_other_folders(tmp_path, sub):
    write_cifar(tmp_path / sub, n_per_batch=3)
    assert load_cifar10(data_dir=tmp_path).x_train.shape == (15, 32, 32, 3)


def test_cifar10_missing_and_malformed_data(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar10(data_dir=tmp_path / "nowhere")
    text = str(err.value)
    assert "data_batch_1" in text and "https://www.cs.toronto.edu/~kriz/cifar.html" in text
    assert str(tmp_path / "nowhere" / "cifar10" / "cifar-10-batches-py") in text
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, n_per_batch=3)
    with pytest.raises(DataError, match="n_train=16"):
        load_cifar10(data_dir=tmp_path, n_train=16)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(data_dir=tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    with pytest.raises(DataError, match=r"shape \(3, 1024\)"):
        load_cifar10(data_dir=tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}, f, protocol=2)
    with pytest.raises(DataError, match="labels"):
        load_cifar10(data_dir=tmp_path)
    with open(folder / "test_batch", "wb") as f:  # a pickle that would call a function when loaded
        pickle.dump({b"data": os.getcwd, b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="not allowed"):
        load_cifar10(data_dir=tmp_path)


def test_parareal_cifar10_preset_builds_on_synthetic_batches(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", n_per_batch=8)
    cfg = composed(["+experiment=parareal_cifar10", f"data_dir={tmp_path}", "dataset.n_train=16",
                    "dataset.n_val=8"])
    assert cfg["model"]["arch"] == "parareal" and cfg["dataset"]["standardize"] is True
    data = build_dataset(cfg)
    model = build_model(cfg["model"], data)
    assert isinstance(model, ParaRealNet) and model.precond == "conv1x1" and model.units == 12
    assert data.x_train.shape == (16, 32, 32, 3)
    out = jax.eval_shape(lambda k, x: model.forward(model.init(k), x), jax.random.PRNGKey(0), data.x_train)
    assert out.shape == (16, 10)
