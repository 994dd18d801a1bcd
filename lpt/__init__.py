"""lpt: layer-parallel training of very deep residual networks with nonlinear multigrid-in-time.

The package is organised by concern: :mod:`lpt.data` (data sets), :mod:`lpt.model` (the ResNet as a
time-stepping problem), :mod:`lpt.mgrit` (FAS-MGRIT solvers), :mod:`lpt.parallel` (communication back-ends),
:mod:`lpt.train` (optimisation), :mod:`lpt.logging` (HDF5 run logs and checkpoints), :mod:`lpt.cli` (commands).
"""

__version__ = "0.1.0"
