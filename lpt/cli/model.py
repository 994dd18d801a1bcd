"""``lpt-model``: the performance model of layer-parallel training (DESIGN §7) on the command line.

    lpt-model calibrate [--comm mesh,mpi] [OVERRIDES...]    measure c(batch), α, β; store them
    lpt-model predict   [--ranks P] [OVERRIDES...]          cycle, gradient, step, serial time, speedup
    lpt-model scaling   weak|strong [--ranks-list 1,2,4]    scaling table (Markdown, --csv FILE)
    lpt-model crossover [OVERRIDES...]                      fewest ranks / smallest depth that beat serial
    lpt-model best      [--ranks P] [OVERRIDES...]          (cfactor, levels) by predicted step time

OVERRIDES are ``lpt-train`` overrides (``+experiment=peaks_1024 model.depth=2048 solver.cfactor=4``): they fix
the network, batch, solver settings and processor grid the model is asked about. The costs come from the
calibration file (``--file``, default ``$LPT_CALIBRATION`` or ``lpt-calibration.json``), which ``calibrate``
writes for the network of the overrides on this machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Sequence

from lpt.config.run import ParallelOptions, RunOptions

DEFAULT_FILE = "lpt-calibration.json"


def int_list(text: str) -> list[int]:
    """"1,2,4" → [1, 2, 4] (comma-separated, so lists never swallow the overrides that follow)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,2,4") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,4")
    return values


