"""FAS-MGRIT solvers for the forward and adjoint propagation of deep ResNets (DESIGN §2–3).

- :func:`mgrit_solve`: forward states by MGRIT; :func:`adjoint_solve`: adjoint states by the same code on
  the reversed index; :func:`layer_gradient`: the layer gradient, all layers at once;
- :func:`mgrit_propagate`: y_N with a ``custom_vjp`` whose backward pass is the adjoint MGRIT solve;
- :class:`MGRITSolver`: the one-shot training strategy (few cycles per step, warm start).
"""

from lpt.mgrit.adjoint import adjoint_initial_guess, adjoint_solve, layer_gradient, mgrit_propagate
from lpt.mgrit.hierarchy import LevelShape, level_shapes
from lpt.mgrit.options import MGRITOptions
from lpt.mgrit.solve import MGRITStats, coarse_initial_guess, convergence_factor, mgrit_solve
from lpt.mgrit.training import MGRITSolver, WarmStart

__all__ = ["LevelShape", "MGRITOptions", "MGRITSolver", "MGRITStats", "WarmStart", "adjoint_initial_guess",
           "adjoint_solve", "coarse_initial_guess", "convergence_factor", "layer_gradient", "level_shapes",
           "mgrit_propagate", "mgrit_solve"]
