"""The processor grid P = P_data × P_layers and the choice of communication back-end (DESIGN §4)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from lpt.parallel.comm import Comm, MPIComm, MeshComm, SingleComm

Backend = Literal["single", "mesh", "mpi"]
BACKENDS = ("single", "mesh", "mpi")


class GridError(ValueError):
    """An invalid processor grid; raised before any work starts."""


@dataclass(frozen=True)
class ProcessorGrid:
    """``data`` × ``layers`` workers on back-end ``backend``.

    Attributes:
        backend: single (one device), mesh (devices of one process), mpi (one process per device).
        data: data-parallel size (ranks hold different samples and sum the gradient).
        layers: layer-parallel size (contiguous layer chunks).
    """

    backend: Backend = "single"
    data: int = 1
    layers: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise GridError(f"parallel.name={self.backend!r} is not a known back-end; choose one of {list(BACKENDS)}")
        for key in ("data", "layers"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GridError(f"parallel.{key}={value!r} must be a positive integer")
        if self.backend == "single" and (self.data, self.layers) != (1, 1):
            raise GridError(f"parallel=single runs on one device: parallel.data × parallel.layers must be 1 × 1, "
                            f"got {self.data} × {self.layers}; use parallel=mesh (devices) or parallel=mpi (ranks)")

    @property
    def size(self) -> int:
        return self.data * self.layers

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ProcessorGrid":
        return cls(backend=cfg.get("name", "single"), data=cfg.get("data", 1), layers=cfg.get("layers", 1))

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
