"""Nonlinear regression tasks (after Datar & Köstler): the peaks surface, and a surrogate of a
numerical simulation (the flow map of a damped pendulum)."""

from __future__ import annotations

import math

import numpy as np

from lpt.data.common import (
    Dataset,
    FloatName,
    check_dtype,
    check_float,
    check_int,
    make_dataset,
    make_rng,
    standardize,
)
from lpt.data.peaks import peaks_function, sample_uniform

PEAKS_NAME = "regression_peaks"
PENDULUM_NAME = "regression_pendulum"
THETA_RANGE = (-math.pi, math.pi)
OMEGA_RANGE = (-2.0, 2.0)
RK4_MAX_STEP = 0.01
"""Largest RK4 step of the pendulum simulation; each interval ``dt`` is split into equal steps."""


def load_regression_peaks(
    *, seed: int = 0, n_train: int = 5000, n_val: int = 500, dtype: FloatName = "float32"
) -> Dataset:
    """Regression of the peaks surface ``z(x, y)`` (see :func:`lpt.data.peaks.peaks_function`).

    Layout: inputs ``(n, 2)`` drawn uniformly from ``[-3, 3]^2`` with
    ``numpy.random.default_rng(seed)`` (training first, then validation), not normalised; targets
    ``(n, 1)``. Normalisation: targets are standardised with the mean and standard deviation of
    the *training* targets, ``y = (z - mean_train) / std_train``, applied to both splits.

    Args:
        seed: Seed of the input draws.
        n_train: Number of training points.
        n_val: Number of validation points.
        dtype: Dtype of inputs and targets, ``"float32"`` or ``"float64"``.

    Returns:
        A regression :class:`Dataset` with ``num_outputs=1``.

    Raises:
        DataError: For invalid options.
    """
    n_train = check_int(PEAKS_NAME, "n_train", n_train)
    n_val = check_int(PEAKS_NAME, "n_val", n_val)
    fdtype = check_dtype(PEAKS_NAME, dtype)
    rng = make_rng(PEAKS_NAME, seed)
    x_train, x_val = sample_uniform(rng, n_train), sample_uniform(rng, n_val)
    z_train, z_val = (peaks_function(x[:, :1], x[:, 1:]) for x in (x_train, x_val))
    y_train, y_val = standardize(z_train, z_val)
    return make_dataset(PEAKS_NAME, "regression", 1, (x_train, y_train), (x_val, y_val), fdtype)


def pendulum_rhs(state: np.ndarray, g_over_l: float, damping: float) -> np.ndarray:
    """Right-hand side of the damped pendulum, ``(θ, ω)' = (ω, -(g/L) sin θ - c ω)``.

    Args:
        state: States ``(..., 2)`` = ``(θ, ω)``.
        g_over_l: ``g / L``.
        damping: ``c``.
    """
    theta, omega = state[..., 0], state[..., 1]
    return np.stack([omega, -g_over_l * np.sin(theta) - damping * omega], axis=-1)


def pendulum_flow(
    state: np.ndarray, dt: float, g_over_l: float, damping: float, steps: int
) -> np.ndarray:
    """Advances states by ``dt`` with ``steps`` classical RK4 steps (vectorised over states).

    Args:
        state: States ``(n, 2)``.
        dt: Time interval.
        g_over_l: ``g / L``.
        damping: ``c``.
        steps: Number of RK4 steps of size ``dt / steps``.

    Returns:
        The states at time ``t + dt``, ``(n, 2)`` float64.
    """
    h = dt / steps
    s = np.asarray(state, dtype=np.float64)
    for _ in range(steps):
        k1 = pendulum_rhs(s, g_over_l, damping)
        k2 = pendulum_rhs(s + 0.5 * h * k1, g_over_l, damping)
        k3 = pendulum_rhs(s + 0.5 * h * k2, g_over_l, damping)
        k4 = pendulum_rhs(s + h * k3, g_over_l, damping)
        s = s + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return s


