"""Measured quantities the performance model is built from, and the calibration file that stores them.

A :class:`Profile` holds the costs of one network (layer kind, width, input shape, dtype) on one machine, as
functions of the *stacked batch size* s — the number of samples one vectorised operation processes: s = B for
a serial step, s = n·B when a step is vmapped over n intervals (DESIGN §7):

- ``step``: one forward step Φ inside a ``lax.scan`` (the inner loop of a relaxation sweep);
- ``adjoint``: one adjoint step Ψ(w) = (∂Φ/∂y)ᵀ w from a stored linearisation, inside a scan;
- ``linearize``: linearising steps at once (``jax.vjp`` vmapped over the steps);
- ``theta``: the layer gradient (∂Φ/∂θ)ᵀ ȳ of steps at once;
- ``serial``: one layer of serial ``value_and_grad`` (forward scan and its reverse), as a function of the
  stored trajectory N·B (the reverse sweep reads every stored state back);

plus constants: ``sweep`` (launch of one sweep), ``fixed`` (opening, head, loss, regularisation and dispatch
of one gradient evaluation), ``bandwidth`` (bytes/s of a device-memory copy) and sizes. A :class:`CommCosts`
holds latency α (s) and inverse bandwidth β (s/byte) of one neighbour message per back-end. A
:class:`Calibration` is both, stored as JSON (``lpt-model calibrate`` writes it, the model reads it).
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

FORMAT = "lpt-perfmodel-calibration"
VERSION = 1
CURVES = ("step", "adjoint", "linearize", "theta", "serial")


class CalibrationError(ValueError):
    """A calibration file that is missing, malformed or does not fit the network asked about."""


@dataclass(frozen=True)
class CostCurve:
    """A measured cost t(s) at stacked batch sizes s, interpolated linearly in log-log coordinates.

    Below the smallest measured size the cost is flat (a kernel never gets cheaper than its launch); above the
    largest it grows proportionally to s (``above="linear"``: throughput bound) or stays flat
    (``above="flat"``: a per-layer cost once the data has left the caches).

    Attributes:
        sizes: increasing stacked batch sizes (samples).
        seconds: the cost at each size.
        above: extrapolation beyond the largest size, "linear" or "flat".
    """

    sizes: tuple[float, ...]
    seconds: tuple[float, ...]
    above: str = "linear"

    def __post_init__(self) -> None:
        sizes = tuple(float(s) for s in self.sizes)
        seconds = tuple(float(t) for t in self.seconds)
        if not sizes or len(sizes) != len(seconds):
            raise CalibrationError(f"a cost curve needs equally many sizes and times, got {len(sizes)} and "
                                   f"{len(seconds)}")
        if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0:
            raise CalibrationError(f"cost curve sizes must be positive and increasing, got {sizes}")
        if any(not math.isfinite(t) or t <= 0 for t in seconds):
            raise CalibrationError(f"cost curve times must be positive and finite, got {seconds}")
        if self.above not in ("linear", "flat"):
            raise CalibrationError(f"cost curve extrapolation above={self.above!r} must be linear or flat")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "seconds", seconds)

    def __call__(self, s: float) -> float:
        """The cost at stacked batch size ``s`` (samples)."""
        xs, ys = self.sizes, self.seconds
        if s <= xs[0]:
            return ys[0]
        if s >= xs[-1]:
            return ys[-1] * s / xs[-1] if self.above == "linear" else ys[-1]
        i = next(k for k in range(1, len(xs)) if xs[k] >= s)
        w = (math.log(s) - math.log(xs[i - 1])) / (math.log(xs[i]) - math.log(xs[i - 1]))
        return math.exp((1 - w) * math.log(ys[i - 1]) + w * math.log(ys[i]))

    @classmethod
    def constant(cls, seconds: float) -> "CostCurve":
        """A cost that does not depend on the batch size up to 1e12 samples (for tests and estimates)."""
        return cls((1.0, 1e12), (seconds, seconds))

    @classmethod
    def linear(cls, latency: float, per_sample: float, sizes: Sequence[float] = (1, 1e3, 1e6, 1e9)) -> "CostCurve":
        """t(s) = latency + per_sample·s tabulated at ``sizes`` (for tests and estimates)."""
        return cls(tuple(sizes), tuple(latency + per_sample * s for s in sizes))


@dataclass(frozen=True)
class Profile:
    """Costs of one network on one machine (see the module docstring).

    Attributes:
        key: what the costs are for, e.g. ``"dense/w8/in2/smoothrelu/float32"`` (see :func:`profile_key`).
        batch: the batch size B the curves were measured with.
        state_bytes_per_sample: bytes of one sample's state y_n.
        param_bytes_per_layer: bytes of one layer's parameters θ_n.
        curves: the cost curves by name (:data:`CURVES`).
        sweep: seconds to launch one relaxation sweep (scan) on top of its steps.
        fixed: seconds of one gradient evaluation that do not depend on N (opening, head, loss, dispatch).
        bandwidth: bytes/s of a device-memory copy (state traffic of the MGRIT bookkeeping).
    """

    key: str
    batch: int
    state_bytes_per_sample: int
    param_bytes_per_layer: int
    curves: Mapping[str, CostCurve]
    sweep: float = 0.0
    fixed: float = 0.0
    bandwidth: float = math.inf

    def __post_init__(self) -> None:
        missing = sorted(set(CURVES) - set(self.curves))
        if missing:
            raise CalibrationError(f"profile {self.key!r} lacks the cost curve(s) {missing}; recalibrate "
                                   f"(lpt-model calibrate)")

    def cost(self, name: str, samples: float) -> float:
        """Curve ``name`` at ``samples`` stacked samples."""
        return self.curves[name](samples)

    def throughput_bound(self) -> "Profile":
        """This profile with every curve proportional to the stacked batch, at its cost per sample at the largest
        measured size: no cheaper samples at sizes that fit a cache, no launch-bound small kernels. A model on it
        splits compute exactly with the work, so parallel efficiencies above 1 cannot come from it."""
        def proportional(c: CostCurve) -> CostCurve:
            return CostCurve((1.0, c.sizes[-1]), (c.seconds[-1] / c.sizes[-1], c.seconds[-1]), "linear")

        return replace(self, curves={k: proportional(c) for k, c in self.curves.items()})

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["curves"] = {k: {"sizes": list(c.sizes), "seconds": list(c.seconds), "above": c.above}
                       for k, c in self.curves.items()}
        d["bandwidth"] = None if math.isinf(self.bandwidth) else self.bandwidth
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Profile":
        curves = {k: CostCurve(tuple(v["sizes"]), tuple(v["seconds"]), v.get("above", "linear"))
                  for k, v in d["curves"].items()}
        bw = d.get("bandwidth")
        return cls(key=d["key"], batch=int(d["batch"]), state_bytes_per_sample=int(d["state_bytes_per_sample"]),
                   param_bytes_per_layer=int(d["param_bytes_per_layer"]), curves=curves,
                   sweep=float(d.get("sweep", 0.0)), fixed=float(d.get("fixed", 0.0)),
                   bandwidth=math.inf if bw is None else float(bw))


@dataclass(frozen=True)
class CommCosts:
    """Cost α + β·bytes (+ σ) of one neighbour message (DESIGN §7), for one back-end.

    Attributes:
        alpha: latency in seconds (ping-pong of idle ranks).
        beta: seconds per byte (1/bandwidth).
        sync: σ₀, seconds a message adds when the ranks compute between messages (waiting for the slower
            rank, and for a busy-waiting rank to be scheduled when ranks share cores); 0 on a dedicated
            machine where ranks run in lock step.
        imbalance: κ, the part of the compute between two messages that a message adds on top (the spread
            of the ranks' phase durations grows with the phase): a synchronisation after t seconds of compute
            costs σ₀ + κ·t. 0 on a dedicated machine.
    """

    alpha: float = 0.0
    beta: float = 0.0
    sync: float = 0.0
    imbalance: float = 0.0

    def message(self, nbytes: float) -> float:
        """Time of one point-to-point message of ``nbytes`` bytes."""
        return self.alpha + self.beta * nbytes + self.sync

    def allreduce(self, nbytes: float, ranks: int) -> float:
        """Recursive doubling: ⌈log₂ P⌉ rounds of one message each (0 for one rank)."""
        return 0.0 if ranks <= 1 else math.ceil(math.log2(ranks)) * self.message(nbytes)

    def allgather(self, nbytes_per_rank: float, ranks: int) -> float:
        """Recursive doubling: ⌈log₂ P⌉ latencies and (P−1) blocks of ``nbytes_per_rank`` through each rank."""
        if ranks <= 1:
            return 0.0
        return math.ceil(math.log2(ranks)) * (self.alpha + self.sync) + (ranks - 1) * self.beta * nbytes_per_rank


def _lookup(table: Mapping[str, Any], key: str, missing: str, remedy: str) -> Any:
    """``table[key]``, or a CalibrationError naming what is missing, what is calibrated and what to run."""
    try:
        return table[key]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        raise CalibrationError(f"{missing} (calibrated: {known}); run {remedy}") from None


@dataclass
class Calibration:
    """Everything the model reads: machine description, message costs per back-end, network profiles."""

    machine: dict[str, Any] = field(default_factory=dict)
    comm: dict[str, CommCosts] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)

    # --- access ---------------------------------------------------------------------------------------
    def profile(self, key: str) -> Profile:
        """The profile for network ``key``; a clear error lists the calibrated ones."""
        return _lookup(self.profiles, key, f"no calibration for the network {key!r}",
                       "`lpt-model calibrate` with the same model settings first")

    def comm_costs(self, backend: str) -> CommCosts:
        """α, β of ``backend``; ``single`` never sends messages (0, 0)."""
        if backend == "single":
            return self.comm.get("single", CommCosts())
        return _lookup(self.comm, backend, f"no message costs for parallel={backend}",
                       f"`lpt-model calibrate --comm {backend}` (mpi: under mpirun -np 2)")

    # --- file -----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "machine": self.machine,
                "comm": {k: asdict(v) for k, v in self.comm.items()},
                "profiles": {k: p.to_json() for k, p in self.profiles.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Calibration":
        if d.get("format") != FORMAT:
            raise CalibrationError(f"not an lpt performance-model calibration (format={d.get('format')!r})")
        if d.get("version") != VERSION:
            raise CalibrationError(f"calibration version {d.get('version')!r} is not {VERSION}; recalibrate")
        return cls(machine=dict(d.get("machine", {})),
                   comm={k: CommCosts(float(v["alpha"]), float(v["beta"]), float(v.get("sync", 0.0)),
                                      float(v.get("imbalance", 0.0)))
                         for k, v in d.get("comm", {}).items()},
                   profiles={k: Profile.from_json(v) for k, v in d.get("profiles", {}).items()})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration as JSON (atomically: temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"no calibration file at {path}; create it with `lpt-model calibrate "
                                   f"--file {path}` (and the model settings you want to predict)")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CalibrationError(f"calibration file {path} is malformed ({exc}); recalibrate") from exc

    @classmethod
    def load_or_new(cls, path: str | os.PathLike) -> "Calibration":
        """The calibration at ``path``, or an empty one with this machine's description."""
        path = Path(path)
        return cls.load(path) if path.exists() else cls(machine=machine_info())


def machine_info() -> dict[str, Any]:
    """Host name, processor, CPU count and (if jax is imported) the device kind."""
    info: dict[str, Any] = {"host": platform.node(), "processor": platform.processor() or platform.machine(),
                            "cpus": os.cpu_count()}
    try:
        import jax

        dev = jax.devices()[0]
        info.update(device=dev.device_kind, platform=dev.platform, jax=jax.__version__)
    except Exception:  # pragma: no cover - jax missing or no device
        pass
    return info


def profile_key(layer: str, width: int, input_shape: Sequence[int], activation: str, dtype: str,
                kernel_size: int = 3) -> str:
    """The name of a network's profile: layer kind, width, input shape, σ, dtype (and k for convolutions)."""
    shape = "x".join(str(int(s)) for s in input_shape)
    kernel = f"/k{kernel_size}" if layer != "dense" else ""
    return f"{layer}/w{width}/in{shape}{kernel}/{activation}/{dtype}"
