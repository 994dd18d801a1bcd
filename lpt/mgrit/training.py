"""One-shot layer-parallel training strategy (Günther et al. 2020, §4; DESIGN §3).

Per optimisation step: a few forward MGRIT cycles (default 2), the head and loss, a few adjoint MGRIT cycles
(default 1), and the gradient assembled explicitly:

    y_0 = open(x; θ_open),  y ≈ MGRIT(y_0; θ),  ȳ_N = ∂loss/∂y_N,  ȳ ≈ adjoint MGRIT(ȳ_N; θ, y),
    ∇_{θ_n} = (∂Φ_n/∂θ_n(y_n))ᵀ ȳ_{n+1},  ∇_{θ_open} = (∂open/∂θ_open)ᵀ ȳ_0,
    ∇_{W_c, b_c} by the chain rule of the head, plus the gradient of the regularisation.

With ``warm_start`` (full-batch training) the states y and ȳ of the previous step are the next initial
iterate; otherwise the cheap coarse-level guess is used every step. Divergence (non-finite states or
residuals, or a residual that grows over two cycles) is reported in the stats and, with
``on_divergence="serial"``, answered by a serial recomputation of the step inside the compiled function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from lpt.mgrit.adjoint import adjoint_hierarchy, layer_gradient
from lpt.mgrit.layout import Layout, chunk, make_layout, pad_multiple
from lpt.mgrit.options import MGRITOptions, require
from lpt.mgrit.solve import MGRITStats, convergence_factor, forward_hierarchy, initial_guess, padded, solve_system
from lpt.model import Params
from lpt.parallel.comm import SingleComm

OnDivergence = Literal["error", "serial"]

CONFIG_KEYS = ("cfactor", "max_levels", "min_coarse", "nrelax", "nrelax_fine", "cycle", "fwd_iters", "bwd_iters",
               "abs_tol", "rel_tol", "bwd_levels", "bwd_tol", "restrict", "warm_start", "on_divergence",
               "interval_batch", "skip_first_down")
ONE_CYCLE_GROWTH = 10.0
"""Growth factor of a one-cycle solve's residual that counts as divergence."""
GROWTH_ULPS = 100.0
"""A residual counts as growing only above GROWTH_ULPS·eps·‖y‖₂ (below that it is round-off)."""


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
    y_final: jnp.ndarray  # y_N, on every chunk
    stats: MGRITStats


def _grew(stats: MGRITStats, floor: jnp.ndarray) -> jnp.ndarray:
    """Whether the solve diverges: the residual grew in two consecutive cycles, ‖r_k‖ > ‖r_{k−1}‖ > ‖r_{k−2}‖
    (r_0 the initial residual; DESIGN §3: "factor > 1 over two cycles"), or grew by more than
    :data:`ONE_CYCLE_GROWTH` in a single cycle — in both cases above the round-off floor.

    A warm-started cycle often ends above its start when the weights have just changed (factors up to ≈ 3 were
    measured on the main job, followed by a contracting cycle); a diverging solve keeps growing.
    """
    seq = jnp.concatenate([stats.initial_residual[None], stats.residuals])
    k = jnp.arange(1, seq.shape[0])
    done = k <= stats.iterations
    up = done & (seq[1:] > seq[:-1]) & (seq[1:] > floor)
    twice = jnp.any(up[1:] & up[:-1])
    jump = jnp.any(done & (seq[1:] > ONE_CYCLE_GROWTH * seq[:-1]) & (seq[1:] > floor))
    return twice | jump


def _finite(stats: MGRITStats) -> jnp.ndarray:
    """Whether the residuals of all cycles done are finite."""
    done = jnp.arange(stats.residuals.shape[0]) < stats.iterations
    return jnp.all(jnp.isfinite(stats.residuals) | ~done)


