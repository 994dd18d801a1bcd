"""One-shot layer-parallel training strategy (Günther et al. 2020, §4; DESIGN §3).

Per optimisation step: a few forward MGRIT cycles (default 3, and up to ``growth_cycles`` more while the
residual is above its start), the head and loss, a few adjoint MGRIT cycles (default 3), and the gradient
assembled explicitly:

    y_0 = open(x; θ_open),  y ≈ MGRIT(y_0; θ),  ȳ_N = ∂loss/∂y_N,  ȳ ≈ adjoint MGRIT(ȳ_N; θ, y),
    ∇_{θ_n} = (∂Φ_n/∂θ_n(y_n))ᵀ ȳ_{n+1},  ∇_{θ_open} = (∂open/∂θ_open)ᵀ ȳ_0,
    ∇_{W_c, b_c} by the chain rule of the head, plus the gradient of the regularisation.

With ``warm_start`` (full-batch training) the states y and ȳ of the previous step are the next initial
iterate; otherwise the cheap coarse-level guess is used every step. Divergence (non-finite states or
residuals, or a residual that grows over two cycles; :mod:`lpt.mgrit.divergence`) is reported in the stats
and, with ``on_divergence="serial"``, answered by a serial recomputation of the step inside the compiled
function. The inexactness control (fixed or adaptive cycle counts) is :mod:`lpt.mgrit.control`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from lpt.config.fields import check_attributes, check_options
from lpt.config.run import MGRITSolverOptions
from lpt.mgrit.adjoint import adjoint_gradient_chunk
from lpt.mgrit.control import Adaptive, Control, cosine
from lpt.mgrit.divergence import anywhere, solve_diverged
from lpt.mgrit.hierarchy import pad_zeros
from lpt.mgrit.layout import (Layout, chunk, chunk_real, join_tail, mgrit_part, paired_layouts, stored_chunk,
                              tail_part, through_tail, unspread)
from lpt.mgrit.options import MGRITOptions, require
from lpt.mgrit.solve import MGRITStats, convergence_factor, forward_chunk, forward_restriction, last_factor, padded
from lpt.mgrit.stability import coarse_step_stability, stability_message
from lpt.model import Params
from lpt.model.serial import SerialSolver, data_objective
from lpt.parallel.comm import SingleComm, from_chunk

OnDivergence = Literal["error", "serial"]

class WarmStart(NamedTuple):
    """States kept between steps: primal ``ys`` and adjoint ``ybars`` (N+1, B, …); ``valid`` False means
    "no previous step": use the cheap coarse-level guess."""

    ys: jnp.ndarray
    ybars: jnp.ndarray
    valid: jnp.ndarray


class _Forward(NamedTuple):
    open_vjp: Callable
    theta: Any  # this chunk's weights (n_local, …)
    hs: jnp.ndarray  # this chunk's step sizes (n_local,)
    ys: jnp.ndarray  # this chunk's states with halo (n_local+1, …)
    y_final: jnp.ndarray  # y_{N−r} (y_N without a serial tail), on every chunk
    stats: MGRITStats
    tail: Any  # (θ, h) of the serial tail's r layers, on every chunk, or None (r = 0)


@dataclass(frozen=True)
class MGRITSolver:
    """Layer-parallel solver strategy: forward and adjoint FAS-MGRIT with few cycles per training step.

    Attributes:
        fwd: options of the forward solve; ``fwd.max_iter`` is the number of cycles per step (fwd_iters).
        bwd: options of the adjoint solve; ``bwd.max_iter`` cycles per step (bwd_iters).
        warm_start: start each step from the previous step's states (full-batch training).
        on_divergence: "serial" recomputes a diverged step serially (stats["fallback"]); "error" only sets
            stats["diverged"] for the trainer to raise.
        comm: communication along the layer chunks (:mod:`lpt.parallel.comm`). Each chunk holds its
            ``n_local`` layers' states (the warm-start state too); without ``local_layers`` parameters,
            objective and gradient are the same on every chunk (layer gradients are gathered), so the optimiser
            runs unchanged.
        control: the inexactness control (:class:`lpt.mgrit.control.Control`); with ``adaptive`` the cycle
            counts become minima and ``max_iter`` of the solves is ``control.max_iters``.
        local_layers: layer-sharded parameters (:mod:`lpt.parallel.sharded`: ``LayerSharded`` on a device mesh,
            ``ChunkLocal`` on MPI ranks): ``params["layers"]`` given to
            :meth:`value_and_grad` and :meth:`value` is this chunk's ``Layout.rows`` rows of the padded stack, the
            layer gradient returned is this chunk's (nothing gathered), and objective and gradient leave out the
            regularisation, which the caller adds on the whole stack.
    """

    fwd: MGRITOptions = field(default_factory=lambda: MGRITOptions(max_iter=2))
    bwd: MGRITOptions = field(default_factory=lambda: MGRITOptions(max_iter=2))
    warm_start: bool = True
    on_divergence: OnDivergence = MGRITSolverOptions.on_divergence
    comm: Any = SingleComm()
    control: Control = Control()
    min_iters: tuple[int, int] = (1, 1)
    local_layers: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.warm_start, bool), f"solver.warm_start={self.warm_start!r} must be true or false")
        check_attributes(self, MGRITSolverOptions, ("on_divergence",), "solver")

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], full_batch: bool = True) -> "MGRITSolver":
        """Build from the ``solver`` config group (configs/solver/mgrit.yaml); the key ``name`` is ignored.

        Args:
            cfg: mapping with the keys of the schema :class:`~lpt.config.run.MGRITSolverOptions` (missing ones
                take its defaults).
            full_batch: resolves ``warm_start: auto`` (warm start exactly for full-batch training).
        """
        check_options(cfg, MGRITSolverOptions, "solver")  # every key and range: the schema's, with its messages

        def get(key: str) -> Any:
            return cfg[key] if key in cfg else getattr(MGRITSolverOptions, key)

        cfactor = get("cfactor")
        if not isinstance(cfactor, (int, str)) and hasattr(cfactor, "__iter__"):
            cfactor = tuple(cfactor)
        max_levels = get("max_levels")
        fwd_iters, bwd_iters = get("fwd_iters"), get("bwd_iters")
        bwd_levels, bwd_tol = get("bwd_levels"), get("bwd_tol")
        common = dict(cfactor=cfactor, min_coarse=get("min_coarse"), nrelax=get("nrelax"),
                      nrelax_fine=get("nrelax_fine"), cycle=get("cycle"), rel_tol=get("rel_tol"),
                      restrict=get("restrict"), interval_batch=get("interval_batch"),
                      skip_first_down=get("skip_first_down"))
        control = Control(kind=get("control"), tol=get("control_tol"),
                          max_iters=get("control_max_iters"), every=get("control_every"),
                          min_cos=get("control_min_cos"), tightenings=get("control_tightenings"))
        if control.adaptive:
            require(control.max_iters >= max(fwd_iters, bwd_iters),
                    f"solver.control_max_iters={control.max_iters} must be ≥ solver.fwd_iters={fwd_iters} and "
                    f"solver.bwd_iters={bwd_iters} (with control=adaptive these are the least cycles per solve)")
        most = control.max_iters if control.adaptive else None
        # fixed control: more cycles where a solve ends above its start (the adaptive control has its own target);
        # by default on the forward solve only (README "One-shot accuracy": the adjoint's cost more than they gain)
        growth, bwd_growth = get("growth_cycles"), get("bwd_growth_cycles")
        growth, bwd_growth = (0, 0) if control.adaptive else (growth, growth if bwd_growth is None else bwd_growth)
        abs_tol = get("abs_tol")
        fwd = MGRITOptions(**common, max_levels=max_levels, max_iter=most or fwd_iters, abs_tol=abs_tol,
                           growth_iter=growth)
        bwd = MGRITOptions(**common, max_levels=max_levels if bwd_levels is None else bwd_levels,
                           max_iter=most or bwd_iters, abs_tol=abs_tol if bwd_tol is None else bwd_tol,
                           growth_iter=bwd_growth)
        warm = get("warm_start")
        return cls(fwd=fwd, bwd=bwd, warm_start=full_batch if warm == "auto" else bool(warm),
                   on_divergence=get("on_divergence"), control=control,
                   min_iters=(fwd_iters, bwd_iters) if control.adaptive else (1, 1))

    # --- the Solver protocol -----------------------------------------------------------------------
    def layouts(self, depth: int) -> tuple[Layout, Layout]:
        """Forward and adjoint layouts of a depth-N network on ``comm.layers`` chunks, with one padding and the
        serial tail (:func:`lpt.mgrit.layout.serial_tail`)."""
        return paired_layouts(depth, self.fwd, self.bwd, self.comm.layers, tail=True)

    def coarse_stability(self, model, params: Params, x: jnp.ndarray, samples: int = 2) -> tuple[Any, str | None]:
        """H·ρ of every coarse level of the forward solve at ``params`` (:mod:`lpt.mgrit.stability`), linearised
        at the serial states of the first ``samples`` samples of ``x``, and the warning line when one is ≥ 2."""
        layout = self.layouts(model.depth)[0]
        y0 = model.open(params, x[:samples])
        theta, hs = padded(*mgrit_part(params["layers"], model.step_sizes(y0.dtype), layout), layout)
        values = jax.device_get(coarse_step_stability(model.step, theta, hs, y0, layout.shapes,
                                                      forward_restriction(self.fwd)))
        return values, stability_message(values, layout.shapes, model.h)

    def init_state(self, model, params: Params, x: jnp.ndarray) -> WarmStart | Adaptive | tuple:
        """Empty warm-start states of this chunk for a batch x (``valid`` False), or () without warm start;
        with the adaptive control wrapped in :class:`Adaptive` (mode 0, no steps done)."""
        warm: WarmStart | tuple = ()
        if self.warm_start:
            y0 = jax.eval_shape(model.open, params, x)
            zeros = jnp.zeros((self.layouts(model.depth)[0].n_local + 1, *y0.shape), y0.dtype)
            warm = WarmStart(zeros, zeros, jnp.asarray(False))
        if self.control.adaptive:
            return Adaptive(warm, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))
        return warm

    def value_and_grad(self, model, params: Params, x: jnp.ndarray, y: jnp.ndarray, state):
        """Objective, aux {"loss", "outputs"}, gradient, new solver state and stats of one step."""
        if not self.control.adaptive:
            *result, warm, stats = self._one_shot(model, params, x, y, state, None)
            return (*result, warm, {**stats, "mode": jnp.asarray(0, jnp.int32),
                                    "grad_cos": jnp.asarray(jnp.nan, stats["fwd_norm"].dtype)})
        ctl, comm = self.control, self.comm
        serial_mode = state.mode >= ctl.serial_mode
        one_shot = lambda: self._one_shot(model, params, x, y, state.warm, ctl.target(state.mode))  # noqa: E731
        shapes = jax.eval_shape(one_shot)

        def serial():
            obj, aux, grads = self._exact(model, params, x, y)
            blank = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, jnp.nan, a.dtype)
                                           if jnp.issubdtype(a.dtype, jnp.inexact) else jnp.zeros(a.shape, a.dtype),
                                           shapes[4])
            warm = state.warm._replace(valid=jnp.asarray(False)) if self.warm_start else state.warm
            return obj, aux, grads, warm, blank

        obj, aux, grads, warm, stats = jax.lax.cond(serial_mode, serial, one_shot)
        check = ~serial_mode & (state.count % ctl.every == ctl.every - 1)
        cos = jax.lax.cond(check, lambda: cosine(comm, grads, self._exact(model, params, x, y)[2], self.local_layers),
                           lambda: jnp.asarray(jnp.nan, jnp.float32))
        mode = state.mode + (check & (cos < ctl.min_cos)).astype(jnp.int32)
        stats = {**stats, "mode": state.mode, "grad_cos": cos.astype(stats["fwd_norm"].dtype)}
        return obj, aux, grads, Adaptive(warm, mode, state.count + 1), stats

    def _one_shot(self, model, params: Params, x: jnp.ndarray, y: jnp.ndarray, state, target):
        """One layer-parallel step: forward solve, head, adjoint solve, gradient; (obj, aux, grads, warm, stats)."""
        comm = self.comm
        fw = self._forward(model, params, x, state, target)
        (loss, outputs), head_vjp = self._head_vjp(model, params, y, fw)
        g_class, g_tail, ybar_final = head_vjp(jnp.ones_like(loss))
        layers, ybar_0, ybars, bstats = adjoint_gradient_chunk(
            model.step, fw.theta, fw.hs, fw.ys, ybar_final, self.bwd, self.layouts(model.depth)[1], comm,
            *self._warm(state, "ybars"), target, self.min_iters[1])
        layers = self._layer_gradient(layers, g_tail, self.layouts(model.depth)[0])
        grads = {"opening": fw.open_vjp(ybar_0)[0], "layers": layers, "classifier": g_class}
        obj, grads = self._regularized(model, params, loss, grads)
        result = (obj, {"loss": loss, "outputs": outputs}, grads)

        diverged = anywhere(comm, solve_diverged(fw.ys, fw.stats) | solve_diverged(ybars, bstats))
        fallback = diverged if self.on_divergence == "serial" else jnp.asarray(False)
        if self.on_divergence == "serial":
            result = jax.lax.cond(diverged, lambda: self._exact(model, params, x, y), lambda: result)
        new_state = WarmStart(fw.ys, ybars, ~diverged) if self.warm_start else ()
        stats = {**solve_stats("fwd", fw.stats), **solve_stats("bwd", bstats),
                 "diverged": diverged, "fallback": fallback}
        return (*result, new_state, stats)

    def value(self, model, params: Params, x: jnp.ndarray, y: jnp.ndarray, state) -> jnp.ndarray:
        """The objective data_loss + regularisation with the forward MGRIT solve only."""
        if self.control.adaptive:
            ctl = self.control
            return jax.lax.cond(state.mode >= ctl.serial_mode, lambda: self._exact(model, params, x, y, grad=False),
                                lambda: self._value(model, params, x, y, state.warm, ctl.target(state.mode)))
        return self._value(model, params, x, y, state, None)

    def _value(self, model, params: Params, x: jnp.ndarray, y: jnp.ndarray, state, target) -> jnp.ndarray:
        fw = self._forward(model, params, x, state, target)
        y_final = through_tail(model.step, fw.tail, fw.y_final)
        value = self._regularized(model, params, model.data_loss(model.head(params, y_final), y))[0]
        if self.on_divergence == "serial":
            value = jax.lax.cond(anywhere(self.comm, solve_diverged(fw.ys, fw.stats)),
                                 lambda: self._exact(model, params, x, y, grad=False), lambda: value)
        return value

    # --- pieces ------------------------------------------------------------------------------------
    def _regularized(self, model, params: Params, loss: jnp.ndarray, grads: Params | None = None):
        """(loss + regularisation, grads + its gradient); with ``local_layers`` (loss, grads) unchanged: the
        caller regularises the whole layer stack."""
        if self.local_layers:
            return loss, grads
        if grads is None:
            return loss + model.regularization(params), None
        reg, g_reg = jax.value_and_grad(model.regularization)(params)
        return loss + reg, jax.tree_util.tree_map(jnp.add, grads, g_reg)

    def _exact(self, model, params: Params, x: jnp.ndarray, y: jnp.ndarray, grad: bool = True):
        """The serial (exact) (objective, aux, grads), or with ``grad`` False the objective alone. With
        ``local_layers`` the layer chunks are gathered first (message: all layers, only in this branch), the
        objective is the data loss and the layer gradient this chunk's."""
        if not self.local_layers:
            return (_serial().value_and_grad(model, params, x, y, ())[:3] if grad
                    else _serial().value(model, params, x, y, ()))
        comm, layout = self.comm, self.layouts(model.depth)[0]
        full = {**params, "layers": unspread(jax.tree_util.tree_map(comm.layer_gather, params["layers"]), layout)}
        if not grad:
            return data_objective(model, full, x, y)[0]
        (obj, aux), grads = jax.value_and_grad(lambda p: data_objective(model, p, x, y), has_aux=True)(full)
        return obj, aux, {**grads, "layers": stored_chunk(grads["layers"], comm.layer_rank(), layout)}

    def _warm(self, state, name: str) -> tuple[jnp.ndarray | None, jnp.ndarray | None]:
        """The warm start of one solve: the previous step's states ``name`` and whether they are valid, or Nones."""
        return (getattr(state, name), state.valid) if self.warm_start else (None, None)

    def _forward(self, model, params: Params, x: jnp.ndarray, state, target) -> _Forward:
        comm = self.comm
        y0, open_vjp = jax.vjp(lambda p_open: model.open({**params, "opening": p_open}, x), params["opening"])
        layout = self.layouts(model.depth)[0]
        layers, all_hs = params["layers"], model.step_sizes(y0.dtype)
        if self.local_layers:  # this chunk's weights already (rows: n_local and the tail's room); step sizes all
            theta = jax.tree_util.tree_map(lambda a: a[: layout.n_local], layers)
        else:
            theta = chunk(layers, comm.layer_rank(), layout)
        hs = chunk_real(all_hs, comm.layer_rank(), layout)
        ys, y_final, stats = forward_chunk(model.step, theta, hs, y0, self.fwd, layout, comm, *self._warm(state, "ys"),
                                           target, self.min_iters[0])
        return _Forward(open_vjp, theta, hs, ys, y_final, stats, self._tail_layers(layers, all_hs, layout))

    def _tail_layers(self, layers: Any, hs: jnp.ndarray, layout: Layout) -> Any:
        """(θ, h) of the serial tail's layers on every chunk, or None: the whole stack's last r layers, or with
        ``local_layers`` the last chunk's rows after its MGRIT steps (message: r layers' weights, from it)."""
        if not (self.local_layers and layout.tail):
            return tail_part(layers, hs, layout)
        theta = jax.tree_util.tree_map(
            lambda a: from_chunk(self.comm, layout.chunks - 1, a[layout.last_real: layout.last_rows]), layers)
        return theta, hs[layout.n: layout.depth]

    def _layer_gradient(self, layers: Any, g_tail: Any, layout: Layout) -> Any:
        """The layer gradient from this chunk's MGRIT part (n_local rows) and the tail's (r rows, on every chunk):
        the whole stack's, or with ``local_layers`` this chunk's rows (the tail's in the last chunk's)."""
        comm = self.comm
        if not self.local_layers:
            # message: θ̄ of every chunk, its real layers taken out
            return join_tail(unspread(jax.tree_util.tree_map(comm.layer_gather, layers), layout._replace(tail=0)),
                             g_tail)
        if g_tail is None:
            return layers
        last = comm.layer_rank() == layout.chunks - 1

        def place(g, t):
            g = pad_zeros(g, layout.rows)
            return jnp.where(last, g.at[layout.last_real: layout.last_rows].set(t.astype(g.dtype)), g)

        return jax.tree_util.tree_map(place, layers, g_tail)

    @staticmethod
    def _head_vjp(model, params: Params, y: jnp.ndarray, fw: _Forward):
        """(loss, outputs) and the vjp to (classifier, tail layers, y_{N−r}) of the head after the serial tail."""
        def head_loss(p_class, theta_tail, y_final):
            tail = None if fw.tail is None else (theta_tail, fw.tail[1])
            outputs = model.head({**params, "classifier": p_class}, through_tail(model.step, tail, y_final))
            return model.data_loss(outputs, y), outputs

        theta_tail = None if fw.tail is None else fw.tail[0]
        loss, vjp, outputs = jax.vjp(head_loss, params["classifier"], theta_tail, fw.y_final, has_aux=True)
        return (loss, outputs), vjp


def solve_stats(prefix: str, stats: MGRITStats) -> dict[str, jnp.ndarray]:
    """The per-step log entries of one solve (HDF5 ``mgrit/<prefix>_*``): residuals after each cycle, also
    relative to the norm of the states, the F-relaxed initial residual, the cycles done, the state norm, and
    the convergence factors (geometric mean over cycles ≥ 2, and the last cycle's ratio)."""
    return {f"{prefix}_residual": stats.residuals, f"{prefix}_rel_residual": stats.residuals / stats.state_norm,
            f"{prefix}_initial": stats.initial_residual, f"{prefix}_cycles": stats.iterations,
            f"{prefix}_norm": stats.state_norm, f"{prefix}_factor": convergence_factor(stats),
            f"{prefix}_factor_last": last_factor(stats)}


def _serial() -> SerialSolver:
    """The reference strategy (``lax.scan`` + ``jax.grad``) that a diverged step falls back to."""
    return SerialSolver()
