"""The parareal neural network of Lee, Park and Lee (DESIGN §8).

C.-o. Lee, Y. Lee, J. Park, *Parareal neural networks emulating a parallel-in-time algorithm*, IEEE TNNLS
(2022), arXiv:2103.08802. From a ResNet f = h ∘ g ∘ C whose residual stack g = Φ_{N−1} ∘ … ∘ Φ_0,
Φ_n(y) = y + h σ(K_n y + b_n), is cut into N_p subnetworks g^1..g^{N_p} of U = ⌈N/N_p⌉ units each, the network
is one parareal iteration with coarse propagators F^j ≈ g^{j+1}:

    z_1     = g^1(C^1 x)
    z_{j+1} = g^{j+1}(C^{j+1} x) + F^j(z_j) − F^j(C^{j+1} x),   j = 1..N_p−1
    output  = h(z_{N_p})

C^1 is the ResNet's opening; C^j (j > 1) are cheap maps from the input to the state space, σ(W_j x + b_j)
with a dense W_j (dense nets) or a 1×1 convolution (conv nets). F^j has N_c residual units of the same form
as Φ_n, its own parameters and step size h_c = (time span of g^{j+1}) / N_c. The N_p terms g^j(C^j x) are
independent (here: vectorised over the subnetwork axis — one ``vmap`` on accelerators, a few at a time on CPU,
:func:`lpt.mgrit.batching.over_intervals` — of a ``lax.scan`` over units), as are the N_p − 1 terms
F^j(C^{j+1} x); only the chain z_j → F^j(z_j) of the small coarse networks is serial. For an affine network
(σ = identity) with F^j = g^{j+1} the output equals the ResNet's (their Proposition 1).

If N is not divisible by N_p, the last subnetwork is padded with identity units (step size h = 0, parameters
initialised to zero; they receive no gradient from the loss). The layer math is :meth:`ResNet.step`,
:meth:`ResNet.open` and :meth:`ResNet.head` of the underlying ResNet; nothing here re-implements it.

Parameters are the dict pytree ``{"opening", "classifier"}`` of the ResNet plus
``"layers": {"K": (N_p, U, ...), "b": (N_p, U, width)}`` (fine units, stacked by subnetwork),
``"precond": {"W": (N_p−1, ...), "b": (N_p−1, width)}`` (C^2..C^{N_p}) and
``"coarse": {"K": (N_p−1, N_c, ...), "b": (N_p−1, N_c, width)}`` (F^1..F^{N_p−1}); the last two are empty
dicts when N_p = 1 (then the network *is* the ResNet).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from lpt.config.fields import check_attributes
from lpt.config.groups import ParaRealModel
from lpt.mgrit.batching import over_intervals
from lpt.model.activations import get_activation
from lpt.model.layers import init_weight, linear_apply
from lpt.model.propagate import propagate
from lpt.model.resnet import ModelError, Params, ResNet

Precond = Literal["dense", "conv1x1"]

PARAREAL_KEYS = ("num_parallel", "coarse_units", "precond")
"""Options of config group ``model`` that only ``arch: parareal`` has."""

PAPER_COARSE_BUDGET = 12
"""Default N_c = ⌈12 / N_p⌉, the total coarse depth used by Lee, Park and Lee."""


def default_coarse_units(num_parallel: int) -> int:
    """N_c = ⌈12 / N_p⌉ (Lee, Park, Lee), at least 1."""
    return max(1, math.ceil(PAPER_COARSE_BUDGET / num_parallel))


@dataclass(frozen=True)
class ParaRealNet:
    """One parareal iteration built from a ResNet (Lee, Park, Lee).

        z_1 = g^1(C^1 x),  z_{j+1} = g^{j+1}(C^{j+1} x) + F^j(z_j) − F^j(C^{j+1} x),  output = h(z_{N_p})

    Attributes:
        resnet: the original network f = h ∘ g ∘ C (depth N, step h = T/N): its opening is C^1, its step is
            the unit of every g^j and F^j, its head is h, and its γ's weight the regulariser.
        num_parallel: N_p, the number of subnetworks g^j (1 ≤ N_p ≤ N).
        coarse_units: N_c, residual units of each coarse network F^j; None → ⌈12/N_p⌉.
        precond: the maps C^j, j > 1: "dense" (dense nets) or "conv1x1" (conv nets); None → chosen by layer.
    """

    resnet: ResNet
    num_parallel: int = ParaRealModel.num_parallel
    coarse_units: int | None = None
    precond: Precond | None = None

    def __post_init__(self) -> None:
        net = self.resnet
        if not isinstance(net, ResNet):
            raise ModelError(f"ParaRealNet needs a ResNet to cut into subnetworks, got {type(net).__name__}")
        check_attributes(self, ParaRealModel, ("num_parallel", "coarse_units"), "model", ModelError)
        n_p = self.num_parallel
        if n_p > net.depth:
            raise ModelError(f"model.num_parallel={n_p} exceeds model.depth={net.depth}: every subnetwork needs "
                             f"at least one residual unit; choose model.num_parallel ≤ {net.depth}")
        object.__setattr__(self, "num_parallel", int(n_p))
        n_c = default_coarse_units(n_p) if self.coarse_units is None else self.coarse_units
        object.__setattr__(self, "coarse_units", int(n_c))
        auto: Precond = "conv1x1" if net.layer == "conv" else "dense"
        pre = auto if self.precond in (None, "auto") else self.precond
        if pre != auto:
            raise ModelError(f"model.precond={self.precond!r} does not fit model.layer={net.layer}; choose "
                             f"{auto} or null (chosen by the layer)")
        object.__setattr__(self, "precond", pre)
        if self.units * (n_p - 1) >= net.depth:
            raise ModelError(f"model.num_parallel={n_p} with model.depth={net.depth}: subnetworks of "
                             f"⌈{net.depth}/{n_p}⌉ = {self.units} units leave subnetwork {n_p} empty; choose "
                             f"a model.num_parallel that divides model.depth or at most "
                             f"{math.ceil(net.depth / self.units)}")

    # --- what the trainer reads ---------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.resnet.task

    @property
    def num_outputs(self) -> int:
        return self.resnet.num_outputs

    @property
    def depth(self) -> int:
        """N, the residual units of the original network (the fine units of all subnetworks)."""
        return self.resnet.depth

    @property
    def width(self) -> int:
        return self.resnet.width

    @property
    def layer(self) -> str:
        return self.resnet.layer

    @property
    def activation(self) -> str:
        return self.resnet.activation

    @property
    def T(self) -> float:
        return self.resnet.T

    @property
    def h(self) -> float:
        """Fine step size T/N."""
        return self.resnet.h

    # --- shapes and step sizes ----------------------------------------------------------------------
    @property
    def units(self) -> int:
        """U = ⌈N/N_p⌉, residual units per subnetwork (the last one padded with identity units)."""
        return math.ceil(self.depth / self.num_parallel)

    @property
    def padding(self) -> int:
        """Identity units appended to the last subnetwork: N_p·U − N."""
        return self.num_parallel * self.units - self.depth

    @property
    def coarse_net(self) -> ResNet:
        """The ResNet whose N_c units form one coarse network F^j: span U·h, step h_c = U·h/N_c."""
        return dataclasses.replace(self.resnet, depth=self.coarse_units, T=self.units * self.h)

    def unit_counts(self) -> np.ndarray:
        """Residual units of each subnetwork without the padding, shape (N_p,): U, …, U, N − (N_p−1)U."""
        starts = self.units * np.arange(self.num_parallel)
        return np.minimum(self.units, self.depth - starts)

    def fine_step_sizes(self, dtype=jnp.float32) -> jnp.ndarray:
        """Step sizes of the subnetworks, shape (N_p, U): h = T/N, and 0 on the padding units."""
        hs = np.where(np.arange(self.units)[None, :] < self.unit_counts()[:, None], self.h, 0.0)
        return jnp.asarray(hs, dtype)

    def coarse_step_sizes(self, dtype=jnp.float32) -> jnp.ndarray:
        """Step sizes of F^1..F^{N_p−1}, shape (N_p−1, N_c): F^j spans the same time as g^{j+1}."""
        spans = self.unit_counts()[1:] * self.h
        return jnp.asarray(np.repeat((spans / self.coarse_units)[:, None], self.coarse_units, axis=1), dtype)

    # --- parameters ---------------------------------------------------------------------------------
    def _precond_shape(self) -> tuple[int, ...]:
        net, w = self.resnet, self.resnet.width
        return (1, 1, net.in_features, w) if self.precond == "conv1x1" else (w, net.in_features)

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Initial parameters.

        Opening, fine units and head are those of ``resnet.init(key)`` with the same key (so the network
        starts from the original ResNet's parameters, the last subnetwork padded with zero units); C^j (j > 1)
        are drawn N(0, 1/fan_in) and F^j like the ResNet's units (N(0, init_scale²/fan_in)), all biases zero.
        """
        net, n_p, u = self.resnet, self.num_parallel, self.units
        k_pre, k_coarse = jax.random.split(jax.random.fold_in(key, 1))
        params = net.init(key, dtype)

        def stack(t: jnp.ndarray) -> jnp.ndarray:
            t = jnp.concatenate([t, jnp.zeros((self.padding, *t.shape[1:]), t.dtype)])
            return t.reshape(n_p, u, *t.shape[1:])

        params["layers"] = jax.tree_util.tree_map(stack, params["layers"])
        params["precond"], params["coarse"] = {}, {}
        if n_p > 1:
            shape = self._precond_shape()
            params["precond"] = {
                "W": init_weight(k_pre, (n_p - 1, *shape), net.in_features, 1.0, dtype),
                "b": jnp.zeros((n_p - 1, net.width), dtype),
            }
            keys = jax.random.split(k_coarse, n_p - 1)
            params["coarse"] = jax.vmap(lambda k: self.coarse_net.init(k, dtype)["layers"])(keys)
        return params

    # --- the network, in the four parts of the paper's timing table --------------------------------
    def preprocess(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """Initial states of all subnetworks (C^1 x, C^2 x, …, C^{N_p} x), shape (N_p, B, *state)."""
        y1 = self.resnet.open(params, x)
        if self.num_parallel == 1:
            return y1[None]
        net = self.resnet
        xs = x.reshape(x.shape[0], -1) if self.layer == "dense" else net.inputs_to_layout(x)
        kind = "conv" if self.precond == "conv1x1" else "dense"
        sigma = get_activation(self.activation)
        p = params["precond"]
        cx = jax.vmap(lambda w, b: sigma(linear_apply(kind, w, b, xs, net.conv_impl, net.layout)))(p["W"], p["b"])
        return jnp.concatenate([y1[None], cx])

    def subnetworks(self, params: Params, starts: jnp.ndarray) -> jnp.ndarray:
        """g^j(C^j x) for all j at once (vectorised over j as ``solver.interval_batch=auto`` vectorises the
        intervals of a relaxation, :func:`lpt.mgrit.batching.over_intervals`: one ``vmap`` on accelerators, image
        states a few at a time on CPU; a scan over units each), shape (N_p, *state)."""
        hs = self.fine_step_sizes(starts.dtype)  # (N_p, U); layers leaves (N_p, U, ...); starts (N_p, *state)
        return self._at_once(params["layers"], hs, starts)

    def _at_once(self, theta: Any, hs: jnp.ndarray, starts: jnp.ndarray) -> jnp.ndarray:
        """Serial propagation of every network j (θ_j, h_j) from starts[j], all at once."""
        run = lambda th, h, y0: propagate(self.resnet.step, th, h, y0)  # noqa: E731
        return over_intervals(run, "auto", starts[0])(theta, hs, starts)

    def coarse(self, params: Params, fine: jnp.ndarray, starts: jnp.ndarray) -> jnp.ndarray:
        """The parareal correction: z_{N_p} from z_1 = fine[0] and z_{j+1} = fine[j] + F^j(z_j) − F^j(starts[j]).

        The N_p − 1 terms F^j(C^{j+1} x) run at once (as the subnetworks); the chain over j is a ``lax.scan``.
        """
        if self.num_parallel == 1:
            return fine[0]
        step = self.resnet.step
        theta, hs = params["coarse"], self.coarse_step_sizes(fine.dtype)
        # theta leaves (N_p−1, N_c, ...), hs (N_p−1, N_c), starts[1:] and f_starts (N_p−1, B, *state)
        f_starts = self._at_once(theta, hs, starts[1:])

        def chain(z, inp):
            th_j, h_j, g_next, f_start = inp
            return g_next + propagate(step, th_j, h_j, z) - f_start, None

        z_last, _ = jax.lax.scan(chain, fine[0], (theta, hs, fine[1:], f_starts))
        return z_last

    def head(self, params: Params, z_last: jnp.ndarray) -> jnp.ndarray:
        """Postprocessing h(z_{N_p}): the ResNet's linear head."""
        return self.resnet.head(params, z_last)

    def forward(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """The network output: one parareal iteration (see the module docstring)."""
        starts = self.preprocess(params, x)
        fine = self.subnetworks(params, starts)
        return self.head(params, self.coarse(params, fine, starts))

    # --- objective ----------------------------------------------------------------------------------
    def data_loss(self, outputs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
        """Mean softmax cross-entropy (classification) or mean squared error (regression)."""
        return self.resnet.data_loss(outputs, targets)

    def regularization(self, params: Params) -> jnp.ndarray:
        """The ResNet's regulariser on the N fine units and head, plus γ_tik and γ_ddt on each coarse network.

            γ_tik/2 Σ_n ‖θ_n‖² + γ_ddt/2 Σ_{n≥1} ‖(θ_n − θ_{n−1})/h‖² + γ_class/2 ‖W_c‖²
            + Σ_j [γ_tik/2 Σ_i ‖θ^j_i‖² + γ_ddt/2 Σ_{i≥1} ‖(θ^j_i − θ^j_{i−1})/h_c‖²]

        with the fine units θ_n in their original order (padding units left out), h_c = U·h/N_c.
        The maps C^j are not regularised (nor is the ResNet's opening).
        """
        flat = jax.tree_util.tree_map(lambda t: t.reshape(-1, *t.shape[2:])[:self.depth], params["layers"])
        reg = self.resnet.regularization({"layers": flat, "classifier": params["classifier"]})
        if self.num_parallel == 1:
            return reg
        coarse_net = dataclasses.replace(self.coarse_net, gamma_class=0.0)
        no_head = {"W": jnp.zeros((), reg.dtype)}
        per_net = jax.vmap(lambda th: coarse_net.regularization({"layers": th, "classifier": no_head}))
        return reg + jnp.sum(per_net(params["coarse"]))

    def metrics(self, outputs: jnp.ndarray, targets: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Accuracy (classification) or MSE and relative error (regression), as for the ResNet."""
        return self.resnet.metrics(outputs, targets)

    # --- what the layer-parallel solvers would need, and do not get ---------------------------------
    def _no_mgrit(self, *_: Any, **__: Any):
        """``open``, ``step`` and ``step_sizes`` are what a layer-parallel solver (solver=mgrit) asks a ResNet
        for; the parareal network has no single stack of layers to hand over, so they raise a ModelError."""
        raise ModelError("model.arch=parareal is trained end-to-end by ordinary backpropagation: use "
                         "solver=serial (solver=mgrit solves the layers of model.arch=resnet as a time-stepping "
                         "problem and does not apply to the parareal network)")

    open = step = step_sizes = _no_mgrit
