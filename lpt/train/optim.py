"""Optimisers (optax): sgd with momentum, adam, and L-BFGS with its line search (full batch)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import optax

OPTIMIZERS = ("sgd", "adam", "lbfgs")


def _positive(cfg: Mapping[str, Any], key: str) -> float:
    value = cfg.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"optimizer.{key}={value!r} must be a positive finite number")
    return float(value)


def _fraction(cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = cfg.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"optimizer.{key}={value!r} must be a number in [0, 1)")
    return float(value)


def make_optimizer(cfg: Mapping[str, Any]) -> optax.GradientTransformationExtraArgs:
    """Build the optax transformation for config group ``optimizer``.

    Keys: ``name`` (sgd | adam | lbfgs), ``lr``; sgd: ``momentum``, ``nesterov``; adam: ``b1``, ``b2``, ``eps``;
    lbfgs: ``memory_size`` (its step size comes from a zoom line search; ``lr`` scales the search start);
    all: ``weight_decay`` (decoupled, 0 = off), ``clip_norm`` (global gradient-norm clipping, 0 = off).
    """
    name = cfg.get("name")
    lr = _positive(cfg, "lr")
    if name == "sgd":
        core = optax.sgd(lr, momentum=_fraction(cfg, "momentum", 0.9) or None, nesterov=bool(cfg.get("nesterov", False)))
    elif name == "adam":
        core = optax.adam(lr, b1=_fraction(cfg, "b1", 0.9), b2=_fraction(cfg, "b2", 0.999), eps=float(cfg.get("eps", 1e-8)))
    elif name == "lbfgs":
        memory = cfg.get("memory_size", 10)
        if not isinstance(memory, int) or memory < 1:
            raise ValueError(f"optimizer.memory_size={memory!r} must be a positive integer")
        core = optax.lbfgs(learning_rate=lr, memory_size=memory)
    else:
        raise ValueError(f"optimizer.name={name!r} is not a known optimizer; choose one of {list(OPTIMIZERS)}")
    parts = []
    clip = float(cfg.get("clip_norm", 0.0) or 0.0)
    if clip < 0:
        raise ValueError(f"optimizer.clip_norm={clip!r} must be ≥ 0 (0 = off)")
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    decay = float(cfg.get("weight_decay", 0.0) or 0.0)
    if decay < 0:
        raise ValueError(f"optimizer.weight_decay={decay!r} must be ≥ 0 (0 = off)")
    if decay > 0:
        parts.append(optax.add_decayed_weights(decay))
    return optax.chain(*parts, core) if parts else core


def needs_value_fn(cfg: Mapping[str, Any]) -> bool:
    """True for optimisers whose update runs a line search on the objective (L-BFGS)."""
    return cfg.get("name") == "lbfgs"
