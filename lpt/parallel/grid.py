"""The processor grid P = P_data × P_layers and the choice of communication back-end (DESIGN §4)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Literal, Mapping

from lpt.config.choices import BACKENDS
from lpt.config.fields import check_attributes, check_value
from lpt.config.run import ParallelOptions
from lpt.parallel.comm import Comm, MPIComm, MeshComm, SingleComm

Backend = Literal["single", "mesh", "mpi"]
__all__ = ["BACKENDS", "Backend", "GridError", "ProcessorGrid"]


_FIELDS = {f.name: f for f in fields(ParallelOptions)}


class GridError(ValueError):
    """An invalid processor grid; raised before any work starts."""


@dataclass(frozen=True)
class ProcessorGrid:
    """``data`` × ``layers`` workers on back-end ``backend``.

    Attributes:
        backend: single (one device), mesh (devices of one or more JAX processes), mpi (one process per device).
        data: data-parallel size (ranks hold different samples and sum the gradient).
        layers: layer-parallel size (contiguous layer chunks).
        processes: JAX processes of a ``mesh`` grid (> 1: JAX's multi-controller runtime, one global mesh over
            the devices of all processes, started by :meth:`connect`).
        coordinator, process_id: ``host:port`` of process 0 and this process's number; None: detected by
            ``jax.distributed.initialize`` (SLURM, Open MPI's mpirun).
        heartbeat_s: seconds after which JAX's coordination service declares a silent process dead and ends the
            others (``jax.distributed.initialize(heartbeat_timeout_seconds=)``): how long the processes of a
            multi-process mesh outlive one that failed.
    """

    backend: Backend = ParallelOptions.name
    data: int = ParallelOptions.data
    layers: int = ParallelOptions.layers
    processes: int = ParallelOptions.processes
    coordinator: str | None = None
    process_id: int | None = None
    heartbeat_s: int = ParallelOptions.heartbeat_s

    def __post_init__(self) -> None:
        try:  # the ranges and their one-line messages are the schema's (lpt.config.run.ParallelOptions)
            check_value(ParallelOptions, _FIELDS["name"], self.backend, "parallel.name")
        except ValueError as exc:
            raise GridError(str(exc)) from None
        check_attributes(self, ParallelOptions, ("data", "layers", "processes", "heartbeat_s", "coordinator",
                                                 "process_id"), "parallel", GridError)
        if self.processes > 1 and self.backend != "mesh":
            raise GridError(f"parallel.processes={self.processes} starts JAX's multi-process runtime, which needs "
                            f"parallel=mesh (one global mesh); parallel={self.backend} runs "
                            + ("one process per MPI rank by itself" if self.backend == "mpi" else "in one process"))
        if self.coordinator is not None and not self.coordinator.rpartition(":")[2].isdigit():
            raise GridError(f"parallel.coordinator={self.coordinator!r} must be host:port of process 0 "
                            f"(e.g. node001:12355), or null to detect it (SLURM, mpirun)")
        if self.process_id is not None and self.process_id >= self.processes:
            raise GridError(f"parallel.process_id={self.process_id!r} must be an integer in [0, "
                            f"{self.processes - 1}] (parallel.processes={self.processes}), or null to detect it")
        if self.backend == "single" and (self.data, self.layers) != (1, 1):
            raise GridError(f"parallel=single runs on one device: parallel.data × parallel.layers must be 1 × 1, "
                            f"got {self.data} × {self.layers}; use parallel=mesh (devices) or parallel=mpi (ranks)")

    @property
    def size(self) -> int:
        return self.data * self.layers

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ProcessorGrid":
        """The grid of config group ``parallel`` (keys it lacks: the schema's defaults, ``ParallelOptions``)."""
        values = {f.name: getattr(ParallelOptions(), f.name) for f in fields(ParallelOptions)} | dict(cfg)
        return cls(backend=values["name"], data=values["data"], layers=values["layers"],
                   processes=values["processes"], coordinator=values["coordinator"],
                   process_id=values["process_id"], heartbeat_s=values["heartbeat_s"])

    def connect(self) -> None:
        """Join the JAX processes of a multi-process mesh (``processes`` > 1; CPU collectives over gloo).

        Must run before anything asks JAX for its devices; idempotent."""
        if self.processes == 1:
            return
        import jax

        if jax.distributed.is_initialized():
            return
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(coordinator_address=self.coordinator, num_processes=self.processes,
                                       process_id=self.process_id, heartbeat_timeout_seconds=self.heartbeat_s)
        except (RuntimeError, ValueError) as exc:
            raise GridError(f"parallel.processes={self.processes}: the JAX processes could not connect "
                            f"(parallel.coordinator={self.coordinator}, parallel.process_id={self.process_id}): "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; start every process "
                            f"with the same coordinator host:port and its own process_id, or under srun/mpirun "
                            f"with both null") from exc
        if jax.process_count() != self.processes:
            raise GridError(f"parallel.processes={self.processes}, but {jax.process_count()} JAX processes joined")

    def check_resources(self) -> None:
        """The grid must match the devices (mesh) or ranks (mpi) there are."""
        if self.backend == "mesh":
            import jax

            n = len(jax.devices())
            if self.size > n:
                raise GridError(
                    f"parallel=mesh: parallel.data × parallel.layers = {self.data} × {self.layers} = {self.size} "
                    f"needs {self.size} devices, only {n} are visible (emulate CPU devices with "
                    f"XLA_FLAGS=--xla_force_host_platform_device_count={self.size})")
        elif self.backend == "mpi":
            require_mpi_packages()
            n = mpi_world_size()
            if self.size != n:
                raise GridError(f"parallel=mpi: parallel.data × parallel.layers = {self.data} × {self.layers} = "
                                f"{self.size} must equal the {n} MPI ranks (mpirun -np {self.size} ...)")

    def comm(self) -> Comm:
        """The communication object of this grid (for MPI: communicators split into data and layer groups)."""
        if self.backend == "single":
            return SingleComm()
        if self.backend == "mesh":
            return MeshComm(layers=self.layers, data=self.data)
        return MPIComm.from_world(layers=self.layers, data=self.data)

    def mesh(self):
        """The ``jax.sharding.Mesh`` with axes ("data", "layers") (mesh back-end)."""
        import jax
        import numpy as np

        devices = np.asarray(jax.devices()[: self.size]).reshape(self.data, self.layers)
        return jax.sharding.Mesh(devices, ("data", "layers"))


MPI_INSTALL = ("pip install 'lpt[mpi]' (from a checkout: pip install '.[mpi]'), with an MPI library, e.g. "
               "apt-get install libopenmpi-dev openmpi-bin; README \"MPI install\"")


def require_mpi_packages() -> None:
    """Raise :class:`GridError` (one line: what is missing and how to install it) unless mpi4py and mpi4jax import."""
    for name in ("mpi4py", "mpi4jax"):
        try:
            __import__(name)
        except ImportError as exc:
            raise GridError(f"parallel=mpi needs mpi4py and mpi4jax, and {name} cannot be imported ({exc}): "
                            f"{MPI_INSTALL}") from exc


def mpi_world_size() -> int:
    """Number of MPI ranks (1 when not started by mpirun/srun)."""
    if not any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS")):
        return 1
    require_mpi_packages()
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size()
