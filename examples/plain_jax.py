"""A deep residual MLP in plain JAX, trained with optax through lpt.layer_parallel (one-shot, warm-started)."""
import jax
import jax.numpy as jnp
import optax

import lpt

N, WIDTH, T = 32, 8, 2.0
keys = jax.random.split(jax.random.PRNGKey(0), 4)
x = jax.random.uniform(keys[0], (256, 2), minval=-2, maxval=2)
target = jnp.sin(x[:, :1]) * jnp.cos(x[:, 1:])
params = {"open": jax.random.normal(keys[1], (2, WIDTH)),
          "layers": {"W": 0.3 * jax.random.normal(keys[2], (N, WIDTH, WIDTH)), "b": jnp.zeros((N, WIDTH))},
          "head": 0.3 * jax.random.normal(keys[3], (WIDTH, 1))}


def f(theta, y):  # one layer: y_{n+1} = y_n + h·tanh(y_n W_n + b_n)
    return jnp.tanh(y @ theta["W"] + theta["b"])


step = lpt.residual(f)
lp = lpt.layer_parallel(step, lpt.LayerParallelOptions(T=T))


def loss(params, warm):  # warm=None: converged solves; a Warm: one-shot (2 forward, 1 adjoint cycle)
    y0 = x @ params["open"]
    y_final = lp(params["layers"], y0) if warm is None else lp.one_shot(params["layers"], y0, warm)
    return jnp.mean((y_final @ params["head"] - target) ** 2)


def scan_loss(params):  # the same network by lax.scan
    body = lambda y, theta: (step(theta, y, T / N), None)  # noqa: E731
    y_final = jax.lax.scan(body, x @ params["open"], params["layers"])[0]
    return jnp.mean((y_final @ params["head"] - target) ** 2)


g_lp, g_scan = jax.grad(loss)(params, None), jax.grad(scan_loss)(params)
error = optax.global_norm(jax.tree_util.tree_map(jnp.subtract, g_lp, g_scan)) / optax.global_norm(g_scan)
print(f"gradient check: relative error {error:.1e} against jax.grad of lax.scan (float32)")

opt = optax.adam(1e-2)


@jax.jit
def train_step(params, opt_state, warm):
    value, (grads, warm) = jax.value_and_grad(loss, argnums=(0, 1))(params, warm)  # d/dwarm: the next warm start
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, warm, value


opt_state, warm = opt.init(params), lp.init_warm(params["layers"], x @ params["open"])
losses = []
for _ in range(200):
    params, opt_state, warm, value = train_step(params, opt_state, warm)
    losses.append(float(value))
print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} after {len(losses)} one-shot adam steps; "
      f"serial loss at the end {float(scan_loss(params)):.4f}")
