"""What the loop does after a rejected step (``train.on_nonfinite``).

The jitted step (:func:`lpt.train.state.make_train_step`) rejects a step whose objective, gradient, new
parameters or new solver state hold NaN or inf: it returns the previous state with only ``step`` advanced and
``metrics["rejected"] = True``. :class:`NonFiniteGuard` then applies the configured policy:

* ``reduce_lr`` — keep the rejected step (the batch is skipped) and multiply the step-size scale s of
  θ ← θ + s·Δθ by ``train.lr_factor``; s is part of the checkpointed :class:`~lpt.train.state.TrainState`, so a
  resumed run continues bit for bit.
* ``serial`` — recompute the step from the last good state with the serial solver (``lax.scan`` +
  ``jax.grad``); if that is non-finite too, continue as with ``reduce_lr``.
* ``stop`` — write a checkpoint of the last good state; the loop logs the rejected step and raises
  :attr:`NonFiniteGuard.failure` (a :class:`NonFiniteError`).

``train.max_rejections`` consecutive rejected steps stop the run as ``stop`` does.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lpt.train.build import LoopSettings
from lpt.train.state import TrainState

log = logging.getLogger("lpt")

StepFn = Callable[[TrainState, jnp.ndarray, jnp.ndarray], tuple[TrainState, dict, dict]]


class NonFiniteError(FloatingPointError):
    """Training stopped on non-finite values; a checkpoint of the last good state was written."""


def inject_nan(x: jnp.ndarray) -> jnp.ndarray:
    """The batch ``x`` with every entry NaN (the fault of ``train.inject_nan_at_step``, for tests)."""
    return jnp.full_like(x, jnp.nan)


class NonFiniteGuard:
    """Applies ``loop.on_nonfinite`` to rejected steps.

    Args:
        loop: the loop settings (policy, ``lr_factor``, ``max_rejections``).
        serial_step: builds the jitted step with the serial solver (called once, at the first fault).
        save_last_good: writes a checkpoint of a state (the last good one) before the run stops.
    """

    def __init__(self, loop: LoopSettings, serial_step: Callable[[], StepFn],
                 save_last_good: Callable[[TrainState], Any]):
        self.loop = loop
        self._make_serial_step = serial_step
        self._serial_step: StepFn | None = None
        self._save = save_last_good
        self.consecutive = 0
        self.failure: NonFiniteError | None = None  # set when the run must stop (after logging the step)

    def check(self, prev: TrainState, state: TrainState, metrics: dict, x: jnp.ndarray, y: jnp.ndarray,
              done: int) -> tuple[TrainState, dict, bool]:
        """After step ``done`` (from ``prev`` on batch ``x, y`` to ``state``): (state, metrics, non-finite?).

        Waits for the step's rejection flag (one scalar from the device per step). When the run must stop,
        the last good state is checkpointed and :attr:`failure` is set for the loop to raise.
        """
        if not bool(metrics["rejected"]):
            self.consecutive = 0
            return state, metrics, False
        what = _describe(metrics)
        if self.loop.on_nonfinite == "serial":
            if self._serial_step is None:
                self._serial_step = self._make_serial_step()
            retry, retry_metrics, _ = self._serial_step(prev, x, y)
            if not bool(retry_metrics["rejected"]):
                log.warning("step %d: non-finite values (%s); step recomputed with the serial solver", done, what)
                self.consecutive = 0
                return retry, retry_metrics, True
            log.warning("step %d: non-finite values (%s), also with the serial solver", done, what)
        self.consecutive += 1
        if self.loop.on_nonfinite == "stop" or self.consecutive >= self.loop.max_rejections:
            path = self._save(prev)
            why = ("train.on_nonfinite=stop" if self.loop.on_nonfinite == "stop"
                   else f"{self.consecutive} consecutive rejected steps (train.max_rejections)")
            self.failure = NonFiniteError(
                f"step {done} produced non-finite values ({what}); stopped by {why}. The last good state (step "
                f"{int(prev.step)}) is checkpointed in {path}: continue with resume={path.parent} after a change "
                f"such as a smaller optimizer.lr, or set train.on_nonfinite=reduce_lr")
            return state, metrics, True
        current = np.float32(1.0) if state.lr_scale is None else np.asarray(jax.device_get(state.lr_scale))
        scale = np.float32(current * np.float32(self.loop.lr_factor))
        log.warning("step %d rejected: non-finite values (%s); continuing from the last good state with the step "
                    "size scaled by %g", done, what, scale)
        return state._replace(lr_scale=jnp.asarray(scale, jnp.float32)), metrics, True


def _describe(metrics: dict) -> str:
    vals = jax.device_get({k: metrics[k] for k in ("objective", "grad_norm") if k in metrics})
    return ", ".join(f"{k} {float(v):.3g}" for k, v in vals.items())
