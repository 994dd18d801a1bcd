"""The ResNet as a forward-Euler time-stepping problem (DESIGN §1).

    y_0     = opening(x; θ_open)
    y_{n+1} = Φ_n(y_n) = y_n + h σ(K_n y_n + b_n),   n = 0..N−1,  h = T/N
    output  = classifier(y_N; W_c, b_c)

With ``layer="conv2"`` the step has two k×k convolutions (TorchBraid's MNIST step, ``StepLayer`` of
``examples/mnist`` in Multilevel-NN/torchbraid):

    Φ_n(y) = y + h σ(K2_n σ(K_n y + b_n) + b2_n).

Parameters are a dict pytree ``{"opening": {...}, "layers": {"K": (N, ...), "b": (N, ...)[, "K2", "b2"]},
"classifier": {"W": ..., "b": ...}}``; the layer parameters are stacked along a leading layer axis so that
solvers can scan or vectorise over it. The solver only ever sees :meth:`ResNet.step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from lpt.config.fields import check_attributes
from lpt.config.groups import ResNetModel
from lpt.model.activations import get_activation
from lpt.model.conv import resolve_conv_layout
from lpt.model.layers import CONV_KINDS, LayerKind, init_weight, linear_apply
from lpt.model.propagate import propagate
from lpt.model.protocol import Params

Opening = Literal["dense", "conv", "zero"]
Task = Literal["classification", "regression"]


SCHEMA_CHECKED = ("depth", "width", "T", "activation", "layer", "opening", "kernel_size", "init_scale", "gamma_tik",
                  "gamma_ddt", "gamma_class", "conv_impl", "conv_layout")
"""The ResNet's options that the schema's fields (:class:`lpt.config.groups.ResNetModel`) check."""


class ModelError(ValueError):
    """An invalid model setting; the message names the option, the value and what is valid."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ModelError(message)


