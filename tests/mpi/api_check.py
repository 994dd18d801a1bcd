"""Run under mpirun: ``lpt.layer_parallel`` on MPI ranks (one layer chunk each) gives, on every rank, y_N and the
gradient of ``jax.grad`` of the ``lax.scan`` (float64, 1e-10), for a pytree state and pytree parameters, N = 13;
and two warm-started one-shot steps run (the warm start is per rank)."""

import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_api import problem, rel_err, scan_loss  # noqa: E402

import lpt  # noqa: E402
from lpt.parallel.comm import MPIComm  # noqa: E402

comm = MPIComm.from_world(layers=int(sys.argv[1]), data=1)
step, params, y0, opts = problem(13)
lp = lpt.layer_parallel(step, lpt.LayerParallelOptions(T=opts.T, forward=opts.forward, backward=opts.backward,
                                                       comm=comm))
loss = scan_loss(lp)
value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, y0)
ref_value, ref_grads = jax.jit(jax.value_and_grad(scan_loss(None, step, opts.T), argnums=(0, 1)))(params, y0)
assert abs(float(value - ref_value)) <= 1e-10 * abs(float(ref_value)), (value, ref_value)
assert rel_err(grads, ref_grads) < 1e-10, rel_err(grads, ref_grads)
warm = lp.init_warm(params, y0)
assert warm.ys.shape[0] == lp._solver(params, y0, True)[1].layouts[0].n_local + 1, warm.ys.shape
one_shot = jax.jit(jax.grad(lambda p, w: scan_loss(lambda p_, y: lp.one_shot(p_, y, w))(p, y0), argnums=(0, 1)))
for _ in range(2):
    g, warm = one_shot(params, warm)
assert float(warm.valid) == 1.0 and jnp.all(jnp.isfinite(warm.ybars))
print("ok", comm.rank, f"{rel_err(grads, ref_grads):.1e}", f"{rel_err(g, ref_grads[0]):.1e}", flush=True)
