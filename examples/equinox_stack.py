"""An Equinox ResNet whose residual layers are one stacked module (``eqx.filter_vmap``), made layer-parallel by
lpt.layer_parallel: ``eqx.partition`` splits the stack into the stacked parameter pytree θ (leading axis N) and
the static rest, which the step closes over."""
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import lpt

N, WIDTH, T = 24, 8, 1.0


class Layer(eqx.Module):
    linear: eqx.nn.Linear

    def __init__(self, key):
        self.linear = eqx.nn.Linear(WIDTH, WIDTH, key=key)

    def __call__(self, y):  # y: (batch, WIDTH)
        return jnp.tanh(jax.vmap(self.linear)(y))


class Net(eqx.Module):
    opening: eqx.nn.Linear
    layers: Layer  # N layers stacked: every array has a leading axis N
    head: eqx.nn.Linear

    def __init__(self, key):
        k_open, k_layers, k_head = jax.random.split(key, 3)
        self.opening = eqx.nn.Linear(2, WIDTH, key=k_open)
        self.layers = eqx.filter_vmap(Layer)(jax.random.split(k_layers, N))
        self.head = eqx.nn.Linear(WIDTH, 1, key=k_head)


keys = jax.random.split(jax.random.PRNGKey(0), 2)
net = Net(keys[0])
theta, static = eqx.partition(net.layers, eqx.is_array)  # θ: the stacked weights; static: the rest of the layers
step = lpt.residual(lambda theta_n, y: eqx.combine(theta_n, static)(y))  # y + h·layer_n(y)
lp = lpt.layer_parallel(step, lpt.LayerParallelOptions(T=T))

x = jax.random.uniform(keys[1], (128, 2), minval=-2, maxval=2)
target = jnp.sin(x[:, :1]) * jnp.cos(x[:, 1:])


def loss(net, layer_parallel=True):
    theta = eqx.filter(net.layers, eqx.is_array)
    y0 = jax.vmap(net.opening)(x)
    if layer_parallel:
        y_final = lp(theta, y0)
    else:  # the same network by lax.scan
        y_final = jax.lax.scan(lambda y, theta_n: (step(theta_n, y, T / N), None), y0, theta)[0]
    return jnp.mean((jax.vmap(net.head)(y_final) - target) ** 2)


g_lp = eqx.filter_grad(loss)(net)
g_scan = eqx.filter_grad(lambda n: loss(n, layer_parallel=False))(net)
error = optax.global_norm(jax.tree_util.tree_map(jnp.subtract, g_lp, g_scan)) / optax.global_norm(g_scan)
print(f"gradient check: relative error {error:.1e} against jax.grad of lax.scan (float32)")

opt = optax.adam(1e-2)
opt_state = opt.init(eqx.filter(net, eqx.is_array))


@eqx.filter_jit
def train_step(net, opt_state):
    value, grads = eqx.filter_value_and_grad(loss)(net)
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(net, eqx.is_array))
    return eqx.apply_updates(net, updates), opt_state, value


losses = []
for _ in range(60):
    net, opt_state, value = train_step(net, opt_state)
    losses.append(float(value))
print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} after {len(losses)} adam steps")