@dataclass(frozen=True)
class ResNet:
    """A residual network y_{n+1} = y_n + h σ(K_n y_n + b_n) with opening layer and linear head.

    Attributes:
        input_shape: shape of one sample, e.g. (2,) or (28, 28, 1) (NHWC without the batch axis).
        num_outputs: number of classes (classification) or output dimension (regression).
        depth: number of residual layers N.
        width: state width (dense) or number of channels (conv).
        T: final time; the step size is h = T/N.
        activation: σ, one of tanh, relu, smoothrelu, identity.
        layer: "dense" (K_n is width×width), "conv" (K_n is a k×k convolution, channels→channels) or
            "conv2" (two k×k convolutions per step: Φ_n(y) = y + h σ(K2_n σ(K_n y + b_n) + b2_n)).
        opening: "dense" / "conv" (σ(W x + b)) or "zero" (copy x and zero-expand to the width, no parameters).
        task: "classification" (softmax cross-entropy) or "regression" (mean squared error).
        kernel_size: k of the convolutions.
        init_scale: layer weights are drawn N(0, init_scale²/fan_in).
        gamma_tik: Tikhonov weight γ_tik of γ_tik/2 Σ_n ‖θ_n‖².
        gamma_ddt: weight γ_ddt of γ_ddt/2 Σ_{n≥1} ‖(θ_n − θ_{n−1})/h‖² (smoothness in time).
        gamma_class: weight γ_class of γ_class/2 ‖W_c‖².
        conv_impl: formulation of the convolutions (:mod:`lpt.model.conv`): "matmul" (im2col matrix
            products, fast serially and vmapped), "xla" (``lax.conv_general_dilated``) or "auto" (the one
            measured faster on the platform).
        conv_layout: memory layout of conv states inside the network: "NHWC", "CNHW" (channels first, then
            the batch) or "auto" (CNHW on CPU for ≤ 8 channels, else NHWC; :func:`lpt.model.conv.
            resolve_conv_layout`). Inputs, outputs and parameters are the same in every layout (the classifier
            reads the final state in NHWC order), so results agree to rounding.
    """

    input_shape: tuple[int, ...]
    num_outputs: int
    depth: int = ResNetModel.depth
    width: int = ResNetModel.width
    T: float = ResNetModel.T
    activation: str = ResNetModel.activation
    layer: LayerKind = ResNetModel.layer
    opening: Opening = ResNetModel.opening
    task: Task = "classification"
    kernel_size: int = ResNetModel.kernel_size
    init_scale: float = ResNetModel.init_scale
    gamma_tik: float = ResNetModel.gamma_tik
    gamma_ddt: float = ResNetModel.gamma_ddt
    gamma_class: float = ResNetModel.gamma_class
    conv_impl: str = ResNetModel.conv_impl
    conv_layout: str = ResNetModel.conv_layout

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        check_attributes(self, ResNetModel, SCHEMA_CHECKED, "model", ModelError)  # the run's checks and messages
        _require(self.task in ("classification", "regression"),
                 f"task={self.task!r} is not valid; choose classification or regression")
        _require(isinstance(self.num_outputs, int) and self.num_outputs >= 1,
                 f"num_outputs={self.num_outputs!r} must be a positive integer")
        _require(self.kernel_size % 2 == 1, f"model.kernel_size={self.kernel_size!r} must be odd (same padding)")
        if self.is_conv:
            _require(len(self.input_shape) == 3,
                     f"model.layer={self.layer} needs image inputs (H, W, C); this data set has samples of shape "
                     f"{self.input_shape}; use model.layer=dense")
            _require(self.opening in ("conv", "zero"),
                     f"model.opening={self.opening!r} does not fit model.layer={self.layer}; choose conv or zero")
        else:
            _require(self.opening in ("dense", "zero"),
                     f"model.opening={self.opening!r} does not fit model.layer=dense; choose dense or zero")
        if self.opening == "zero":
            _require(self.in_features <= self.width,
                     f"model.opening=zero copies the {self.in_features} input features into the state; "
                     f"model.width={self.width} must be at least that")

    # --- shapes -------------------------------------------------------------------------------------
    @property
    def h(self) -> float:
        """Uniform step size T/N."""
        return self.T / self.depth

    @property
    def is_conv(self) -> bool:
        """Whether the states are images and the linear maps convolutions (layer conv or conv2)."""
        return self.layer in CONV_KINDS

    @property
    def linear_kind(self) -> LayerKind:
        """Kind of each linear map (opening and layer maps): "conv" for conv and conv2, else "dense"."""
        return "conv" if self.is_conv else "dense"

    @property
    def in_features(self) -> int:
        """Input channels (conv) or flattened input size (dense)."""
        return self.input_shape[-1] if self.is_conv else math.prod(self.input_shape)

    @property
    def layout(self) -> str:
        """Layout of the states: "NHWC" or "CNHW" for conv nets (``conv_layout`` resolved for this platform),
        "NC" (batch, features) for dense ones."""
        return resolve_conv_layout(self.conv_layout, self.width) if self.is_conv else "NC"

    @property
    def state_batch_axis(self) -> int:
        """The samples' axis in a batch of states: 1 for CNHW (channels first), else 0."""
        return 1 if self.layout == "CNHW" else 0

    def states_to_nhwc(self, y: jnp.ndarray) -> jnp.ndarray:
        """A batch of states in the batch-first layout (B, *state_shape) (a copy for CNHW, else ``y``)."""
        return jnp.moveaxis(y, 0, -1) if self.layout == "CNHW" else y

    def inputs_to_layout(self, x: jnp.ndarray) -> jnp.ndarray:
        """Image inputs (B, H, W, C) in the layout of the states (a copy for CNHW, else ``x``)."""
        return jnp.moveaxis(x, -1, 0) if self.layout == "CNHW" else x

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one sample's state y_n (batch-first, NHWC for conv nets, whatever ``layout``)."""
        if self.is_conv:
            return (*self.input_shape[:2], self.width)
        return (self.width,)

    def states_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of a batch of states in the model's ``layout``: (B, *state_shape), or (C, B, H, W) for CNHW."""
        if self.layout == "CNHW":
            return (self.width, batch, *self.input_shape[:2])
        return (batch, *self.state_shape)

    def step_sizes(self, dtype=jnp.float32) -> jnp.ndarray:
        """The step sizes h_n = T/N, shape (N,)."""
        return jnp.full((self.depth,), self.h, dtype)

    # --- parameters ---------------------------------------------------------------------------------
    def _weight_shape(self, c_in: int, c_out: int) -> tuple[int, ...]:
        k = self.kernel_size
        return (k, k, c_in, c_out) if self.is_conv else (c_out, c_in)

    def _fan_in(self, c_in: int) -> int:
        return c_in * self.kernel_size**2 if self.is_conv else c_in

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Draw initial parameters: weights N(0, scale²/fan_in), biases zero."""
        k_open, k_layers, k_class = jax.random.split(key, 3)
        k_layers2 = jax.random.fold_in(k_layers, 2)  # conv2's second convolution (other kinds draw as before)
        w = self.width
        opening: dict[str, jnp.ndarray] = {}
        if self.opening != "zero":
            opening = {
                "W": init_weight(k_open, self._weight_shape(self.in_features, w), self._fan_in(self.in_features), 1.0,
                                 dtype),
                "b": jnp.zeros((w,), dtype),
            }
        layers = {
            "K": init_weight(k_layers, (self.depth, *self._weight_shape(w, w)), self._fan_in(w), self.init_scale,
                             dtype),
            "b": jnp.zeros((self.depth, w), dtype),
        }
        if self.layer == "conv2":
            layers["K2"] = init_weight(k_layers2, (self.depth, *self._weight_shape(w, w)), self._fan_in(w),
                                       self.init_scale, dtype)
            layers["b2"] = jnp.zeros((self.depth, w), dtype)
        n_features = math.prod(self.state_shape)
        classifier = {
            "W": init_weight(k_class, (self.num_outputs, n_features), n_features, 1.0, dtype),
            "b": jnp.zeros((self.num_outputs,), dtype),
        }
        return {"opening": opening, "layers": layers, "classifier": classifier}

    # --- the network --------------------------------------------------------------------------------
    def open(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """y_0 = σ(W x + b) (dense or conv), or x zero-expanded to the state width."""
        if not self.is_conv:
            x = x.reshape(x.shape[0], -1)
        x = self.inputs_to_layout(x)
        if self.opening == "zero":
            channels = 0 if self.layout == "CNHW" else x.ndim - 1
            pad = [(0, 0)] * x.ndim
            pad[channels] = (0, self.width - x.shape[channels])
            return jnp.pad(x, pad)
        sigma = get_activation(self.activation)
        return sigma(self._linear(params["opening"]["W"], params["opening"]["b"], x))

    def _linear(self, weight: jnp.ndarray, bias: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        return linear_apply(self.linear_kind, weight, bias, y, self.conv_impl, self.layout)

    def step(self, theta_n: dict[str, jnp.ndarray], y: jnp.ndarray, h: jnp.ndarray) -> jnp.ndarray:
        """Φ_n(y) = y + h σ(K_n y + b_n) for one layer's parameters θ_n = {"K", "b"}; for ``conv2``
        Φ_n(y) = y + h σ(K2_n σ(K_n y + b_n) + b2_n) with θ_n = {"K", "b", "K2", "b2"}."""
        sigma = get_activation(self.activation)
        z = self._linear(theta_n["K"], theta_n["b"], y)
        if self.layer == "conv2":
            z = self._linear(theta_n["K2"], theta_n["b2"], sigma(z))
        return y + h * sigma(z)

    def head(self, params: Params, y_final: jnp.ndarray) -> jnp.ndarray:
        """Linear classifier/regressor on the flattened final state (batch-first, NHWC order): W_c y_N + b_c."""
        c = params["classifier"]
        y_final = self.states_to_nhwc(y_final)
        return y_final.reshape(y_final.shape[0], -1) @ c["W"].T + c["b"]

    def forward(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """The network output by serial propagation (the reference)."""
        y0 = self.open(params, x)
        y_final = propagate(self.step, params["layers"], self.step_sizes(y0.dtype), y0)
        return self.head(params, y_final)

    # --- objective ----------------------------------------------------------------------------------
    def data_loss(self, outputs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
        """Mean softmax cross-entropy (classification) or mean squared error (regression)."""
        if self.task == "classification":
            return optax.softmax_cross_entropy_with_integer_labels(outputs, targets).mean()
        return jnp.mean((outputs - targets) ** 2)

    def regularization(self, params: Params) -> jnp.ndarray:
        """γ_tik/2 Σ_n ‖θ_n‖² + γ_ddt/2 Σ_{n≥1} ‖(θ_n − θ_{n−1})/h‖² + γ_class/2 ‖W_c‖²."""
        leaves = jax.tree_util.tree_leaves(params["layers"])
        tik = sum(jnp.sum(t**2) for t in leaves)
        ddt = sum(jnp.sum(((t[1:] - t[:-1]) / self.h) ** 2) for t in leaves)
        cls = jnp.sum(params["classifier"]["W"] ** 2)
        return 0.5 * (self.gamma_tik * tik + self.gamma_ddt * ddt + self.gamma_class * cls)

    def metrics(self, outputs: jnp.ndarray, targets: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Accuracy (classification) or MSE and relative error ‖pred − y‖/‖y‖ (regression)."""
        if self.task == "classification":
            return {"acc": jnp.mean(jnp.argmax(outputs, axis=-1) == targets)}
        err = outputs - targets
        return {
            "mse": jnp.mean(err**2),
            "rel_err": jnp.linalg.norm(err) / jnp.maximum(jnp.linalg.norm(targets), jnp.finfo(err.dtype).tiny),
        }
