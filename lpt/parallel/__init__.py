"""Layer- and data-parallel execution: the processor grid and the communication back-ends (DESIGN §4)."""

from lpt.parallel.comm import Comm, MPIComm, MeshComm, SingleComm
from lpt.parallel.grid import BACKENDS, GridError, ProcessorGrid

__all__ = ["BACKENDS", "Comm", "GridError", "MPIComm", "MeshComm", "ProcessorGrid", "SingleComm"]
