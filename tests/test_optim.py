"""Optimisers: decoupled weight decay (issue 15: it was coupled L2 while documented as decoupled)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lpt.train.optim import make_optimizer

PARAMS = {"w": jnp.asarray([1.0, -2.0, 3.0]), "b": jnp.asarray([0.5])}
GRADS = [{"w": jnp.asarray([0.1, 0.2, -0.3]), "b": jnp.asarray([1.0])},
         {"w": jnp.asarray([-0.4, 0.1, 0.0]), "b": jnp.asarray([-2.0])}]


def _run(opt, params=PARAMS):
    state = opt.init(params)
    for g in GRADS:
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_adam_weight_decay_is_adamw():
    ours = _run(make_optimizer({"name": "adam", "lr": 0.1, "weight_decay": 0.01}))
    ref = _run(optax.adamw(0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01))
    for k in PARAMS:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-6, err_msg=k)
    # decoupled, not L2 in the gradient: Adam's normalisation would make coupled decay of a large weight far
    # weaker than lr·wd·θ
    coupled = _run(optax.chain(optax.add_decayed_weights(0.01), optax.adam(0.1)))
    assert not np.allclose(ours["w"], coupled["w"], rtol=1e-6)


def test_sgd_weight_decay_is_added_after_the_momentum():
    lr, mu, wd = 0.1, 0.9, 0.05
    ours = _run(make_optimizer({"name": "sgd", "lr": lr, "momentum": mu, "weight_decay": wd}))
    theta, trace = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}, {k: 0.0 for k in PARAMS}
    for g in GRADS:
        for k in PARAMS:
            trace[k] = np.asarray(g[k]) + mu * trace[k]
            theta[k] = theta[k] - lr * (trace[k] + wd * theta[k])
    for k in PARAMS:
        np.testing.assert_allclose(ours[k], theta[k], rtol=1e-6, err_msg=k)


def test_no_weight_decay_is_plain_optax():
    for cfg, ref in (({"name": "adam", "lr": 0.1}, optax.adam(0.1)),
                     ({"name": "sgd", "lr": 0.1, "momentum": 0.9}, optax.sgd(0.1, momentum=0.9))):
        ours = _run(make_optimizer(cfg))
        for k, v in _run(ref).items():
            np.testing.assert_array_equal(ours[k], v)


def test_lbfgs_refuses_weight_decay_in_one_line():
    with pytest.raises(ValueError, match=r"optimizer.weight_decay=0.01 is not available with optimizer=lbfgs .* "
                                         r"model.gamma_tik"):
        make_optimizer({"name": "lbfgs", "lr": 1.0, "weight_decay": 0.01})


def test_clip_norm_scales_a_long_gradient_to_the_norm_and_keeps_a_short_one():
    """optimizer.clip_norm (lpt's clip_by_global_norm, whose norm the MPI layer shards replace): u·c/‖u‖ when
    ‖u‖ > c, u unchanged otherwise, as optax's clip_by_global_norm."""
    import jax.numpy as jnp
    import optax

    from lpt.train.optim import clip_by_global_norm

    clip = clip_by_global_norm(1.0)
    state = clip.init({"a": jnp.zeros(2)})
    long = {"a": jnp.asarray([3.0, 4.0])}
    short = {"a": jnp.asarray([0.3, 0.4])}
    np.testing.assert_allclose(clip.update(long, state)[0]["a"], [0.6, 0.8], rtol=1e-12)
    np.testing.assert_array_equal(clip.update(short, state)[0]["a"], short["a"])
    ref = optax.clip_by_global_norm(1.0)
    np.testing.assert_array_equal(clip.update(long, state)[0]["a"], ref.update(long, ref.init(long))[0]["a"])
