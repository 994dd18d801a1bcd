"""The contract between a network and the solvers, trainer and logs: :class:`Model`.

A model is a time-stepping problem (DESIGN §1): an opening y_0 = open(x), N steps y_{n+1} = step(θ_n, y_n, h_n)
with the layer parameters stacked along a leading axis, and a head. :class:`~lpt.model.resnet.ResNet` and
:class:`~lpt.model.transformer.Transformer` meet it; :class:`lpt.model.serial.SerialSolver` and
:class:`lpt.mgrit.MGRITSolver` use nothing else.

Parameters are split into three parts, the keys of the parameter dict:

* ``"opening"``, ``"classifier"``: replicated on every layer rank (used at the first / last layer only);
* ``"layers"``: every leaf has ``depth`` entries along axis 0 (θ_0 … θ_{N−1}); solvers chunk, pad, restrict
  and shard along that axis.

**Identity steps.** ``step(θ, y, 0) == y`` exactly, for every θ and y: MGRIT pads uneven depths and levels
with steps of size h = 0 (:mod:`lpt.mgrit.layout`), and every iterate at a real layer is independent of that
padding only because such a step is the identity. A residual step y + h·F(θ, y) meets it (0·F = 0 for finite
F); ``tests/test_model_protocol.py`` checks it bit for bit for every model.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Params = dict[str, Any]

PARAM_PARTS = ("opening", "layers", "classifier")
"""The parts of a model's parameters: replicated opening and classifier, layer-stacked ``layers``."""


@runtime_checkable
class Model(Protocol):
    """What a network must provide to be trained serially and layer-parallel.

    Attributes:
        depth: N, the number of steps (layers).
        T: final time (h_n = T/N by default).
        task: "classification" or "regression" (decides the loss and metrics).
        num_outputs: classes or output dimension.
        state_batch_axis: axis of the samples in one state (0, or 1 for channels-first conv states).
    """

    depth: int
    T: float
    task: str
    num_outputs: int

    @property
    def state_batch_axis(self) -> int: ...

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Parameters {"opening", "layers" (leaves with leading axis ``depth``), "classifier"}."""

    def open(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """y_0 for the inputs ``x`` (batch first)."""

    def step(self, theta_n: Any, y: jnp.ndarray, h: jnp.ndarray) -> jnp.ndarray:
        """y_{n+1} = Φ_n(y) for one layer's slice θ_n of ``params["layers"]``; the identity at h = 0."""

    def step_sizes(self, dtype=jnp.float32) -> jnp.ndarray:
        """h_0 … h_{N−1}, shape (N,)."""

    def head(self, params: Params, y_final: jnp.ndarray) -> jnp.ndarray:
        """Outputs from y_N."""

    def forward(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Outputs by serial propagation (the reference): head(propagate(step, layers, hs, open(x)))."""

    def data_loss(self, outputs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
        """The mean loss of a batch (without regularisation)."""

    def regularization(self, params: Params) -> jnp.ndarray:
        """The parameter penalty added to the data loss."""

    def metrics(self, outputs: jnp.ndarray, targets: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Per-batch metrics (e.g. {"acc"}; {"mse", "rel_err"})."""
