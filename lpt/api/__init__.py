"""The public API: :func:`layer_parallel` makes any stacked-layer network layer-parallel (DESIGN §10).

- :func:`layer_parallel` / :class:`LayerParallel`: ``lp(params, y0)``, ``lp.states``, ``lp.one_shot``;
- :class:`LayerParallelOptions`: solver settings and back-end (one device, a mesh, MPI ranks);
- :func:`residual`: the step y + h·f(θ, y) on pytree states; :class:`Warm`: the one-shot warm start.
"""

from lpt.api.backend import Warm
from lpt.api.core import LayerParallel, layer_parallel
from lpt.api.options import LayerParallelOptions
from lpt.api.state import residual

__all__ = ["LayerParallel", "LayerParallelOptions", "Warm", "layer_parallel", "residual"]
