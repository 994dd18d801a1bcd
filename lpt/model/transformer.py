"""A pre-LayerNorm transformer as a forward-Euler time-stepping problem (DESIGN §10; Jiang et al., arXiv
2601.09026, 2026).

    X_0     = opening(x; θ_open)                       patch embedding + positions (images) or
                                                       token embedding + positions (character sequences)
    X_{n+1} = X_n + h (φ₁(X_n) + φ₂(X_n + φ₁(X_n))),  n = 0..N−1,  h = T/N
    φ₁      = self-attention ∘ LayerNorm               (multi-head, optionally causal)
    φ₂      = MLP ∘ LayerNorm                          (W₂ gelu(W₁ z + b₁) + b₂)
    output  = classifier(X_N)                          final LayerNorm and a linear map: of the mean over the tokens
                                                       (images, one label each) or of every token (next character)

The state X_n is (batch, tokens, d_model); step(θ, X, 0) = X, so padding steps are identity steps. LayerNorm
scales are 1 + s with the parameter s (zero at initialisation), so that zero parameters are the plain
normalisation and the Tikhonov term γ_tik/2 Σ‖θ_n‖² pulls towards it. Parameters are the dict pytree
``{"opening": {"W", "b", "pos"} or {"E", "pos"}, "layers": {"ln1_s", "ln1_b", "Wq", "Wk", "Wv", "Wo", "ln2_s",
"ln2_b", "W1", "b1", "W2", "b2"} (leading axis N), "classifier": {"ln_s", "ln_b", "W", "b"}}``; weights act from
the right (z @ W).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import optax

from lpt.config.fields import check_attributes
from lpt.config.groups import TransformerModel
from lpt.model.layers import init_weight, normal
from lpt.model.propagate import propagate
from lpt.model.resnet import ModelError, Params, ResNet

TransformerTask = Literal["classification", "sequence"]
TRANSFORMER_KEYS = tuple(f.name for f in dataclasses.fields(TransformerModel) if f.name != "arch")
"""Options of config group ``model`` with ``arch: transformer`` (the schema's fields but ``arch``, which check them
here too)."""
LN_EPS = 1e-5


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ModelError(message)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def layer_norm(z: jnp.ndarray, s: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """LayerNorm over the last axis with scale 1 + s and shift b: (z − μ)/√(σ² + ε)·(1 + s) + b."""
    mu = jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.mean((z - mu) ** 2, axis=-1, keepdims=True)
    return (z - mu) * jax.lax.rsqrt(var + LN_EPS) * (1 + s) + b


def attention(theta: dict, z: jnp.ndarray, heads: int, causal: bool) -> jnp.ndarray:
    """Multi-head self-attention softmax(Q Kᵀ/√d_h [+ causal mask]) V W_o of z (B, L, d), Q = z W_q etc."""
    B, L, d = z.shape
    split = lambda w: (z @ w).reshape(B, L, heads, d // heads)  # noqa: E731
    q, k, v = split(theta["Wq"]), split(theta["Wk"]), split(theta["Wv"])
    scores = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(jnp.asarray(d // heads, z.dtype))
    if causal:  # position t attends to positions ≤ t only
        scores = jnp.where(jnp.tril(jnp.ones((L, L), bool)), scores, jnp.finfo(z.dtype).min)
    out = jnp.einsum("bhqk,bkhc->bqhc", jax.nn.softmax(scores, axis=-1), v).reshape(B, L, d)
    return out @ theta["Wo"]


@dataclass(frozen=True)
class Transformer:
    """A pre-LayerNorm transformer X_{n+1} = X_n + h(φ₁(X_n) + φ₂(X_n + φ₁(X_n))) with the interface of
    :class:`~lpt.model.resnet.ResNet` (open, step, step_sizes, head, data_loss, regularization, metrics).

    Attributes:
        input_shape: one sample: an image (H, W, C) for ``task="classification"`` (a vision transformer on
            patches), or (context,) character indices for ``task="sequence"`` (a decoder-only character model).
        num_outputs: classes, or the vocabulary size of a sequence task.
        depth: number of transformer blocks N.
        d_model: token width d (``width`` is an alias).
        heads: attention heads; d_model must be divisible by heads.
        mlp_ratio: hidden width of the MLP as a multiple of d_model.
        T: final time; the step size is h = T/N.
        causal: mask attention to earlier positions; None: causal for sequences, not for images.
        patch: side p of the square image patches (p must divide H and W; tokens = HW/p²).
        task: "classification" (one label per image, mean over tokens) or "sequence" (next-character
            prediction at every position, loss in nats per character).
        init_scale: block weights are drawn N(0, init_scale²/fan_in).
        embed_scale: X_0 is this factor times the embedding. The blocks see X only through LayerNorm, so the
            Jacobian of a step falls as 1/‖X‖: a larger scale makes the coarse steps of MGRIT stable (H·ρ < 2)
            and the blocks' updates smaller relative to the state (README "Transformers").
        gamma_tik, gamma_ddt, gamma_class: the regularisation weights of :meth:`ResNet.regularization`.
    """

    input_shape: tuple[int, ...]
    num_outputs: int
    depth: int = TransformerModel.depth
    d_model: int = TransformerModel.d_model
    heads: int = TransformerModel.heads
    mlp_ratio: int = TransformerModel.mlp_ratio
    T: float = TransformerModel.T
    causal: bool | None = None
    patch: int = TransformerModel.patch
    task: TransformerTask = "classification"
    init_scale: float = TransformerModel.init_scale
    embed_scale: float = TransformerModel.embed_scale
    gamma_tik: float = TransformerModel.gamma_tik
    gamma_ddt: float = TransformerModel.gamma_ddt
    gamma_class: float = TransformerModel.gamma_class

    layer: ClassVar[str] = "transformer"  # read by the run's header line and the memory estimate
    activation: ClassVar[str] = "gelu"
    state_batch_axis: ClassVar[int] = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        check_attributes(self, TransformerModel, TRANSFORMER_KEYS, "model", ModelError)  # the run's checks
        _require(_positive_int(self.num_outputs), f"num_outputs={self.num_outputs!r} must be a positive integer")
        _require(self.d_model % self.heads == 0,
                 f"model.d_model={self.d_model} is not divisible by model.heads={self.heads}; choose d_model a "
                 f"multiple of heads (each head has d_model/heads channels)")
        _require(self.task in ("classification", "sequence"),
                 f"model.arch=transformer needs images with class labels (vit) or character sequences (charlm, "
                 f"dataset=shakespeare); this data set's task is {self.task!r}")
        if self.task == "sequence":
            _require(self.causal is not False, "model.causal=false with a sequence data set lets every position "
                     "see the character it predicts; choose causal: true or null")
            _require(len(self.input_shape) == 1, f"a sequence task needs samples of shape (context,), not "
                     f"{self.input_shape}")
            return
        _require(len(self.input_shape) == 3, f"model.arch=transformer on a classification data set needs image "
                 f"inputs (H, W, C); this data set has samples of shape {self.input_shape} (dataset.flatten=false)")
        H, W, _ = self.input_shape
        _require(H % self.patch == 0 and W % self.patch == 0,
                 f"model.patch={self.patch} does not divide the {H}×{W} images; choose a common divisor of {H} "
                 f"and {W} (e.g. {', '.join(str(p) for p in range(2, min(H, W) + 1) if H % p == 0 == W % p)})")

    # --- shapes -------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """d_model (the name the run's logs and checks use for the state width)."""
        return self.d_model

    @property
    def h(self) -> float:
        """Uniform step size T/N."""
        return self.T / self.depth

    @property
    def is_causal(self) -> bool:
        """Whether attention is masked to earlier positions (``causal`` resolved by the task)."""
        return self.task == "sequence" if self.causal is None else bool(self.causal)

    @property
    def tokens(self) -> int:
        """Sequence length L: HW/p² patches, or the context of a sequence task."""
        if self.task == "sequence":
            return self.input_shape[0]
        H, W, _ = self.input_shape
        return (H // self.patch) * (W // self.patch)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one sample's state X_n: (tokens, d_model)."""
        return (self.tokens, self.d_model)

    def step_sizes(self, dtype=jnp.float32) -> jnp.ndarray:
        """The step sizes h_n = T/N, shape (N,)."""
        return jnp.full((self.depth,), self.h, dtype)

    # --- parameters ---------------------------------------------------------------------------------
    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Draw initial parameters: weights N(0, scale²/fan_in), positions N(0, 0.02²), biases and LayerNorm
        offsets zero; the embedding of a sequence task N(0, 1)."""
        k_open, k_pos, k_layers, k_class = jax.random.split(key, 4)
        d, n, r = self.d_model, self.depth, self.mlp_ratio * self.d_model
        pos = normal(k_pos, (self.tokens, d), dtype, 0.02)
        if self.task == "sequence":
            opening = {"E": normal(k_open, (self.num_outputs, d), dtype), "pos": pos}
        else:
            fan = self.patch**2 * self.input_shape[-1]
            opening = {"W": init_weight(k_open, (fan, d), fan, 1.0, dtype), "b": jnp.zeros((d,), dtype), "pos": pos}
        kq, kk, kv, ko, k1, k2 = jax.random.split(k_layers, 6)
        block = lambda k, shape, fan: init_weight(k, (n, *shape), fan, self.init_scale, dtype)  # noqa: E731
        zeros = lambda size: jnp.zeros((n, size), dtype)  # noqa: E731
        layers = {"ln1_s": zeros(d), "ln1_b": zeros(d), "Wq": block(kq, (d, d), d), "Wk": block(kk, (d, d), d),
                  "Wv": block(kv, (d, d), d), "Wo": block(ko, (d, d), d), "ln2_s": zeros(d), "ln2_b": zeros(d),
                  "W1": block(k1, (d, r), d), "b1": zeros(r), "W2": block(k2, (r, d), r), "b2": zeros(d)}
        classifier = {"ln_s": jnp.zeros((d,), dtype), "ln_b": jnp.zeros((d,), dtype),
                      "W": init_weight(k_class, (d, self.num_outputs), d, 1.0, dtype),
                      "b": jnp.zeros((self.num_outputs,), dtype)}
        return {"opening": opening, "layers": layers, "classifier": classifier}

    # --- the network --------------------------------------------------------------------------------
    def open(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """X_0: patches (p·p·C values each, row-major) times W plus b, or the embedding rows of the character
        indices (given as integers or as exact floats), plus the learned positions."""
        p = params["opening"]
        if self.task == "sequence":
            return self.embed_scale * (jnp.take(p["E"], x.astype(jnp.int32), axis=0) + p["pos"])
        B, (H, W, C), s = x.shape[0], self.input_shape, self.patch
        patches = x.reshape(B, H // s, s, W // s, s, C).transpose(0, 1, 3, 2, 4, 5).reshape(B, self.tokens, -1)
        return self.embed_scale * (patches @ p["W"] + p["b"] + p["pos"])

    def step(self, theta_n: dict[str, jnp.ndarray], y: jnp.ndarray, h: jnp.ndarray) -> jnp.ndarray:
        """Φ_n(X) = X + h(φ₁(X) + φ₂(X + φ₁(X))), φ₁ = attention ∘ LN₁, φ₂ = MLP ∘ LN₂ (Jiang et al. 2026)."""
        t = theta_n
        a = attention(t, layer_norm(y, t["ln1_s"], t["ln1_b"]), self.heads, self.is_causal)
        z = layer_norm(y + a, t["ln2_s"], t["ln2_b"])
        m = jax.nn.gelu(z @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
        return y + h * (a + m)

    def head(self, params: Params, y_final: jnp.ndarray) -> jnp.ndarray:
        """LN(X_N) W_c + b_c per token (sequence: (B, L, vocab)), or of the mean over the tokens ((B, classes))."""
        c = params["classifier"]
        if self.task == "classification":
            y_final = jnp.mean(y_final, axis=1)
        return layer_norm(y_final, c["ln_s"], c["ln_b"]) @ c["W"] + c["b"]

    def forward(self, params: Params, x: jnp.ndarray) -> jnp.ndarray:
        """The network output by serial propagation (the reference)."""
        y0 = self.open(params, x)
        return self.head(params, propagate(self.step, params["layers"], self.step_sizes(y0.dtype), y0))

    # --- objective ----------------------------------------------------------------------------------
    def data_loss(self, outputs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
        """Mean softmax cross-entropy, over samples (and positions: nats per character for sequences)."""
        return optax.softmax_cross_entropy_with_integer_labels(outputs, targets).mean()

    def regularization(self, params: Params) -> jnp.ndarray:
        """γ_tik/2 Σ_n ‖θ_n‖² + γ_ddt/2 Σ_{n≥1} ‖(θ_n − θ_{n−1})/h‖² + γ_class/2 ‖W_c‖² (as for the ResNet)."""
        return ResNet.regularization(self, params)  # type: ignore[arg-type]

    def metrics(self, outputs: jnp.ndarray, targets: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Accuracy: of the labels, or of the next characters over all positions."""
        return {"acc": jnp.mean(jnp.argmax(outputs, axis=-1) == targets)}
