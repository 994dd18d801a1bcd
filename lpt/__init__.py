"""lpt: layer-parallel training of very deep residual networks with nonlinear multigrid-in-time.

The package is organised by concern: :mod:`lpt.data` (data sets), :mod:`lpt.model` (the ResNet as a
time-stepping problem), :mod:`lpt.mgrit` (FAS-MGRIT solvers), :mod:`lpt.parallel` (communication back-ends),
:mod:`lpt.train` (optimisation), :mod:`lpt.logging` (HDF5 run logs and checkpoints), :mod:`lpt.cli` (commands),
:mod:`lpt.host` (settings of the host process).
The public API for any network, :func:`lpt.layer_parallel` (:mod:`lpt.api`), is imported on first use.
"""

__version__ = "0.1.0"

_API = ("layer_parallel", "LayerParallel", "LayerParallelOptions", "Warm", "residual")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The public API (:mod:`lpt.api`), imported on first use so that ``import lpt`` stays light."""
    if name in _API:
        import lpt.api

        return getattr(lpt.api, name)
    raise AttributeError(f"module 'lpt' has no attribute {name!r}")
