"""Optimisers (optax): sgd with momentum, adam, and L-BFGS with its line search (full batch)."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import optax

OPTIMIZERS = ("sgd", "adam", "lbfgs")


def _number(cfg: Mapping[str, Any], key: str, default: float | None = None, positive: bool = False) -> float:
    """The finite number ``optimizer.<key>``: > 0 with ``positive``, else ≥ 0 (null: ``default``)."""
    value = cfg.get(key, default)
    if value is None and not positive:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (value > 0 if positive else value >= 0)):
        off = " (0 = off)" if default == 0 else ""
        valid = "a positive finite number" if positive else f"a finite number ≥ 0{off}"
        raise ValueError(f"optimizer.{key}={value!r} must be {valid}")
    return float(value)


def _fraction(cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = cfg.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"optimizer.{key}={value!r} must be a number in [0, 1)")
    return float(value)


def clip_by_global_norm(max_norm: float, norm: Callable[[Any], Any] = optax.tree.norm) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` with the norm as a function: u ← u if ‖u‖ < max_norm, else u·max_norm/‖u‖.
    On layer-sharded parameters ``norm`` sums the squares of the layer leaves over the chunks
    (:func:`lpt.parallel.sharded.chunk_norm`), so every chunk scales by the norm of the whole gradient."""
    def update(updates, state, params=None):
        del params
        g_norm = norm(updates)
        trigger = g_norm < max_norm
        return jax.tree_util.tree_map(lambda t: jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm),
                                      updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: Mapping[str, Any],
                   norm: Callable[[Any], Any] = optax.tree.norm) -> optax.GradientTransformationExtraArgs:
    """Build the optax transformation for config group ``optimizer``; ``norm`` is the global norm of a
    gradient-shaped pytree that ``clip_norm`` clips by (a sum over the chunks on layer-sharded parameters).

    Keys: ``name`` (sgd | adam | lbfgs), ``lr``; sgd: ``momentum``, ``nesterov``; adam: ``b1``, ``b2``, ``eps``;
    lbfgs: ``memory_size`` (its step size comes from a zoom line search; ``lr`` scales the search start);
    sgd and adam: ``weight_decay`` (decoupled: added to the update direction after momentum and Adam's
    scaling, times ``lr``; 0 = off); all: ``clip_norm`` (global gradient-norm clipping, 0 = off).
    """
    name = cfg.get("name")
    lr = _number(cfg, "lr", positive=True)
    decay, clip, eps = (_number(cfg, key, default)
                        for key, default in (("weight_decay", 0.0), ("clip_norm", 0.0), ("eps", 1e-8)))
    if not isinstance(cfg.get("nesterov", False), bool):
        raise ValueError(f"optimizer.nesterov={cfg['nesterov']!r} must be true or false")
    # decoupled weight decay (Loshchilov & Hutter): θ ← θ − lr·(direction + weight_decay·θ), the decay added after
    # the momentum / adaptive scaling, so it is neither averaged in the momentum nor divided by Adam's √v
    decayed = [optax.add_decayed_weights(decay)] if decay > 0 else []
    if name == "sgd":
        momentum = _fraction(cfg, "momentum", 0.9)
        core = optax.chain(*([optax.trace(momentum, cfg.get("nesterov", False))] if momentum else []), *decayed,
                           optax.scale_by_learning_rate(lr))
    elif name == "adam":
        core = optax.chain(optax.scale_by_adam(b1=_fraction(cfg, "b1", 0.9), b2=_fraction(cfg, "b2", 0.999),
                                               eps=eps), *decayed,
                           optax.scale_by_learning_rate(lr))
    elif name == "lbfgs":
        memory = cfg.get("memory_size", 10)
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 1:
            raise ValueError(f"optimizer.memory_size={memory!r} must be an integer ≥ 1 (L-BFGS history length)")
        if decay > 0:
            raise ValueError(f"optimizer.weight_decay={decay!r} is not available with optimizer=lbfgs (its line "
                             f"search minimises the objective, which a decay outside it would not match); "
                             f"regularise in the objective instead: model.gamma_tik")
        core = optax.lbfgs(learning_rate=lr, memory_size=memory)
    else:
        raise ValueError(f"optimizer.name={name!r} is not a known optimizer; choose one of {list(OPTIMIZERS)}")
    return optax.chain(clip_by_global_norm(clip, norm), core) if clip > 0 else core


def needs_value_fn(cfg: Mapping[str, Any]) -> bool:
    """True for optimisers whose update runs a line search on the objective (L-BFGS)."""
    return cfg.get("name") == "lbfgs"
