"""Settings of :func:`lpt.layer_parallel`, validated at construction time (one line per bad value)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lpt.mgrit.options import MGRITOptions, require

MESH_AXES = ("data", "layers")


def _converged() -> MGRITOptions:
    return MGRITOptions(max_iter=30)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LayerParallelOptions:
    """How :func:`lpt.layer_parallel` solves y_{n+1} = step(θ_n, y_n, h_n), n = 0..N−1.

    Attributes:
        T: final time; the step sizes are h_n = T/N (ignored when ``hs`` is given).
        hs: explicit step sizes h_0..h_{N−1} (a tuple of N numbers ≥ 0), or None.
        forward, backward: the forward (FAS-MGRIT) and adjoint MGRIT solves of ``lp(params, y0)`` and
            ``lp.states``: V-cycles with FCF relaxation, m = 4, until the tolerance ``tol``, at most 30 cycles.
        tol: the converged solves stop when ‖r‖₂ ≤ tol·‖u‖₂ (residual relative to the states); None: 100·ε of
            the state's dtype (2.2e-14 in float64, 1.2e-5 in float32); 0: the options' own stopping rule
            (``abs_tol``/``rel_tol``, else exactly ``max_iter`` cycles).
        one_shot_cycles: (forward, adjoint) cycles of ``lp.one_shot``, the inexact warm-started solves of
            one-shot training (DESIGN §3; default 2 and 1).
        mesh: a ``jax.sharding.Mesh`` with axes ("data", "layers") (or "layers" alone): the layers are cut into
            chunks along "layers" and solved under ``shard_map``; None: one device, or ``comm``.
        comm: an :class:`lpt.parallel.comm.MPIComm` (one process per device, ``mpirun``); None: one device,
            or ``mesh``.
        batch_axis: the axis of every state leaf that holds the samples: on a mesh with a "data" axis they are
            split over it (each data rank solves its samples); None: the state is replicated over "data".
    """

    T: float = 1.0
    hs: tuple[float, ...] | None = None
    forward: MGRITOptions = field(default_factory=_converged)
    backward: MGRITOptions = field(default_factory=_converged)
    tol: float | None = None
    one_shot_cycles: tuple[int, int] = (2, 1)
    mesh: Any = None
    comm: Any = None
    batch_axis: int | None = None

    def __post_init__(self) -> None:
        name = "LayerParallelOptions"
        require(_number(self.T) and self.T > 0, f"{name}.T={self.T!r} must be a finite number > 0 (the final time; "
                                                f"h = T/N)")
        if self.hs is not None:
            hs = tuple(self.hs) if hasattr(self.hs, "__iter__") else self.hs
            require(isinstance(hs, tuple) and len(hs) > 0 and all(_number(h) and h >= 0 for h in hs),
                    f"{name}.hs={self.hs!r} must be None or a non-empty sequence of finite step sizes ≥ 0, one per "
                    f"layer")
            object.__setattr__(self, "hs", tuple(float(h) for h in hs))
        for key in ("forward", "backward"):
            value = getattr(self, key)
            require(isinstance(value, MGRITOptions),
                    f"{name}.{key}={value!r} must be an lpt.mgrit.MGRITOptions (the {key} solve's settings)")
        require(self.tol is None or (_number(self.tol) and self.tol >= 0),
                f"{name}.tol={self.tol!r} must be None (100·ε of the dtype), 0 (the options' own stopping) or a "
                f"finite number > 0 (‖r‖₂ ≤ tol·‖u‖₂)")
        cycles = self.one_shot_cycles
        require(isinstance(cycles, (tuple, list)) and len(cycles) == 2
                and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in cycles),
                f"{name}.one_shot_cycles={cycles!r} must be two integers ≥ 1 (forward, adjoint cycles per step)")
        object.__setattr__(self, "one_shot_cycles", tuple(cycles))
        self._check_backend(name)

    def _check_backend(self, name: str) -> None:
        require(self.mesh is None or self.comm is None,
                f"{name}: mesh={self.mesh!r} and comm={self.comm!r} are both set; choose one back-end")
        if self.mesh is not None:
            axes = tuple(getattr(self.mesh, "axis_names", ()))
            require("layers" in axes and set(axes) <= set(MESH_AXES),
                    f"{name}.mesh={self.mesh!r} must be a jax.sharding.Mesh with axes ('data', 'layers') or "
                    f"('layers',), got axes {axes}")
            kinds = tuple(str(t) for t in getattr(self.mesh, "axis_types", ()))
            require(all(k.endswith("Auto") for k in kinds),
                    f"{name}.mesh has axis types {kinds}; use Auto axes: jax.sharding.Mesh(devices, ('data', "
                    f"'layers')), or jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * 2)")
        if self.comm is not None:
            require(all(hasattr(self.comm, key) for key in ("layers", "data", "layer_rank", "shift")),
                    f"{name}.comm={self.comm!r} must be an lpt.parallel.comm.MPIComm (e.g. "
                    f"MPIComm.from_world(layers, data)) or None")
        require(self.batch_axis is None or (isinstance(self.batch_axis, int) and not isinstance(self.batch_axis, bool)
                                            and self.batch_axis >= 0),
                f"{name}.batch_axis={self.batch_axis!r} must be None or an integer ≥ 0 (the samples' axis of "
                f"every state leaf)")

    @property
    def layers(self) -> int:
        """Layer chunks of the back-end."""
        if self.mesh is not None:
            return int(self.mesh.shape["layers"])
        return 1 if self.comm is None else self.comm.layers

    @property
    def data(self) -> int:
        """Data-parallel ranks that split the samples (1 unless ``batch_axis`` is set on a mesh, or ``comm`` has
        data ranks)."""
        if self.mesh is not None:
            return int(self.mesh.shape.get("data", 1)) if self.batch_axis is not None else 1
        return 1 if self.comm is None else self.comm.data
