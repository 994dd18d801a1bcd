"""The runtime model: MGRIT cycle, gradient and training step, serial time, speedup, scaling, crossover and
the best (cfactor, levels) for a machine (DESIGN §7).

Time of an operation count (:class:`lpt.perfmodel.work.Ops`) on one rank of a P_data × P_layers grid, with
per-rank batch b = B/P_data and state size s bytes per sample:

    T = Σ_(curve, n) count · c_curve(n·b)              vectorised steps at stacked batch n·b
      + sweeps · t_sweep                                scan launches
      [+ copies · b · s / bandwidth                     state bookkeeping (split, join, halo concatenation)]
      + Σ messages (α + β · bytes + σ₀)                 halo shifts, gathers, reductions (P_layers > 1)
      + κ · compute                                     ranks drifting apart between synchronisations

The bookkeeping term is off by default (``copies=False``): XLA fuses the level splitting and joining into the
step kernels, and on the 2-core CPU of the README's measurements adding it at the measured copy bandwidth
over-predicted the gradient by ≈ 45 %, while compute + launches alone came within 5 %.

and a gradient adds t_fixed (opening, head, loss) and, for P_data > 1, the all-reduce of the gradient. The
critical path of one rank is the time: the ranks work in lock step, each on its own intervals, so the
slowest rank — all equal here — sets the pace. The serial reference is N layers of ``value_and_grad`` on
one device at the full batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from lpt.mgrit.options import MGRITOptions
from lpt.perfmodel.costs import CommCosts, Profile
from lpt.perfmodel.work import Ops, gradient_ops, layout_for, solve_ops, cycle_ops


@dataclass(frozen=True)
class Grid:
    """Processor grid P = P_data × P_layers and its communication back-end."""

    data: int = 1
    layers: int = 1
    backend: str = "single"

    def __post_init__(self) -> None:
        for name in ("data", "layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"grid {name}={value!r} must be a positive integer")

    @property
    def size(self) -> int:
        return self.data * self.layers


@dataclass(frozen=True)
class Breakdown:
    """A predicted time and its parts (seconds)."""

    compute: float
    sweeps: float
    copies: float
    messages: float
    fixed: float = 0.0

    @property
    def total(self) -> float:
        return self.compute + self.sweeps + self.copies + self.messages + self.fixed


@dataclass(frozen=True)
class PerfModel:
    """Predictions for one network (a calibrated :class:`Profile`) at batch size ``batch`` on a machine whose
    neighbour messages cost ``comm``.

    Attributes:
        profile: measured costs of the network.
        batch: global batch size B (split over the data ranks).
        comm: α, β of the back-end (zero for one device).
        value_evals: line-search evaluations per training step (L-BFGS: optax's zoom line search asks for the
            value and the gradient at every trial point, which lpt's train step computes like the step's
            gradient, warm-started alike). The evaluation at the point the search accepts is the next step's
            gradient (lpt.train.state.Carried), so a step with k > 0 evaluations costs k gradients; 0: the
            step's own gradient (no line search).
        copies: include the state bookkeeping traffic (see the module docstring).
    """

    profile: Profile
    batch: int
    comm: CommCosts = CommCosts()
    value_evals: float = 0.0
    copies: bool = False

    # --- pieces ---------------------------------------------------------------------------------------
    def rank_batch(self, grid: Grid) -> float:
        return self.batch / grid.data

    def state_bytes(self, grid: Grid) -> float:
        """Bytes of one state of the rank's batch (the size of a halo message)."""
        return self.rank_batch(grid) * self.profile.state_bytes_per_sample

    def ops_time(self, ops: Ops, grid: Grid) -> Breakdown:
        """Time of an operation count on one rank (see the module docstring)."""
        b = self.rank_batch(grid)
        p = self.profile
        compute = sum(count * p.cost(curve, n * b) for (curve, n), count in ops.evals.items())
        msgs = 0.0
        for (kind, states), count in ops.messages.items():
            nbytes = max(states * self.state_bytes(grid), 8.0)
            msgs += count * self._message(kind, nbytes, grid.layers)
        for (kind, layers), count in ops.param_msgs.items():
            msgs += count * self._message(kind, layers * p.param_bytes_per_layer, grid.layers)
        copies = ops.copies * b * p.state_bytes_per_sample / p.bandwidth if self.copies else 0.0
        if grid.layers > 1 and (ops.messages or ops.param_msgs):  # every phase ends in a synchronisation
            msgs += self.comm.imbalance * (compute + ops.sweeps * p.sweep)
        return Breakdown(compute, ops.sweeps * p.sweep, copies, msgs)

    def _message(self, kind: str, nbytes: float, ranks: int) -> float:
        if ranks <= 1:
            return 0.0
        if kind == "shift":
            return self.comm.message(nbytes)
        if kind == "allgather":
            return self.comm.allgather(nbytes, ranks)
        return self.comm.allreduce(nbytes, ranks)

    def data_allreduce(self, depth: int, grid: Grid) -> float:
        """Sum of the gradient over the data ranks (the layer parameters of one rank's chunk)."""
        if grid.data <= 1:
            return 0.0
        nbytes = depth * self.profile.param_bytes_per_layer
        return self.comm.allreduce(nbytes, grid.data)

    # --- serial reference -----------------------------------------------------------------------------
    def serial_forward(self, depth: int) -> float:
        """Serial forward propagation: N steps at batch B, one scan."""
        return depth * self.profile.cost("step", self.batch) + self.profile.sweep

    def serial_gradient(self, depth: int) -> float:
        """Serial ``value_and_grad``: N layers forward and backward at batch B, plus the fixed part."""
        return depth * self.profile.cost("serial", depth * self.batch) + self.profile.fixed

    def serial_step(self, depth: int) -> float:
        """A serial training step: its gradient, or its line search's evaluations (``value_evals``)."""
        return self.gradients_per_step * self.serial_gradient(depth)

    @property
    def gradients_per_step(self) -> float:
        """Gradients a training step computes: 1, or the line search's ``value_evals`` (its evaluation at the
        point it accepts is the next step's gradient: a step does not solve at its own parameters again)."""
        return self.value_evals if self.value_evals > 0 else 1.0

    # --- layer-parallel -------------------------------------------------------------------------------
    def cycle(self, depth: int, options: MGRITOptions, grid: Grid = Grid(), curve: str = "step") -> Breakdown:
        """One MGRIT cycle (forward: curve "step"; adjoint: "adjoint")."""
        layout = layout_for(depth, options, grid.layers)
        return self.ops_time(cycle_ops(layout, options, curve), grid)

    def forward_solve(self, depth: int, options: MGRITOptions, grid: Grid = Grid(), *,
                      initial: str = "guess") -> Breakdown:
        """A forward MGRIT solve of ``options.max_iter`` cycles (initial: guess | given | fmg)."""
        layout = layout_for(depth, options, grid.layers)
        return self.ops_time(solve_ops(layout, options, "step", initial=initial), grid)

    def gradient_breakdown(self, depth: int, fwd: MGRITOptions, bwd: MGRITOptions, grid: Grid = Grid(), *,
                           warm: bool = False) -> Breakdown:
        ops = gradient_ops(depth, fwd, bwd, grid.layers, warm=warm)
        t = self.ops_time(ops, grid)
        extra = self.data_allreduce(-(-depth // grid.layers), grid)
        return replace(t, messages=t.messages + extra, fixed=self.profile.fixed)

    def gradient(self, depth: int, fwd: MGRITOptions, bwd: MGRITOptions, grid: Grid = Grid(), *,
                 warm: bool = False) -> float:
        """One one-shot layer-parallel gradient evaluation (forward and adjoint MGRIT, layer gradient)."""
        return self.gradient_breakdown(depth, fwd, bwd, grid, warm=warm).total

    def training_step(self, depth: int, fwd: MGRITOptions, bwd: MGRITOptions, grid: Grid = Grid(), *,
                      warm: bool = False) -> float:
        """A layer-parallel training step: its one-shot gradient, or its line search's evaluations."""
        return self.gradients_per_step * self.gradient(depth, fwd, bwd, grid, warm=warm)

    def speedup(self, depth: int, fwd: MGRITOptions, bwd: MGRITOptions, grid: Grid, *, warm: bool = False) -> float:
        """Serial training step on one device / layer-parallel training step on the grid."""
        return self.serial_step(depth) / self.training_step(depth, fwd, bwd, grid, warm=warm)

    # --- studies --------------------------------------------------------------------------------------
    def scaling_table(self, depths: Sequence[int], ranks: Sequence[int], fwd: MGRITOptions, bwd: MGRITOptions, *,
                      data: int = 1, backend: str = "mpi", warm: bool = False) -> list[dict]:
        """Rows (ranks, depth, serial step, parallel step, speedup, efficiency) for paired depths and ranks:
        weak scaling with depth ∝ ranks, strong scaling with one depth repeated.

        Each row also has ``throughput_efficiency``: the efficiency on :meth:`Profile.throughput_bound` costs. The
        calibrated curves can make a sample cheaper at the smaller per-rank sizes of more ranks (caches of the
        calibration machine), which gives efficiencies above 1; this one stays at most 1 (work and messages
        only)."""
        rows = self._scaling_rows(depths, ranks, fwd, bwd, data=data, backend=backend, warm=warm)
        bound = replace(self, profile=self.profile.throughput_bound())
        for row, other in zip(rows, bound._scaling_rows(depths, ranks, fwd, bwd, data=data, backend=backend,
                                                         warm=warm)):
            row["throughput_efficiency"] = other["parallel_efficiency"]
        return rows

    def _scaling_rows(self, depths: Sequence[int], ranks: Sequence[int], fwd: MGRITOptions, bwd: MGRITOptions, *,
                      data: int, backend: str, warm: bool) -> list[dict]:
        rows = []
        base = None
        for depth, p in zip(depths, ranks):
            grid = Grid(data=data, layers=p, backend=backend if p * data > 1 else "single")
            t_par = self.training_step(depth, fwd, bwd, grid, warm=warm)
            t_ser = self.serial_step(depth)
            base = t_par if base is None else base
            rows.append({"ranks": p, "depth": depth, "serial_s": t_ser, "parallel_s": t_par,
                         "speedup": t_ser / t_par, "parallel_efficiency": None})
        for row in rows:  # efficiency relative to the first row: strong T1/(p T_p), weak T1/T_p
            first = rows[0]
            strong = len({r["depth"] for r in rows}) == 1
            ratio = row["ranks"] / first["ranks"]
            row["parallel_efficiency"] = (first["parallel_s"] / (ratio * row["parallel_s"]) if strong
                                          else first["parallel_s"] / row["parallel_s"])
        return rows

    def strong_scaling(self, depth: int, ranks: Sequence[int], fwd: MGRITOptions, bwd: MGRITOptions,
                       **kwargs) -> list[dict]:
        """Fixed N, P_layers = ranks."""
        return self.scaling_table([depth] * len(ranks), ranks, fwd, bwd, **kwargs)

    def weak_scaling(self, layers_per_rank: int, ranks: Sequence[int], fwd: MGRITOptions, bwd: MGRITOptions,
                     **kwargs) -> list[dict]:
        """N = layers_per_rank × P_layers."""
        return self.scaling_table([layers_per_rank * p for p in ranks], ranks, fwd, bwd, **kwargs)

    def crossover_ranks(self, depth: int, fwd: MGRITOptions, bwd: MGRITOptions, *, max_ranks: int = 4096,
                        backend: str = "mpi", warm: bool = False) -> int | None:
        """The fewest layer ranks (powers of two) at which a layer-parallel step beats the serial one at
        depth N; None if none up to ``max_ranks`` (or the finest level's interval count) does."""
        p = 1
        while p <= max_ranks:
            try:
                grid = Grid(layers=p, backend=backend if p > 1 else "single")
                if self.training_step(depth, fwd, bwd, grid, warm=warm) < self.serial_step(depth):
                    return p
            except ValueError:  # more ranks than the finest level has intervals
                return None
            p *= 2
        return None

    def crossover_depth(self, layers: int, fwd: MGRITOptions, bwd: MGRITOptions, *, layers_per_rank_min: int = 1,
                        max_depth: int = 1 << 20, backend: str = "mpi", warm: bool = False) -> int | None:
        """The smallest depth N (powers of two, at least ``layers`` × cfactor) at which a layer-parallel step
        on ``layers`` ranks beats the serial one; None if none up to ``max_depth``."""
        grid = Grid(layers=layers, backend=backend if layers > 1 else "single")
        n = max(layers_per_rank_min * layers, 2)
        while n <= max_depth:
            try:
                if self.training_step(n, fwd, bwd, grid, warm=warm) < self.serial_step(n):
                    return n
            except ValueError:
                pass
            n *= 2
        return None

    def best_settings(self, depth: int, fwd: MGRITOptions, bwd: MGRITOptions, grid: Grid = Grid(), *,
                      cfactors: Iterable[int] = (2, 4, 8, 16, 32), max_levels: Iterable[int] | None = None,
                      warm: bool = False) -> list[dict]:
        """Predicted training-step times for every (cfactor, max_levels), fastest first; the iteration
        counts of ``fwd``/``bwd`` are kept (one-shot training), so this is the best for a fixed number of
        cycles — coarser settings converge more slowly per cycle, which the model does not see."""
        rows = []
        for m in cfactors:
            levels = max_levels or range(2, max(2, math.ceil(math.log(max(depth, 2), m))) + 2)
            seen = set()
            for lv in levels:
                f, b = replace(fwd, cfactor=m, max_levels=lv), replace(bwd, cfactor=m, max_levels=lv)
                try:
                    shapes = layout_for(depth, f, grid.layers).shapes
                    t = self.training_step(depth, f, b, grid, warm=warm)
                except ValueError:
                    continue
                real = len(shapes)
                if real in seen:  # more levels asked than coarsening gives: same solver
                    continue
                seen.add(real)
                rows.append({"cfactor": m, "max_levels": lv, "levels": real, "coarsest": shapes[-1].n,
                             "step_s": t})
        return sorted(rows, key=lambda r: r["step_s"])
