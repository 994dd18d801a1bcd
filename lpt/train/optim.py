"""Optimisers (optax): sgd with momentum, adam, and L-BFGS with its zoom line search (full batch; the line search
evaluates the objective once per iteration in the compiled step: :mod:`lpt.train.linesearch`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import optax

from lpt.config import check_group
from lpt.train.linesearch import carries_evaluations as _search_carries
from lpt.train.linesearch import lbfgs

_LPT_LBFGS = lbfgs  # optim.lbfgs itself may be replaced (scripts/bench_linesearch.py: optax's own)


def clip_by_global_norm(max_norm: float, norm: Callable[[Any], Any] = optax.tree.norm) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` with the norm as a function: u ← u if ‖u‖ < max_norm, else u·max_norm/‖u‖.
    On layer-sharded parameters ``norm`` sums the squares of the layer leaves over the chunks
    (:func:`lpt.parallel.products.chunk_norm`), so every chunk scales by the norm of the whole gradient."""
    def update(updates, state, params=None):
        del params
        g_norm = norm(updates)
        trigger = g_norm < max_norm
        return jax.tree_util.tree_map(lambda t: jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm),
                                      updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def check_optimizer(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The options of config group ``optimizer`` at the schema's defaults, checked: each against the schema
    (:mod:`lpt.config.run`: ``SGDOptions``, ``AdamOptions``, ``LBFGSOptions``, by :func:`lpt.config.check_group`),
    then what needs two options at once (weight decay with L-BFGS). Raises ConfigError / ValueError."""
    schema = check_group("optimizer", cfg)
    opt = {**dataclasses.asdict(schema()), **cfg}
    if opt["name"] == "lbfgs" and opt["weight_decay"] > 0:
        raise ValueError(f"optimizer.weight_decay={opt['weight_decay']!r} is not available with optimizer=lbfgs "
                         f"(its line search minimises the objective, which a decay outside it would not match); "
                         f"regularise in the objective instead: model.gamma_tik")
    return opt


def make_optimizer(cfg: Mapping[str, Any],
                   norm: Callable[[Any], Any] = optax.tree.norm) -> optax.GradientTransformationExtraArgs:
    """Build the optax transformation for config group ``optimizer``; ``norm`` is the global norm of a
    gradient-shaped pytree that ``clip_norm`` clips by (a sum over the chunks on layer-sharded parameters).

    The options are checked by :func:`check_optimizer` (``validate_config`` runs it before a run builds
    anything). ``weight_decay`` is decoupled: added to the update direction after momentum and Adam's scaling,
    times ``lr``.
    """
    opt = check_optimizer(cfg)
    name, lr, decay, clip = opt["name"], opt["lr"], opt["weight_decay"], opt["clip_norm"]
    # decoupled weight decay (Loshchilov & Hutter): θ ← θ − lr·(direction + weight_decay·θ), the decay added after
    # the momentum / adaptive scaling, so it is neither averaged in the momentum nor divided by Adam's √v
    decayed = [optax.add_decayed_weights(decay)] if decay > 0 else []
    if name == "sgd":
        core = optax.chain(*([optax.trace(opt["momentum"], opt["nesterov"])] if opt["momentum"] else []), *decayed,
                           optax.scale_by_learning_rate(lr))
    elif name == "adam":
        core = optax.chain(optax.scale_by_adam(b1=opt["b1"], b2=opt["b2"], eps=opt["eps"]), *decayed,
                           optax.scale_by_learning_rate(lr))
    else:
        core = lbfgs(learning_rate=lr, memory_size=opt["memory_size"])
    return optax.chain(clip_by_global_norm(clip, norm), core) if clip > 0 else core


def needs_value_fn(cfg: Mapping[str, Any]) -> bool:
    """True for optimisers whose update runs a line search on the objective (L-BFGS)."""
    return cfg.get("name") == "lbfgs"


def carries_evaluations(cfg: Mapping[str, Any]) -> bool:
    """True where the optimiser's line search hands its evaluation at the point it accepts to the next step
    (lpt's L-BFGS, :class:`lpt.train.linesearch.Objective`); False for others, and for optax's own L-BFGS."""
    return needs_value_fn(cfg) and lbfgs is _LPT_LBFGS and _search_carries()