def backend_list(text: str) -> list[str]:
    """"mesh,mpi" → ["mesh", "mpi"]."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in ("single", "mesh", "mpi")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown back-end(s) {bad}; choose from single, mesh, mpi")
    return values


def default_file() -> str:
    return os.environ.get("LPT_CALIBRATION", DEFAULT_FILE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpt-model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("overrides", nargs="*", help="lpt-train overrides, e.g. +experiment=peaks_1024")
        p.add_argument("--file", default=None, help="calibration file (default $LPT_CALIBRATION or "
                                                    f"{DEFAULT_FILE})")

    def grid(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ranks", type=int, default=None, help="layer ranks P_layers (default parallel.layers)")
        p.add_argument("--data", type=int, default=None, help="data ranks P_data (default parallel.data)")
        p.add_argument("--backend", choices=("single", "mesh", "mpi"), default=None,
                       help="communication back-end (default parallel.name; single for one rank)")
        p.add_argument("--warm", action="store_true", default=None, help="warm-started solves (full batch)")
        p.add_argument("--value-evals", type=float, default=0.0,
                       help="line-search evaluations (value and gradient) per step (L-BFGS: the step's gradient "
                            "is the last search's evaluation at the accepted point; 0: no line search)")

    p = sub.add_parser("calibrate", help="measure the costs of the network and the message costs")
    common(p)
    p.add_argument("--max-depth", type=int, default=None, help="largest depth to cover (default model.depth)")
    p.add_argument("--comm", type=backend_list, default=[],
                   help="also measure α, β of these back-ends, comma-separated: single,mesh,mpi (mpi: run under "
                        "mpirun -np 2; mesh: needs 2 devices, XLA_FLAGS=--xla_force_host_platform_device_count=2)")
    p.add_argument("--no-profile", action="store_true", help="only the message costs")
    p.add_argument("--repeats", type=int, default=5)

    p = sub.add_parser("predict", help="predicted times of the configured run")
    common(p)
    grid(p)

    p = sub.add_parser("scaling", help="weak or strong scaling table")
    p.add_argument("kind", choices=("weak", "strong"))
    common(p)
    grid(p)
    p.add_argument("--ranks-list", dest="ranks_list", type=int_list, default=[1, 2, 4, 8, 16, 32, 64],
                   help="layer ranks of the table, comma-separated (default 1,2,4,…,64)")
    p.add_argument("--layers-per-rank", type=int, default=None, help="weak scaling: N / P (default model.depth)")
    p.add_argument("--csv", default=None, help="also write the table as CSV")

    p = sub.add_parser("crossover", help="where layer-parallel training starts to beat serial training")
    common(p)
    grid(p)

    p = sub.add_parser("best", help="(cfactor, levels) ordered by predicted step time")
    common(p)
    grid(p)
    p.add_argument("--cfactors", type=int_list, default=[2, 4, 8, 16, 32], help="comma-separated")
    p.add_argument("--top", type=int, default=10)
    return parser


class Setup:
    """What a prediction needs, from the overrides and the calibration file."""

    def __init__(self, args: argparse.Namespace, *, need_model: bool = True):
        from lpt.cli.compose import compose_config
        from lpt.perfmodel import Calibration
        from lpt.perfmodel.config import network_from_config, solver_options

        self.file = args.file or default_file()
        self.cfg = compose_config(args.overrides)
        self.model, self.data, self.batch = network_from_config(self.cfg)
        n = self.data.x_train.shape[0]
        self.fwd, self.bwd, warm = solver_options(self.cfg, full_batch=self.batch == n)
        self.warm = warm if getattr(args, "warm", None) is None else args.warm
        self.dtype = self.cfg.get("dtype", RunOptions.dtype)
        self.calibration = Calibration.load(self.file) if need_model else None
        par = self.cfg.get("parallel", {})
        self.layers = getattr(args, "ranks", None) or par.get("layers", ParallelOptions.layers)
        self.data_ranks = getattr(args, "data", None) or par.get("data", ParallelOptions.data)
        self.backend = getattr(args, "backend", None) or par.get("name", ParallelOptions.name)
        self.value_evals = getattr(args, "value_evals", None) or 0.0  # L-BFGS line-search evaluations per step

    def perf(self, ranks: int = 1, comm_backend: str | None = None):
        """The model with the layer-step costs measured with ``ranks`` processes on the machine (else one) and
        the message costs of ``comm_backend`` (default: this run's back-end, none for one rank). Studies over
        several rank counts pass the back-end their multi-rank points use."""
        from lpt.perfmodel import PerfModel
        from lpt.perfmodel.config import profile_key_for

        cal = self.calibration
        key = profile_key_for(self.model, self.dtype, ranks)
        if key not in cal.profiles:  # costs measured with one process on the machine
            key = profile_key_for(self.model, self.dtype, 1)
        if comm_backend is None:
            backend = self.backend if ranks > 1 else "single"
            comm_backend = "mpi" if backend == "single" and ranks > 1 else backend
        return PerfModel(cal.profile(key), self.batch, cal.comm_costs(comm_backend), value_evals=self.value_evals)

    @property
    def study_backend(self) -> str:
        """The back-end of the multi-rank points of a study (scaling, crossover): this run's, or mpi."""
        return self.backend if self.backend != "single" else "mpi"


    def grid(self, layers: int | None = None, data: int | None = None):
        from lpt.perfmodel import Grid

        layers = layers or self.layers
        data = data or self.data_ranks
        return Grid(data=data, layers=layers, backend=self.backend if layers * data > 1 else "single")


def _table(rows: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    sep = "| " + " | ".join("---:" for _ in columns) + " |"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def cmd_calibrate(args) -> int:
    from lpt.perfmodel import Calibration
    from lpt.perfmodel.comm import measure

    file = args.file or default_file()
    rank, procs, world = 0, 1, None
    if "mpi" in args.comm or "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ:
        try:
            from mpi4py import MPI

            world = MPI.COMM_WORLD
            rank, procs = world.Get_rank(), world.Get_size()
        except ImportError:
            pass
    say = print if rank == 0 else (lambda *a, **k: None)
    cal = Calibration.load_or_new(file) if rank == 0 else Calibration()
    if not args.no_profile:
        from lpt.perfmodel.calibrate import calibrate_profile

        setup = Setup(args, need_model=False)
        max_depth = args.max_depth or setup.model.depth
        say(f"calibrating {setup.model.layer} width {setup.model.width} at batch {setup.batch} up to depth "
            f"{max_depth} ({procs} process(es) measuring at once)")
        profile = calibrate_profile(setup.model, setup.batch, max_depth, dtype=setup.dtype, repeats=args.repeats,
                                    procs=procs, log=say)
        cal.profiles[profile.key] = profile
        say(f"profile {profile.key}")
    for backend in args.comm:
        costs, samples = measure(backend)
        if rank == 0:
            cal.comm[backend] = costs
            say(f"{backend}: alpha = {costs.alpha * 1e6:.2f} us, beta = {costs.beta * 1e9:.4f} ns/B")
    if rank == 0:
        cal.save(file)
        say(f"calibration written to {file}")
    return 0


def cmd_predict(args) -> int:
    setup = Setup(args)
    grid = setup.grid()
    perf = setup.perf(grid.size)
    n = setup.model.depth
    fwd, bwd = setup.fwd, setup.bwd
    cyc = perf.cycle(n, fwd, grid)
    grad = perf.gradient_breakdown(n, fwd, bwd, grid, warm=setup.warm)
    step = perf.training_step(n, fwd, bwd, grid, warm=setup.warm)
    from lpt.perfmodel.work import layout_for

    layout = layout_for(n, fwd, grid.layers)
    shapes, tail = layout.shapes, f" ({layout.n} by MGRIT, {layout.tail} serially)" if layout.tail else ""
    print(f"network {perf.profile.key}, N = {n}{tail}, batch {setup.batch}; grid {grid.data} x {grid.layers} "
          f"({grid.backend}); levels {[s.n for s in shapes]}, cfactor {fwd.cfactor}, nrelax {fwd.nrelax}"
          f"{'' if fwd.nrelax_fine is None else f' (fine {fwd.nrelax_fine})'}, {fwd.max_iter} fwd / "
          f"{bwd.max_iter} bwd cycles, {'warm' if setup.warm else 'cold'} start")
    rows = [
        ("MGRIT cycle (forward)", cyc.total),
        ("gradient, layer-parallel", grad.total),
        ("  of which compute / launches / messages", None),
        ("training step, layer-parallel", step),
        ("gradient, serial (1 device)", perf.serial_gradient(n)),
        ("training step, serial (1 device)", perf.serial_step(n)),
    ]
    for label, value in rows:
        if value is None:
            print(f"{label:<44} {grad.compute * 1e3:.3f} / {grad.sweeps * 1e3:.3f} / {grad.messages * 1e3:.3f} ms")
        else:
            print(f"{label:<44} {value * 1e3:.3f} ms")
    print(f"{'predicted speedup (serial / layer-parallel)':<44} {perf.serial_step(n) / step:.3f}")
    return 0


def cmd_scaling(args) -> int:
    setup = Setup(args)
    backend = setup.study_backend
    perf = setup.perf(1, comm_backend=backend)
    ranks = args.ranks_list
    if args.kind == "strong":
        rows = perf.strong_scaling(setup.model.depth, ranks, setup.fwd, setup.bwd, data=setup.data_ranks,
                                   backend=backend, warm=setup.warm)
    else:
        per = args.layers_per_rank or setup.model.depth
        rows = perf.weak_scaling(per, ranks, setup.fwd, setup.bwd, data=setup.data_ranks, backend=backend,
                                 warm=setup.warm)
    cols = [("ranks", "P_layers", "{}"), ("depth", "N", "{}"), ("serial_s", "serial step [s]", "{:.4g}"),
            ("parallel_s", "layer-parallel step [s]", "{:.4g}"), ("speedup", "speedup", "{:.3f}"),
            ("parallel_efficiency", "parallel efficiency", "{:.3f}"),
            ("throughput_efficiency", "efficiency, costs ∝ size", "{:.3f}")]
    print(f"{args.kind} scaling, {perf.profile.key}, batch {setup.batch}, {backend} (α = "
          f"{perf.comm.alpha * 1e6:.2f} us, β = {perf.comm.beta * 1e9:.4f} ns/B)")
    print(_table(rows, cols))
    above = [str(r["ranks"]) for r in rows if r["parallel_efficiency"] > 1 + 1e-9]
    if above:
        print(f"efficiency above 1 at P_layers = {', '.join(above)}: the calibrated cost per stacked sample is lower "
              f"at the smaller per-rank sizes of more ranks (caches of the calibration machine). The last column "
              f"prices every sample at its cost at the largest calibrated size: work and messages alone.")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[c[0] for c in cols])
            w.writeheader()
            w.writerows({c[0]: r[c[0]] for c in cols} for r in rows)
        print(f"written {args.csv}")
    return 0


def cmd_crossover(args) -> int:
    setup = Setup(args)
    backend = setup.study_backend
    perf = setup.perf(1, comm_backend=backend)
    n = setup.model.depth
    p = perf.crossover_ranks(n, setup.fwd, setup.bwd, backend=backend, warm=setup.warm)
    print(f"N = {n}: " + (f"layer-parallel beats serial from P_layers = {p}" if p else
                          "layer-parallel does not beat serial at any number of layer ranks"))
    layers = max(setup.layers, 2)
    d = perf.crossover_depth(layers, setup.fwd, setup.bwd, backend=backend, warm=setup.warm)
    print(f"P_layers = {layers}: " + (f"layer-parallel beats serial from N = {d}" if d else
                                      "layer-parallel does not beat serial at any depth up to 2^20"))
    return 0


def cmd_best(args) -> int:
    setup = Setup(args)
    grid = setup.grid()
    perf = setup.perf(grid.size)
    rows = perf.best_settings(setup.model.depth, setup.fwd, setup.bwd, grid, cfactors=args.cfactors,
                              warm=setup.warm)[: args.top]
    print(f"N = {setup.model.depth}, grid {grid.data} x {grid.layers} ({grid.backend}), {setup.fwd.max_iter} fwd / "
          f"{setup.bwd.max_iter} bwd cycles (fixed), serial step {perf.serial_step(setup.model.depth) * 1e3:.3f} ms")
    for r in rows:
        r["step_ms"] = 1e3 * r["step_s"]
    print(_table(rows, [("cfactor", "cfactor", "{}"), ("max_levels", "max_levels", "{}"), ("levels", "levels", "{}"),
                        ("coarsest", "coarsest n", "{}"), ("step_ms", "step [ms]", "{:.4g}")]))
    return 0


COMMANDS = {"calibrate": cmd_calibrate, "predict": cmd_predict, "scaling": cmd_scaling, "crossover": cmd_crossover,
            "best": cmd_best}


def main(argv: Sequence[str] | None = None) -> int:
    from lpt.data import DataError
    from lpt.model import ModelError
    from lpt.perfmodel import CalibrationError
    from lpt.host import set_up_process
    from lpt.train import ConfigError

    args = build_parser().parse_args(argv)
    set_up_process()  # calibrate compiles and runs training steps, as lpt-train does (lpt.host)
    try:
        return COMMANDS[args.command](args)
    except (CalibrationError, ConfigError, DataError, ModelError, ValueError) as exc:
        print(f"lpt-model: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
