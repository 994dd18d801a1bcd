"""Measuring a network's costs on this machine (``lpt-model calibrate``): the cost curves of a
:class:`lpt.perfmodel.costs.Profile`.

Every time is the minimum of ``repeats`` runs of a jitted function after a warm-up run (compilation
excluded), each ended by ``block_until_ready``: the minimum is the estimate least disturbed by other work on
a shared machine. Per-step costs inside a scan are the slope of t(k) = t_0 + k·c over two
scan lengths k, so launch and dispatch costs drop out; the launch cost of a sweep inside a compiled program
is the slope over the number of chained scans in one jitted function, less their steps.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from lpt.perfmodel.config import profile_key_for
from lpt.perfmodel.costs import CostCurve, Profile

SCAN_LENGTHS = (2, 10)
MAX_STATE_BYTES = 64 * 2**20
"""Largest stacked state measured (bytes); the curves continue proportionally beyond."""


def wall_times(fn: Callable, *args, repeats: int = 5) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn(*args)`` in seconds, each ended by ``block_until_ready``, after
    one warm-up call (which compiles)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def best_time(fn: Callable, *args, repeats: int = 5) -> float:
    """Minimum wall time of ``fn(*args)`` in seconds over ``repeats`` calls after one warm-up call."""
    return min(wall_times(fn, *args, repeats=repeats))


def dispatch_time(repeats: int = 50) -> float:
    """Cost of calling a trivial jitted function (subtracted from intercepts)."""
    f = jax.jit(lambda x: x + 1)
    return best_time(f, jnp.zeros((), jnp.float32), repeats=repeats)


def _broadcast(tree: Any, shape: tuple[int, ...]) -> Any:
    """Every leaf repeated to a leading ``shape`` (materialised, as the solver's stacked weights are)."""
    return jax.tree_util.tree_map(lambda a: jnp.array(jnp.broadcast_to(a, (*shape, *a.shape))), tree)


def _sizes(limit: int, factor: int = 2) -> list[int]:
    out, n = [], 1
    while n <= limit:
        out.append(n)
        n *= factor
    if out[-1] != limit:
        out.append(limit)
    return out


class Bench:
    """Measurements for one network ``model`` (a :class:`lpt.model.ResNet`) at batch ``batch``."""

    def __init__(self, model, batch: int, dtype=jnp.float32, repeats: int = 5, seed: int = 0):
        self.model, self.batch, self.dtype, self.repeats = model, batch, jnp.dtype(dtype), repeats
        key_p, key_x = jax.random.split(jax.random.PRNGKey(seed))
        params = model.init(key_p, self.dtype)
        self.theta1 = jax.tree_util.tree_map(lambda a: a[0], params["layers"])
        x = jax.random.normal(key_x, (batch, *model.input_shape), self.dtype)
        self.y1 = model.open(params, x)  # one state of the batch (in the model's layout)
        self.h = jnp.asarray(model.h, self.dtype)
        self.dispatch = dispatch_time()

    @property
    def state_bytes_per_sample(self) -> int:
        return int(self.y1.size // self.batch) * self.dtype.itemsize

    @property
    def param_bytes_per_layer(self) -> int:
        return int(sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(self.theta1)))

    def max_intervals(self, limit: int) -> int:
        """The most intervals n (≤ limit) whose stacked state fits :data:`MAX_STATE_BYTES`."""
        per = self.batch * self.state_bytes_per_sample
        return max(1, min(limit, MAX_STATE_BYTES // max(per, 1)))

    def _time(self, fn, *args) -> float:
        return best_time(fn, *args, repeats=self.repeats)

    # --- scans: forward and adjoint steps vmapped over n intervals ---------------------------------
    def _scan_fn(self, apply: Callable) -> Callable:
        """A relaxation-sweep-like scan: y ← apply(data_k, y) for k = 1..K over stacked intervals, stacking
        every state (as :func:`lpt.mgrit.relax.f_sweep` does)."""

        @jax.jit
        def sweep(data, y):
            def body(y, d):
                y = apply(d, y)
                return y, y

            return jax.lax.scan(body, y, data)

        return sweep

    def scan_step_cost(self, n: int) -> tuple[float, float]:
        """(per-step cost, intercept) of the forward step vmapped over n intervals inside a scan."""
        step = self.model.step
        apply = jax.vmap(lambda d, y: step(d[0], y, d[1]))
        fn = self._scan_fn(apply)
        y = jnp.broadcast_to(self.y1, (n, *self.y1.shape)) + 0
        times = []
        for k in SCAN_LENGTHS:
            data = (_broadcast(self.theta1, (k, n)), jnp.full((k, n), self.h, self.dtype))
            times.append(self._time(fn, data, y))
        return self._slope(times)

    def _linearization(self, k: int, n: int):
        from lpt.mgrit.adjoint import linearize

        lin = jax.jit(jax.vmap(jax.vmap(partial(linearize, self.model.step))))
        y = jnp.broadcast_to(self.y1, (k, n, *self.y1.shape)) + 0
        return lin(_broadcast(self.theta1, (k, n)), y, jnp.full((k, n), self.h, self.dtype))

    def scan_adjoint_cost(self, n: int) -> tuple[float, float]:
        """(per-step cost, intercept) of the adjoint step (stored linearisation) vmapped over n intervals."""
        apply = jax.vmap(lambda vjp, w: vjp(w)[0])
        fn = self._scan_fn(apply)
        w = jnp.broadcast_to(self.y1, (n, *self.y1.shape)) + 0
        times = [self._time(fn, self._linearization(k, n), w) for k in SCAN_LENGTHS]
        return self._slope(times)

    def sweep_launch_cost(self, k: int = 4, chains: tuple[int, int] = (1, 6)) -> float:
        """Cost of one more sweep inside a compiled program beyond its k steps: J dependent scans of k steps
        (one interval) in one jitted function, the slope over J, less k steps."""
        step = self.model.step
        apply = jax.vmap(lambda d, y: step(d[0], y, d[1]))

        def make(j: int):
            @jax.jit
            def chain(data, y):
                for _ in range(j):
                    y = jax.lax.scan(lambda c, d: (apply(d, c),) * 2, y, data)[0] * 1.0
                return y
            return chain

        y = self.y1[None] + 0
        data = (_broadcast(self.theta1, (k, 1)), jnp.full((k, 1), self.h, self.dtype))
        t = [self._time(make(j), data, y) for j in chains]
        per_sweep = (t[1] - t[0]) / (chains[1] - chains[0])
        c, _ = self.scan_step_cost(1)
        return max(per_sweep - k * c, 0.0)

    def _slope(self, times: Sequence[float]) -> tuple[float, float]:
        (k1, k2), (t1, t2) = SCAN_LENGTHS, times
        c = max((t2 - t1) / (k2 - k1), 1e-9)
        return c, max(t1 - k1 * c - self.dispatch, 0.0)

    # --- vectorised over all steps at once ----------------------------------------------------------
    def linearize_cost(self, p: int) -> float:
        """Linearising p steps at once (vmapped ``jax.vjp``)."""
        from lpt.mgrit.adjoint import linearize

        fn = jax.jit(jax.vmap(partial(linearize, self.model.step)))
        y = jnp.broadcast_to(self.y1, (p, *self.y1.shape)) + 0
        args = (_broadcast(self.theta1, (p,)), y, jnp.full((p,), self.h, self.dtype))
        return max(self._time(fn, *args) - self.dispatch, 1e-9)

    def theta_cost(self, p: int) -> float:
        """The layer gradient (∂Φ/∂θ)ᵀ ȳ of p steps at once (as :func:`lpt.mgrit.layer_gradient`)."""
        step = self.model.step

        def one(theta_n, y_n, h_n, ybar):
            return jax.vjp(lambda th: step(th, y_n, h_n), theta_n)[1](ybar)[0]

        fn = jax.jit(jax.vmap(one))
        y = jnp.broadcast_to(self.y1, (p, *self.y1.shape)) + 0
        args = (_broadcast(self.theta1, (p,)), y, jnp.full((p,), self.h, self.dtype), y)
        return max(self._time(fn, *args) - self.dispatch, 1e-9)

    # --- serial value_and_grad -------------------------------------------------------------------------
    def serial_time(self, depth: int, batch: int | None = None) -> float:
        """Serial ``value_and_grad`` of the depth-N network at ``batch`` (default: the bench's batch)."""
        from dataclasses import replace

        from lpt.train import objective

        batch = batch or self.batch
        model = replace(self.model, depth=depth)
        params = model.init(jax.random.PRNGKey(1), self.dtype)
        x = jax.random.normal(jax.random.PRNGKey(2), (batch, *model.input_shape), self.dtype)
        y = (jnp.arange(batch) % model.num_outputs if model.task == "classification"
             else jnp.zeros((batch, model.num_outputs), self.dtype))
        fn = jax.jit(jax.value_and_grad(lambda p: objective(model, p, x, y)[0]))
        return self._time(fn, params)

    def serial_curve(self, max_depth: int, factor: int = 2) -> tuple[list[int], list[float], float]:
        """Per-layer cost of serial ``value_and_grad`` as a function of the stored trajectory N·B (the
        reverse sweep reads back every stored state, so the cost per layer grows once the trajectory leaves
        the caches), at depths 4, 8, … ≤ ``max_depth``/2; and the fixed cost t(1) − c(1)."""
        depths = [d for d in _sizes(max(4, max_depth // 2), factor) if d >= 4] or [4]
        t1 = self.serial_time(1)
        sizes, costs = [], []
        for depth in depths:
            t = self.serial_time(depth)
            sizes.append(depth * self.batch)
            costs.append(max((t - t1) / (depth - 1), 1e-9))
        fixed = max(t1 - costs[0], 0.0)
        return sizes, costs, fixed

    def copy_bandwidth(self, nbytes: int = 64 * 2**20) -> float:
        """Bytes per second of a device-memory copy (a rotated concatenation, as the level bookkeeping does)."""
        n = max(nbytes // self.dtype.itemsize, 2)
        x = jnp.arange(n, dtype=self.dtype)
        fn = jax.jit(lambda a: jnp.concatenate([a[1:], a[:1]]))
        return nbytes / max(self._time(fn, x) - self.dispatch, 1e-9)


def calibrate_profile(model, batch: int, max_depth: int, *, dtype="float32", repeats: int = 5,
                      factor: int = 2, procs: int = 1, log: Callable[[str], None] = print) -> Profile:
    """Measure the cost curves of ``model`` at batch ``batch`` for stacked sizes up to ``max_depth``
    intervals (or the memory cap), on the default device.

    Args:
        model: the network (:class:`lpt.model.ResNet`); its depth is irrelevant.
        batch: batch size B of the measurements (per rank).
        max_depth: largest depth N the profile should cover (vectorised operations span up to N steps).
        factor: ratio between consecutive measured sizes.
        procs: number of processes measuring at the same time (MPI ranks sharing the machine); part of the
            profile's name.
    """
    bench = Bench(model, batch, dtype, repeats)
    n_max = bench.max_intervals(max_depth)
    sizes = _sizes(n_max, factor)
    step, adj, lin, theta = [], [], [], []
    for n in sizes:
        c, _ = bench.scan_step_cost(n)
        ca, _ = bench.scan_adjoint_cost(n)
        step.append(c)
        adj.append(ca)
        lin.append(bench.linearize_cost(n))
        theta.append(bench.theta_cost(n))
        log(f"  n={n:6d} intervals ({n * batch} samples): step {c * 1e6:9.2f} us, adjoint {ca * 1e6:9.2f} us, "
            f"linearize {lin[-1] * 1e6:9.2f} us, theta {theta[-1] * 1e6:9.2f} us")
    serial_sizes, serial, fixed = bench.serial_curve(max_depth)
    sweep = bench.sweep_launch_cost()
    log(f"  sweep launch {sweep * 1e6:.2f} us")
    log("  serial value_and_grad per layer: " + ", ".join(
        f"N={s // batch}: {c * 1e6:.1f} us" for s, c in zip(serial_sizes, serial)) + f"; fixed {fixed * 1e3:.3f} ms")
    bandwidth = bench.copy_bandwidth()
    samples = [n * batch for n in sizes]
    curves = {"step": CostCurve(samples, step), "adjoint": CostCurve(samples, adj),
              "linearize": CostCurve(samples, lin), "theta": CostCurve(samples, theta),
              "serial": CostCurve(serial_sizes, serial, above="flat")}
    key = profile_key_for(model, dtype, procs)
    return Profile(key=key, batch=batch, state_bytes_per_sample=bench.state_bytes_per_sample,
                   param_bytes_per_layer=bench.param_bytes_per_layer, curves=curves,
                   sweep=sweep, fixed=fixed, bandwidth=bandwidth)
