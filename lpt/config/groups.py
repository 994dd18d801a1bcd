"""Schemas of the config groups ``dataset`` (one per data set) and ``model`` (resnet, parareal, transformer).

Each field is one option (:func:`lpt.config.fields.option`): type, default (the shipped YAML's value), what is
valid and a help line. Choice lists are in :mod:`lpt.config.choices`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lpt.config.choices import ACTIVATION_NAMES, CONV_IMPLS, CONV_LAYOUTS, LAYER_KINDS
from lpt.config.fields import option
from lpt.data import DATASETS

FLOATS = ("float32", "float64")
ARCHITECTURES = ("resnet", "parareal", "transformer")


# --- dataset ------------------------------------------------------------------------------------------------
def _name(default: str):
    return option(default, "the data set", choices=tuple(DATASETS))


def _dtype(what: str):
    return option("float32", f"dtype of the loaded {what}", choices=FLOATS)


def _size(default: int | None, what: str, minimum: int = 1):
    return option(default, what, min=minimum)


@dataclass
class PeaksData:
    name: str = _name("peaks")
    source: str = option("generate", "generate (seeded) | reference (the reference code's files in "
                                     "<data_dir>/peaks/)", choices=("generate", "reference"))
    n_train: int = option(5000, "training points (a multiple of the 5 classes)", min=5)
    n_val: int = option(200, "validation points (a multiple of the 5 classes)", min=5)
    dtype: str = _dtype("features")


@dataclass
class IndianPinesData:
    name: str = _name("indian_pines")
    variant: str = option("corrected", "corrected (200 bands) | uncorrected (220 bands)",
                          choices=("corrected", "uncorrected"))
    n_train: int = _size(4000, "training pixels")
    n_val: int = _size(2000, "validation pixels")
    dtype: str = _dtype("features")


@dataclass
class MnistData:
    name: str = _name("mnist")
    n_train: Optional[int] = _size(None, "training images (the first n_train); null: all 60000")
    n_val: Optional[int] = _size(None, "validation images; null: all 10000")
    flatten: bool = option(False, "(n, 784) vectors instead of (n, 28, 28, 1) images")
    dtype: str = _dtype("features")


@dataclass
class Cifar10Data:
    name: str = _name("cifar10")
    n_train: Optional[int] = _size(None, "training images (the first n_train in file order); null: all 50000")
    n_val: Optional[int] = _size(None, "validation images; null: all 10000")
    standardize: bool = option(False, "per-channel z-scores with the training mean and std")
    dtype: str = _dtype("features")


@dataclass
class RegressionPeaksData:
    name: str = _name("regression_peaks")
    n_train: int = _size(5000, "training points")
    n_val: int = _size(500, "validation points")
    dtype: str = _dtype("inputs and targets")


@dataclass
class RegressionPendulumData:
    name: str = _name("regression_pendulum")
    n_train: int = _size(5000, "training samples")
    n_val: int = _size(500, "validation samples")
    dt: float = option(0.5, "time step of the flow map s(t0) → s(t0 + dt)", above=0)
    damping: float = option(0.1, "damping coefficient of the pendulum", min=0)
    g_over_l: float = option(1.0, "gravity over pendulum length g/l", above=0)
    trajectory_steps: int = _size(10, "samples taken along each simulated trajectory")
    dtype: str = _dtype("inputs and targets")


@dataclass
class ShakespeareData:
    name: str = _name("shakespeare")
    context: int = _size(64, "characters per sample")
    block: int = option(8192, "characters per block of the train/validation split (> context)", min=2)
    val_fraction: float = option(0.1, "fraction of the blocks for validation", min=0, max=0.5)
    n_train: Optional[int] = _size(None, "training windows (a seeded subset); null: all (~17700 at context 64)")
    n_val: Optional[int] = _size(None, "validation windows; null: all (~2000 at context 64)")


DATASET_SCHEMAS: dict[str, type] = {
    "peaks": PeaksData, "indian_pines": IndianPinesData, "mnist": MnistData, "cifar10": Cifar10Data,
    "regression_peaks": RegressionPeaksData, "regression_pendulum": RegressionPendulumData,
    "shakespeare": ShakespeareData,
}
"""The schema of each data set (``dataset.name``)."""


# --- model --------------------------------------------------------------------------------------------------
def _gamma(what: str):
    return option(0.0, what, min=0)


@dataclass
class ResNetModel:
    """Residual network y_{n+1} = y_n + h σ(K_n y_n + b_n), h = T / depth (configs/model/dense.yaml, conv.yaml)."""

    arch: str = option("resnet", "resnet | parareal (model=parareal) | transformer (model=transformer)",
                       choices=ARCHITECTURES)
    layer: str = option("dense", "dense (K_n width × width) | conv (k×k convolutions, width = channels) | conv2 "
                                 "(two convolutions per step)", choices=LAYER_KINDS)
    depth: int = option(32, "N, the number of residual layers", min=1)
    width: int = option(8, "state width (dense) or channels (conv)", min=1)
    T: float = option(5.0, "final time; step h = T / depth", above=0)
    activation: str = option("tanh", "σ", choices=ACTIVATION_NAMES)
    opening: Optional[str] = option("dense", "dense (σ(Wx + b)) | conv (σ(W * x + b)) | zero (copy the input, "
                                             "zero-expand to width); null: by the layer",
                                    choices=(None, "dense", "conv", "zero"))
    kernel_size: int = option(3, "k of the k×k convolutions (odd: same padding)", min=1)
    init_scale: float = option(1.0, "layer weights ~ N(0, init_scale² / fan_in)", min=0)
    gamma_tik: float = _gamma("γ_tik/2 Σ ‖θ_n‖²")
    gamma_ddt: float = _gamma("γ_ddt/2 Σ ‖(θ_n − θ_{n−1})/h‖²")
    gamma_class: float = _gamma("γ_class/2 ‖W_c‖²")
    conv_impl: str = option("auto", "convolutions: auto (the faster on this platform) | matmul (im2col matrix "
                                    "products) | xla (lax.conv)", choices=CONV_IMPLS)
    conv_layout: str = option("auto", "conv states in memory: auto (CNHW on CPU for ≤ 8 channels, else NHWC) | "
                                      "NHWC | CNHW", choices=CONV_LAYOUTS)


@dataclass
class ParaRealModel(ResNetModel):
    """The ResNet cut into num_parallel subnetworks joined by coarse networks (Lee, Park, Lee; parareal.yaml)."""

    arch: str = option("parareal", "parareal", choices=ARCHITECTURES)
    opening: Optional[str] = option(None, "C^1: null → dense/conv by layer | zero (copy the input, zero-expand)",
                                    choices=(None, "dense", "conv", "zero"))
    num_parallel: int = option(4, "N_p, parallel subnetworks (1 ≤ N_p ≤ depth; the last is padded with identity "
                                  "units if N_p does not divide depth)", min=1)
    coarse_units: Optional[int] = option(None, "N_c, residual units of each coarse network F^j; null → ⌈12 / N_p⌉",
                                         min=1)
    precond: Optional[str] = option(None, "C^j for j > 1: null → dense (layer=dense) or conv1x1 (layer=conv)",
                                    choices=(None, "dense", "conv1x1", "auto"))


@dataclass
class TransformerModel:
    """Pre-LayerNorm transformer as an ODE (configs/model/transformer.yaml)."""

    arch: str = option("transformer", "transformer", choices=ARCHITECTURES)
    depth: int = option(16, "N, the number of transformer blocks", min=1)
    d_model: int = option(32, "token width d (divisible by heads)", min=1)
    heads: int = option(2, "attention heads, d/heads channels each", min=1)
    mlp_ratio: int = option(2, "MLP hidden width = mlp_ratio · d", min=1)
    T: float = option(1.0, "final time; h = T / depth", above=0)
    causal: Optional[bool] = option(None, "null: causal attention for sequences, none for images | true | false",
                                    valid="true, false or null")
    patch: int = option(7, "images: p×p patches (p divides H and W); 28×28 MNIST → 16 tokens", min=1)
    init_scale: float = option(1.0, "block weights ~ N(0, init_scale² / fan_in)", min=0)
    embed_scale: float = option(1.0, "X_0 = embed_scale · embedding (larger: smaller block Jacobians)", above=0)
    gamma_tik: float = _gamma("γ_tik/2 Σ ‖θ_n‖²")
    gamma_ddt: float = _gamma("γ_ddt/2 Σ ‖(θ_n − θ_{n−1})/h‖²")
    gamma_class: float = _gamma("γ_class/2 ‖W_c‖²")


MODEL_SCHEMAS: dict[str, type] = {"resnet": ResNetModel, "parareal": ParaRealModel, "transformer": TransformerModel}
"""The schema of each architecture (``model.arch``)."""
