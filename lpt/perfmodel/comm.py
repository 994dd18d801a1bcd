"""Measuring the latency α and inverse bandwidth β of one neighbour message, per back-end (DESIGN §7).

A message of b bytes costs t(b) = α + β·b. Each back-end is measured with the primitive its
:mod:`lpt.parallel.comm` class uses for ``shift``, inside one jitted function that sends the message
``repeats`` times in a dependent chain (so the times add up and dispatch drops out):

- ``single``: no messages (α = β = 0);
- ``mesh``: ``jax.lax.ppermute`` between two devices of one process in ``shard_map`` (on CPU: emulated
  devices, ``XLA_FLAGS=--xla_force_host_platform_device_count=2``, set before jax is imported);
- ``mpi``: ``mpi4jax.sendrecv`` between ranks 0 and 1 (``mpirun -np 2``), a ping-pong: the round trip of
  two messages, halved.

α and β are the line through (bytes, seconds per message) of least *relative* squared error, so the small
messages fix α and the large ones β.

σ₀ and κ (``sync``, ``imbalance``; MPI only) are what a message costs on top when the ranks compute between
messages, as the solver's ranks do: both ranks run a chain of (kernel of t seconds, message) and the same
chain without messages; the difference per message less α + β·bytes is σ₀ + κ·t, fitted from t = 5 ms and
t = 40 ms (clipped at 0). On a dedicated machine both are ≈ 0; when ranks share cores with each other or with
other work, their phases drift apart and each synchronisation waits for the slower one.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from lpt.perfmodel.costs import CommCosts

SIZES = (8, 64, 512, 4096, 32768, 262144, 1048576, 4194304)
"""Message sizes in bytes."""


def fit_alpha_beta(sizes: Sequence[float], seconds: Sequence[float]) -> CommCosts:
    """The line t = α + β·b of least relative squared error Σ((α + β b_i − t_i)/t_i)² (α, β clipped at 0).

    Exact for measurements on a line; times ≤ 0 are left out.
    """
    b, t = np.asarray(sizes, float), np.asarray(seconds, float)
    keep = t > 0
    b, t = b[keep], t[keep]
    if len(t) == 0:
        return CommCosts()
    if len(t) == 1:
        return CommCosts(alpha=float(t[0]), beta=0.0)
    a = np.vstack([np.ones(len(b)), b]).T / t[:, None]
    alpha, beta = np.linalg.lstsq(a, np.ones(len(t)), rcond=None)[0]
    return CommCosts(alpha=max(float(alpha), 0.0), beta=max(float(beta), 0.0))


MIN_CHAIN_SECONDS = 0.02
"""A timed chain is lengthened (doubled) until it takes this long, so timer noise stays small."""


def _per_message(run: Callable[[int], float], chain: int, repeats: int, agree: Callable[[int], int] = int) -> float:
    """Seconds per message: the slope between chains of k and 3k messages (median over ``repeats``), with
    k ≥ ``chain`` doubled until a chain takes :data:`MIN_CHAIN_SECONDS` (``agree`` makes all MPI ranks use
    the same k)."""
    k = chain
    while agree(int(run(k) < MIN_CHAIN_SECONDS)) and k < 1 << 16:
        k *= 2
    samples = []
    for _ in range(repeats):
        t1, t3 = run(k), run(3 * k)
        samples.append((t3 - t1) / (2 * k))
    return max(float(np.median(samples)), 0.0)


def measure_mesh(sizes: Sequence[int] = SIZES, chain: int = 20, repeats: int = 5) -> list[tuple[int, float]]:
    """(bytes, seconds per message) of ``ppermute`` between two devices in ``shard_map``."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    devices = jax.devices()
    if len(devices) < 2:
        raise RuntimeError("parallel=mesh needs at least 2 devices; on CPU set "
                           "XLA_FLAGS=--xla_force_host_platform_device_count=2 before jax is imported")
    mesh = Mesh(np.asarray(devices[:2]), ("layers",))
    out = []
    for nbytes in sizes:
        n = max(nbytes // 4, 1)
        x = jnp.zeros((2 * n,), jnp.float32)

        def body(_, v):
            # block shapes: v (n,) per device; message: the whole block to the other device
            return jax.lax.ppermute(v, "layers", perm=[(0, 1), (1, 0)]) + 1.0

        # the chain length k is an argument: one program per size, whatever lengths the timing tries
        chained = jax.jit(jax.shard_map(lambda v, k: jax.lax.fori_loop(0, k, body, v), mesh=mesh,
                                        in_specs=(P("layers"), P()), out_specs=P("layers")))
        jax.block_until_ready(chained(x, chain))

        def run(k: int, chained=chained, x=x) -> float:
            start = time.perf_counter()
            jax.block_until_ready(chained(x, k))
            return time.perf_counter() - start

        out.append((nbytes, _per_message(run, chain, repeats)))
    return out


def measure_mpi(sizes: Sequence[int] = SIZES, chain: int = 20, repeats: int = 5) -> list[tuple[int, float]] | None:
    """(bytes, seconds per message) of ``mpi4jax.sendrecv`` ping-pong between ranks 0 and 1.

    Every rank must call this (under ``mpirun -np 2`` or more; ranks ≥ 2 only take part in the barriers).
    Returns the measurements on rank 0, None elsewhere.
    """
    import jax
    import jax.numpy as jnp
    import mpi4jax
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if size < 2:
        raise RuntimeError("the MPI ping-pong needs 2 ranks: mpirun -np 2 ...")
    pair = world.Split(color=0 if rank < 2 else MPI.UNDEFINED, key=rank)
    out = []
    for nbytes in sizes:
        n = max(nbytes // 4, 1)
        x = jnp.zeros((n,), jnp.float32)
        chained = None
        if rank < 2:
            def body(_, v):
                # message: the block v (n,) to the other rank and back (a ping-pong is two messages)
                return mpi4jax.sendrecv(v, v, source=1 - rank, dest=1 - rank, comm=pair) + 1.0

            # the chain length k is an argument: one program per size (each MPI launch compiles it, the
            # persistent cache cannot serve mpi4jax calls), whatever lengths the timing tries
            chained = jax.jit(lambda v, k: jax.lax.fori_loop(0, k, body, v))
            jax.block_until_ready(chained(x, chain))

        def run(k: int, chained=chained, x=x) -> float:
            world.Barrier()
            if chained is None:
                return 0.0
            start = time.perf_counter()
            jax.block_until_ready(chained(x, k))
            return time.perf_counter() - start

        # each sendrecv is one message each way at the same time: the exchange time is one message
        agree = lambda flag: world.allreduce(flag, op=MPI.MAX)  # noqa: E731  (same chain length on all ranks)
        out.append((nbytes, _per_message(run, chain, repeats, agree)))
    return out if rank == 0 else None


def measure_mpi_sync(nbytes: int = 160_000, compute_s: float = 2e-3, chain: int = 20, repeats: int = 5) -> float | None:
    """Seconds per message of a chain (kernel, ``sendrecv``) minus the chain of kernels alone, between ranks
    0 and 1 while both compute (see the module docstring); on rank 0, None elsewhere."""
    import jax
    import jax.numpy as jnp
    import mpi4jax
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    pair = world.Split(color=0 if rank < 2 else MPI.UNDEFINED, key=rank)
    n = max(nbytes // 4, 1)
    a = jnp.full((256, 256), 1.0 / 256, jnp.float32)
    x = jnp.zeros((n,), jnp.float32)

    def kernel(v, reps):
        def body(_, m):
            return jnp.tanh(m @ a)
        m = jax.lax.fori_loop(0, reps, body, jnp.ones((256, 256), jnp.float32) + v[0])
        return v + m[0, 0] * 0

    # kernel repetitions for about compute_s seconds
    probe = jax.jit(lambda v, r: kernel(v, r), static_argnums=1)
    jax.block_until_ready(probe(x, 10))
    start = time.perf_counter()
    jax.block_until_ready(probe(x, 10))
    per = max((time.perf_counter() - start) / 10, 1e-7)
    reps = int(world.allreduce(max(1, int(compute_s / per)), op=MPI.MAX))
    other = 1 - rank if rank < 2 else 0

    def make(k: int, talk: bool):
        def body(_, v):
            v = kernel(v, reps)
            if talk:
                v = mpi4jax.sendrecv(v, v, source=other, dest=other, comm=pair)
            return v
        return jax.jit(lambda v: jax.lax.fori_loop(0, k, body, v))

    fns = {}

    def timed(k: int, talk: bool) -> float:
        if rank >= 2:
            world.Barrier()
            return 0.0
        if (k, talk) not in fns:
            fns[k, talk] = make(k, talk)
            jax.block_until_ready(fns[k, talk](x))
        world.Barrier()
        start = time.perf_counter()
        jax.block_until_ready(fns[k, talk](x))
        return world.allreduce(time.perf_counter() - start, op=MPI.MAX) if rank < 2 else 0.0

    diffs = [(timed(chain, True) - timed(chain, False)) / chain for _ in range(repeats)]
    return float(np.median(diffs)) if rank == 0 else None


def measure(backend: str, sizes: Sequence[int] = SIZES, **kwargs) -> tuple[CommCosts, list[tuple[int, float]]]:
    """Measure and fit α, β for ``backend`` (single | mesh | mpi); single is (0, 0) without measuring.

    ``kwargs`` (``chain``, ``repeats``) apply to every timed chain, under MPI those of σ₀ and κ too."""
    if backend == "single":
        return CommCosts(0.0, 0.0), []
    if backend == "mesh":
        samples = measure_mesh(sizes, **kwargs)
    elif backend == "mpi":
        samples = measure_mpi(sizes, **kwargs)
        phases = (5e-3, 40e-3)
        loaded = [measure_mpi_sync(160_000, compute_s=t, **kwargs) for t in phases]
        if samples is None:  # not rank 0
            return CommCosts(), []
        fit = fit_alpha_beta([s for s, _ in samples], [t for _, t in samples])
        extra = [max(v - fit.message(160_000), 0.0) for v in loaded]
        kappa = max((extra[1] - extra[0]) / (phases[1] - phases[0]), 0.0)
        sync = max(extra[0] - kappa * phases[0], 0.0)
        return CommCosts(fit.alpha, fit.beta, sync, kappa), samples
    else:
        raise ValueError(f"unknown back-end {backend!r}; choose single, mesh or mpi")
    return fit_alpha_beta([s for s, _ in samples], [t for _, t in samples]), samples