def _pendulum_pairs(
    rng: np.random.Generator,
    n: int,
    *,
    dt: float,
    g_over_l: float,
    damping: float,
    trajectory_steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs ``(s(t0), s(t0 + dt))`` drawn from simulated trajectories.

    Simulates ``ceil(n / trajectory_steps)`` trajectories from uniform initial states over
    ``trajectory_steps`` intervals ``dt``, collects all consecutive pairs and keeps a random ``n``.
    """
    n_traj = -(-n // trajectory_steps)
    state = np.column_stack(
        [rng.uniform(*THETA_RANGE, size=n_traj), rng.uniform(*OMEGA_RANGE, size=n_traj)]
    )
    steps = max(1, math.ceil(dt / RK4_MAX_STEP))
    inputs, targets = [], []
    for _ in range(trajectory_steps):
        nxt = pendulum_flow(state, dt, g_over_l, damping, steps)
        inputs.append(state)
        targets.append(nxt)
        state = nxt
    keep = rng.permutation(n_traj * trajectory_steps)[:n]
    return np.concatenate(inputs)[keep], np.concatenate(targets)[keep]


def load_regression_pendulum(
    *,
    seed: int = 0,
    n_train: int = 5000,
    n_val: int = 500,
    dt: float = 0.5,
    damping: float = 0.1,
    g_over_l: float = 1.0,
    trajectory_steps: int = 10,
    dtype: FloatName = "float32",
) -> Dataset:
    """Surrogate of a simulation: the flow map ``Φ_dt`` of the damped pendulum.

    ``θ'' = -(g/L) sin θ - c θ'`` with state ``s = (θ, ω = θ')``. Trajectories start from
    initial states drawn uniformly from ``θ0 ∈ [-π, π]``, ``ω0 ∈ [-2, 2]``
    (``numpy.random.default_rng(seed)``) and are integrated with fixed-step classical RK4
    (step ``<= 0.01``, vectorised over trajectories) over ``trajectory_steps`` intervals of
    length ``dt``. Every consecutive pair ``(s(t0), s(t0 + dt))`` is a sample; ``n_train``
    (``n_val``) samples are drawn at random from the pairs of separate training (validation)
    trajectories, so the two splits share no trajectory.

    Layout: inputs ``s(t0)`` ``(n, 2)``, targets ``s(t0 + dt)`` ``(n, 2)``, columns ``(θ, ω)``;
    ``θ`` is not wrapped to ``[-π, π)`` (the map stays continuous). No normalisation: inputs and
    targets are raw states in the same coordinates, so the learned map can be composed.

    Args:
        seed: Seed of the initial states and sample selection.
        n_train: Number of training pairs.
        n_val: Number of validation pairs.
        dt: Time interval ``Δt`` of the map, ``> 0``.
        damping: Damping coefficient ``c >= 0``.
        g_over_l: ``g / L > 0``.
        trajectory_steps: Number of intervals ``dt`` simulated per trajectory; 1 gives one
            sample per trajectory (inputs = initial states).
        dtype: Dtype of inputs and targets, ``"float32"`` or ``"float64"``.

    Returns:
        A regression :class:`Dataset` with ``num_outputs=2``.

    Raises:
        DataError: For invalid options.
    """
    name = PENDULUM_NAME
    n_train = check_int(name, "n_train", n_train)
    n_val = check_int(name, "n_val", n_val)
    physics = {
        "dt": check_float(name, "dt", dt, positive=True),
        "damping": check_float(name, "damping", damping, positive=False),
        "g_over_l": check_float(name, "g_over_l", g_over_l, positive=True),
        "trajectory_steps": check_int(name, "trajectory_steps", trajectory_steps),
    }
    fdtype = check_dtype(name, dtype)
    rng = make_rng(name, seed)
    train = _pendulum_pairs(rng, n_train, **physics)
    val = _pendulum_pairs(rng, n_val, **physics)
    return make_dataset(name, "regression", 2, train, val, fdtype)
