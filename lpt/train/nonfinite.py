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
from lpt.train.state import FaultPolicy, TrainState

log = logging.getLogger("lpt")

StepFn = Callable[[TrainState, jnp.ndarray, jnp.ndarray], tuple[TrainState, dict, dict]]


class NonFiniteError(FloatingPointError):
    """Training stopped on non-finite values; a checkpoint of the last good state was written."""


def inject_nan(x: jnp.ndarray) -> jnp.ndarray:
    """The batch ``x`` with every entry NaN (the fault of ``train.inject_nan_at_step``, for tests)."""
    return jnp.full_like(x, jnp.nan)


class NonFiniteGuard:
    """Applies ``loop.on_nonfinite`` to rejected steps.

    With ``reduce_lr`` and ``stop`` the compiled step applies the policy itself (:meth:`policy`), and the loop
    reads the steps' flags only when it logs a row: :meth:`review` then goes through the steps since the last
    row in order, warns about each rejected one and counts them; the step that ends the run (``stop``, or the
    ``train.max_rejections``-th consecutive rejection) sets :attr:`failure`, and the state the step returned is
    the last good one. ``serial`` needs the host at once (the recomputation starts from there): :meth:`check`
    waits for every step's flag.

    Args:
        loop: the loop settings (policy, ``lr_factor``, ``max_rejections``).
        serial_step: builds the jitted step with the serial solver (called once, at the first fault).
        save_last_good: writes a checkpoint of a state (the last good one) before the run stops.
        lr_scale, rejections: the step-size scale and the consecutive rejections of the state the run starts from.
    """

    def __init__(self, loop: LoopSettings, serial_step: Callable[[], StepFn],
                 save_last_good: Callable[[TrainState], Any], lr_scale: float = 1.0, rejections: int = 0):
        self.loop = loop
        self._make_serial_step = serial_step
        self._serial_step: StepFn | None = None
        self._save = save_last_good
        self.consecutive = rejections
        self.scale = np.float32(lr_scale)
        self.rejected = 0  # rejected steps in this run
        self.failure: NonFiniteError | None = None  # set by :meth:`stop`
        self._halt: tuple | None = None

    @property
    def eager(self) -> bool:
        """Whether every step's flag must be read at once (``serial``: the recomputation is started by the host)."""
        return self.loop.on_nonfinite == "serial"

    def policy(self) -> FaultPolicy | None:
        """What the compiled step does with a rejected step (None for ``serial``: the host decides)."""
        if self.eager:
            return None
        stop = self.loop.on_nonfinite == "stop"
        return FaultPolicy(scale_lr=not stop, lr_factor=self.loop.lr_factor,
                           halt_after=1 if stop else self.loop.max_rejections)

    def review(self, done: int, metrics: dict) -> bool:
        """The flag of step ``done`` (host values, steps in order) under ``reduce_lr`` / ``stop``: whether it was
        rejected. Warns, counts, and sets :attr:`failure` at the step that ends the run."""
        if not bool(metrics["rejected"]):
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.rejected += 1
        if self.loop.on_nonfinite == "stop" or self.consecutive >= self.loop.max_rejections:
            self._fail(done, _describe(metrics), done - 1)
            return True
        self.scale = np.float32(self.scale * np.float32(self.loop.lr_factor))
        log.warning("step %d rejected: non-finite values (%s); continuing from the last good state with the step "
                    "size scaled by %g", done, _describe(metrics), self.scale)
        return True

    def _fail(self, done: int, what: str, last_good: int) -> None:
        why = ("train.on_nonfinite=stop" if self.loop.on_nonfinite == "stop"
               else f"{self.consecutive} consecutive rejected steps (train.max_rejections)")
        self._halt = (done, what, why, last_good)

    @property
    def halted(self) -> bool:
        """Whether a reviewed or checked step ended the run (the loop then calls :meth:`stop`)."""
        return self._halt is not None

    def stop(self, state: TrainState) -> NonFiniteError:
        """Checkpoint the last good ``state`` (its count of rejections reset: a resumed run starts afresh) and
        return the error the run ends with (also kept as :attr:`failure`)."""
        done, what, why, last_good = self._halt
        count = state.rejections
        path = self._save(state if count is None else state._replace(rejections=jnp.zeros_like(count)))
        self.failure = NonFiniteError(
            f"step {done} produced non-finite values ({what}); stopped by {why}. The last good state (step "
            f"{last_good}) is checkpointed in {path}: continue with resume={path.parent} after a change such as a "
            f"smaller optimizer.lr, or set train.on_nonfinite=reduce_lr")
        return self.failure

    def check(self, state: TrainState, metrics: dict, x: jnp.ndarray, y: jnp.ndarray,
              done: int) -> tuple[TrainState, dict, bool]:
        """Under ``serial``, after step ``done`` on batch ``x, y`` gave ``state``: (state, metrics, non-finite?).

        Waits for the step's rejection flag (one scalar from the device). A rejected step returned the state
        before it with ``step`` advanced: the serial recomputation starts from that state.
        """
        if not bool(metrics["rejected"]):
            self.consecutive = 0
            return state, metrics, False
        what = _describe(metrics)
        prev = state._replace(step=state.step - 1)
        if self._serial_step is None:
            self._serial_step = self._make_serial_step()
        retry, retry_metrics, _ = self._serial_step(prev, x, y)
        if not bool(retry_metrics["rejected"]):
            log.warning("step %d: non-finite values (%s); step recomputed with the serial solver", done, what)
            self.consecutive = 0
            return retry, retry_metrics, True
        log.warning("step %d: non-finite values (%s), also with the serial solver", done, what)
        self.consecutive += 1
        self.rejected += 1
        if self.consecutive >= self.loop.max_rejections:
            self._fail(done, what, int(prev.step))
            return prev, metrics, True
        self.scale = np.float32(self.scale * np.float32(self.loop.lr_factor))
        log.warning("step %d rejected: non-finite values (%s); continuing from the last good state with the step "
                    "size scaled by %g", done, what, self.scale)
        return state._replace(lr_scale=jnp.asarray(self.scale, jnp.float32)), metrics, True


def _describe(metrics: dict) -> str:
    vals = jax.device_get({k: metrics[k] for k in ("objective", "grad_norm") if k in metrics})
    return ", ".join(f"{k} {float(v):.3g}" for k, v in vals.items())