def _diverged(states: jnp.ndarray, stats: MGRITStats) -> jnp.ndarray:
    floor = GROWTH_ULPS * jnp.finfo(states.dtype).eps * jnp.sqrt(jnp.sum(jnp.square(states)))
    return ~jnp.all(jnp.isfinite(states)) | ~_finite(stats) | _grew(stats, floor)


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
            ``n_local`` layers' states (the warm-start state too); parameters, objective and gradient are
            the same on every chunk (layer gradients are gathered), so the optimiser runs unchanged.
    """

    fwd: MGRITOptions = field(default_factory=lambda: MGRITOptions(max_iter=2))
    bwd: MGRITOptions = field(default_factory=lambda: MGRITOptions(max_iter=1))
    warm_start: bool = True
    on_divergence: OnDivergence = "serial"
    comm: Any = SingleComm()

    def __post_init__(self) -> None:
        require(isinstance(self.warm_start, bool), f"solver.warm_start={self.warm_start!r} must be true or false")
        require(self.on_divergence in ("error", "serial"),
                f"solver.on_divergence={self.on_divergence!r} is not valid; choose error or serial")

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], full_batch: bool = True) -> "MGRITSolver":
        """Build from the ``solver`` config group (configs/solver/mgrit.yaml); the key ``name`` is ignored.

        Args:
            cfg: mapping with the keys of :data:`CONFIG_KEYS` (missing ones take the defaults).
            full_batch: resolves ``warm_start: auto`` (warm start exactly for full-batch training).
        """
        unknown = sorted(set(cfg) - set(CONFIG_KEYS) - {"name"})
        require(not unknown, f"unknown solver option(s) {unknown}; valid keys are {list(CONFIG_KEYS)}")
        get = cfg.get
        cfactor = get("cfactor", 4)
        if not isinstance(cfactor, (int, str)) and hasattr(cfactor, "__iter__"):
            cfactor = tuple(cfactor)
        max_levels = get("max_levels", 10)
        for name, default in (("fwd_iters", 2), ("bwd_iters", 1)):
            value = get(name, default)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"solver.{name}={value!r} must be an integer ≥ 1 (MGRIT cycles per training step)")
        bwd_levels = get("bwd_levels")
        require(bwd_levels is None or (isinstance(bwd_levels, int) and not isinstance(bwd_levels, bool)
                                       and bwd_levels >= 1),
                f"solver.bwd_levels={bwd_levels!r} must be null (= max_levels) or an integer ≥ 1")
        bwd_tol = get("bwd_tol")
        require(bwd_tol is None or (isinstance(bwd_tol, (int, float)) and not isinstance(bwd_tol, bool)
                                    and bwd_tol >= 0),
                f"solver.bwd_tol={bwd_tol!r} must be null (= abs_tol) or a number ≥ 0")
        common = dict(cfactor=cfactor, min_coarse=get("min_coarse", 2), nrelax=get("nrelax", 1),
                      nrelax_fine=get("nrelax_fine"), cycle=get("cycle", "V"), rel_tol=get("rel_tol", 0.0),
                      restrict=get("restrict", "inject"), interval_batch=get("interval_batch", "auto"),
                      skip_first_down=get("skip_first_down", False))
        abs_tol = get("abs_tol", 0.0)
        fwd = MGRITOptions(**common, max_levels=max_levels, max_iter=get("fwd_iters", 2), abs_tol=abs_tol)
        bwd = MGRITOptions(**common, max_levels=max_levels if bwd_levels is None else bwd_levels,
                           max_iter=get("bwd_iters", 1), abs_tol=abs_tol if bwd_tol is None else bwd_tol)
        warm = get("warm_start", "auto")
        require(warm in ("auto", True, False), f"solver.warm_start={warm!r} must be auto, true or false")
        return cls(fwd=fwd, bwd=bwd, warm_start=full_batch if warm == "auto" else bool(warm),
                   on_divergence=get("on_divergence", "serial"))

    # --- the Solver protocol -----------------------------------------------------------------------
    def layouts(self, depth: int) -> tuple[Layout, Layout]:
        """Forward and adjoint layouts of a depth-N network on ``comm.layers`` chunks, with one padding."""
        p = self.comm.layers
        fwd = make_layout(depth, self.fwd, p, multiple=pad_multiple(depth, self.bwd, p))
        return fwd, make_layout(depth, self.bwd, p, multiple=fwd.n_pad)

    def init_state(self, model, params: Params, x: jnp.ndarray) -> WarmStart | tuple:
        """Empty warm-start states of this chunk for a batch x (``valid`` False), or () without warm start."""
        if not self.warm_start:
            return ()
        y0 = jax.eval_shape(model.open, params, x)
        zeros = jnp.zeros((self.layouts(model.depth)[0].n_local + 1, *y0.shape), y0.dtype)
        return WarmStart(zeros, zeros, jnp.asarray(False))

    def value_and_grad(self, model, params: Params, x: jnp.ndarray, y: jnp.ndarray, state):
        """Objective, aux {"loss", "outputs"}, gradient, new warm-start state and stats of one step."""
        comm = self.comm
        fw = self._forward(model, params, x, state)
        (loss, outputs), head_vjp = self._head_vjp(model, params, y, fw.y_final)
        g_class, ybar_final = head_vjp(jnp.ones_like(loss))
        hier = adjoint_hierarchy(model.step, fw.theta, fw.hs, fw.ys, self.bwd, self.layouts(model.depth)[1], comm)
        w_init = self._guess(state, "ybars", lambda: initial_guess(hier, ybar_final)[::-1])
        w, bstats = solve_system(hier, ybar_final, None if w_init is None else w_init[::-1])
        ybars = w[::-1]
        ybar_0 = _from_chunk(comm, 0, ybars[0])
        layers = layer_gradient(model.step, fw.theta, fw.hs, fw.ys, ybars, self.bwd.interval_batch)
        layers = jax.tree_util.tree_map(lambda g: comm.layer_gather(g)[: model.depth], layers)  # message: θ̄
        reg, g_reg = jax.value_and_grad(model.regularization)(params)
        grads = {"opening": fw.open_vjp(ybar_0)[0], "layers": layers, "classifier": g_class}
        grads = jax.tree_util.tree_map(jnp.add, grads, g_reg)
        result = (loss + reg, {"loss": loss, "outputs": outputs}, grads)

        diverged = _anywhere(comm, _diverged(fw.ys, fw.stats) | _diverged(ybars, bstats))
        fallback = diverged if self.on_divergence == "serial" else jnp.asarray(False)
        if self.on_divergence == "serial":
            result = jax.lax.cond(diverged, lambda: _serial().value_and_grad(model, params, x, y, ())[:3],
                                  lambda: result)
        new_state = WarmStart(fw.ys, ybars, ~diverged) if self.warm_start else ()
        stats = {"fwd_residual": fw.stats.residuals, "bwd_residual": bstats.residuals,
                 "fwd_factor": convergence_factor(fw.stats), "bwd_factor": convergence_factor(bstats),
                 "diverged": diverged, "fallback": fallback}
        return (*result, new_state, stats)

    def value(self, model, params: Params, x: jnp.ndarray, y: jnp.ndarray, state) -> jnp.ndarray:
        """The objective data_loss + regularisation with the forward MGRIT solve only."""
        fw = self._forward(model, params, x, state)
        value = model.data_loss(model.head(params, fw.y_final), y) + model.regularization(params)
        if self.on_divergence == "serial":
            value = jax.lax.cond(_anywhere(self.comm, _diverged(fw.ys, fw.stats)),
                                 lambda: _serial().value(model, params, x, y, ()), lambda: value)
        return value

    # --- pieces ------------------------------------------------------------------------------------
    def _guess(self, state, name: str, cheap: Callable[[], jnp.ndarray]) -> jnp.ndarray | None:
        """Initial iterate: previous states when warm and valid, else the cheap guess (None: solver default)."""
        if not self.warm_start:
            return None
        warm = getattr(state, name)
        # line searches may evaluate trial parameters of a promoted dtype: keep the state's
        return jax.lax.cond(state.valid, lambda: warm, lambda: cheap().astype(warm.dtype))

    def _forward(self, model, params: Params, x: jnp.ndarray, state) -> _Forward:
        comm = self.comm
        y0, open_vjp = jax.vjp(lambda p_open: model.open({**params, "opening": p_open}, x), params["opening"])
        layout = self.layouts(model.depth)[0]
        theta, hs = chunk(padded(params["layers"], model.step_sizes(y0.dtype), layout), comm.layer_rank(),
                          layout.n_local)
        hier = forward_hierarchy(model.step, theta, hs, self.fwd, layout, comm)
        u_init = self._guess(state, "ys", lambda: initial_guess(hier, y0))
        ys, stats = solve_system(hier, y0, u_init)
        # identity padding carries y_N unchanged to the end of the last chunk
        return _Forward(open_vjp, theta, hs, ys, _from_chunk(comm, comm.layers - 1, ys[-1]), stats)

    @staticmethod
    def _head_vjp(model, params: Params, y: jnp.ndarray, y_final: jnp.ndarray):
        def head_loss(p_class, y_final):
            outputs = model.head({**params, "classifier": p_class}, y_final)
            return model.data_loss(outputs, y), outputs

        loss, vjp, outputs = jax.vjp(head_loss, params["classifier"], y_final, has_aux=True)
        return (loss, outputs), vjp


def _from_chunk(comm, owner: int, x: jnp.ndarray) -> jnp.ndarray:
    """``x`` of chunk ``owner`` on every chunk (a masked sum over the chunks: exact)."""
    # message: one state, reduced over the layer chunks
    return comm.layer_sum(jnp.where(comm.layer_rank() == owner, x, jnp.zeros_like(x)))


def _anywhere(comm, flag: jnp.ndarray) -> jnp.ndarray:
    """True on every chunk if ``flag`` is set on any chunk (all chunks then take the same branch)."""
    return comm.layer_sum(flag.astype(jnp.int32)) > 0


def _serial():
    """The reference strategy (``lax.scan`` + ``jax.grad``) that a diverged step falls back to."""
    from lpt.train.solver import SerialSolver  # lpt.train builds the MGRIT strategy: import lazily

    return SerialSolver()
