"""Test session set-up: 8 emulated host devices and float64 enabled, set before jax is imported.

The tests compile far more than they run (a profile of the suite: 1413 of the 1577 CPU-s spent in the pytest
processes went to tracing, lowering and XLA compilation), so XLA compiles them for compile time, not run time:

- ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (XLA's LLVM optimisation level 0, no expensive LLVM passes),
- ``--xla_cpu_use_fusion_emitters=false`` (XLA's CPU back-end emits each fusion straight to LLVM IR instead of
  through its MLIR fusion pipeline, which builds an MLIR context per kernel) and
- ``--xla_cpu_parallel_codegen_split_count=1`` (XLA compiles a program's LLVM module whole instead of in up to 32
  parts on a thread pool: the workers keep both cores busy, and each part costs set-up). With the other two
  settings it cuts XLA's compilation by 13–21 % (an L-BFGS MGRIT step 2.36 → 2.05 s, the main job's MGRIT step
  1.05 → 0.86 s, a conv MGRIT step 1.07 → 0.84 s; ``JAX_DISABLE_MOST_OPTIMIZATIONS=1
  XLA_FLAGS="--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false [this flag]" taskset -c 0
  python scripts/time_preset_step.py peaks_lpl|peaks solver=mgrit|mnist_4096 dataset.n_train=64 model.depth=16``,
  XLA's compile time as ``jax.monitoring`` reports it, two runs each, with and without in one command, load about
  1: 0.87 ×, 0.82 ×, 0.79 ×), and four compile-heavy test modules took 73.9 / 75.8 CPU-s instead of 84.2 / 87.2
  (0.88 ×; ``pytest -q tests/test_uneven_chunks.py tests/test_conv_impl.py tests/test_mgrit_solve.py
  tests/test_mpi_resume.py``, with and without it alternating, ``/usr/bin/time``, load 0.9 before and 1.6 after). The
  conv step above also ran faster (0.258 → 0.180 s), the others as fast. With LLVM's optimisations on (the tests
  marked ``optimized``, same command with ``JAX_DISABLE_MOST_OPTIMIZATIONS=0``) the steps run as fast and compile
  as fast (``peaks solver=mgrit`` and ``peaks_lpl`` with the fusion emitters: 4.7 and 8.8–9.1 s either way) or
  faster (without them: the conv step 3.49 → 3.24 s, ``parareal_mnist dataset.n_train=64`` 3.09 → 2.80 s).

The first two compile the train step of the default MGRIT run 3.3 × faster (2.67 → 0.80 s), a conv MGRIT step
2.1 × (5.53 → 2.65 s) and an L-BFGS MGRIT step 2.4 × (8.26 → 3.47 s), but run it about 4 × slower (README). A test whose
time goes into running its steps (hundreds of training steps) is marked ``@pytest.mark.optimized``: it compiles at
XLA's LLVM level 1 (``--xla_backend_optimization_level=1``, unless ``XLA_FLAGS`` sets a level), in this process
(without the fusion emitters unless the test asks for them, ``@pytest.mark.optimized(fusion_emitters=True)``:
XLA reads ``XLA_FLAGS`` once per process, so here they come as an option of each compilation,
:func:`_fusion_emitters_while_optimized`) and, with them, in the processes it starts. Processes that a test
starts (MPI ranks, ``lpt-train``, examples, scripts) inherit the test's setting (environment,
:func:`child_xla_flags`), so that what they compute is what the session compares it with. Only the
stop-while-compiling test compiles at XLA's defaults.

Library code always passes explicit dtypes, so float32 paths stay float32 under x64 (``tests/test_float32.py``
checks that no float64 value appears in a float32 one-shot gradient, and runs MGRIT in float32 with x64 off).

Property tests (hypothesis) are derandomised: the same examples everywhere, unless
``LPT_HYPOTHESIS_PROFILE=explore``.

A persistent XLA compilation cache serves the whole session: the pytest-xdist workers and every process a test
starts (CLI runs, scripts, mpirun ranks) inherit ``JAX_COMPILATION_CACHE_DIR``, so a program compiled once (the
same train step in two tests, the same solver in a CLI run and its in-process reference) is loaded, not compiled
again. The folder is a fresh temporary one per session (made by the first process that loads this file, removed
by it at the end), unless ``JAX_COMPILATION_CACHE_DIR`` is set already: then that folder is used and kept; a fresh
clone (CI) therefore gains only within the run. Programs with mpi4jax calls are the exception: their custom calls
carry the process's MPI communicator, datatype and operation handles (addresses) in their configuration, so their
cache keys differ from one ``mpirun`` launch to the next and each launch compiles them again (the other programs of
the ranks load from the cache).

jax writes the location of each operation into the programs it lowers, by default the Python traceback of up to
ten frames; the tests write only the innermost frame outside jax (``JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS=0``,
inherited by the processes they start): locations are stripped from the cache key and XLA's error messages keep the
frame, but building and stripping them is Python time in each lowering. It also shortens the op names jax records
inside a ``cond``'s branches (no ``cond/branch_1_fun`` part), so tests that look for an operation in a branch read
the compiled HLO's structure instead (``all_gathers`` in scripts/bench_sharded_memory.py). ``pytest -q
tests/test_mgrit_solve.py tests/test_uneven_chunks.py`` took 49.9 / 50.1 CPU-s with it against 51.1 / 51.5 without
(0.98 ×; alternating, ``/usr/bin/time`` user + system, load 0.6 before and 1.2 after).

Where jemalloc is installed (Debian's ``libjemalloc2``, which ``.ci/run`` installs), the processes started after this
file is first loaded run on it (``LD_PRELOAD``): the pytest-xdist workers and every process a test starts
(:func:`_jemalloc_for_started_processes`; not with ``LPT_MALLOC=system``). XLA's compiler (LLVM) allocates and
frees many small objects, which jemalloc serves faster than glibc's malloc: ``taskset -c 0 pytest -q
tests/test_mgrit_solve.py tests/test_layer_sharded.py`` took 44.2 / 43.3 / 43.7 CPU-s with
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`` against 47.3 / 48.5 / 45.7 without (0.93 ×; three runs
each, alternating, ``/usr/bin/time`` user + system, load 1.2 before and 1.0 after), ``tests/test_uneven_chunks.py
tests/test_conv_impl.py`` 44.7 / 45.0 against 47.7 / 46.4 (0.95 ×); the L-BFGS MGRIT step of ``peaks_lpl`` compiled
at the tests' settings in 2.41 / 2.32 s of XLA's time against 2.67 / 2.74 (``scripts/time_preset_step.py peaks_lpl
--repeats 3``, as above). tcmalloc (``libtcmalloc-minimal4``) gained about as much, less evenly (44.8 / 47.9 CPU-s
on the second pair). Under jemalloc, :func:`lpt.host.reuse_freed_memory` sets nothing: glibc's thresholds would not
reach it; ``MALLOC_CONF`` (unless set) makes jemalloc keep freed pages instead (:data:`JEMALLOC_CONF`). The main
job's MGRIT run for 200 steps (``taskset -c 0 lpt-train +experiment=peaks solver=mgrit train.steps=200
train.eval_every=20 dataset.n_val=1000``, ``XLA_FLAGS=--xla_cpu_parallel_codegen_split_count=1``, two runs each,
alternating, load 0.3 before): 21.5 / 22.0 s (0.18 million page faults, 837 / 840 MB peak) with both, 27.9 / 29.2 s
(2.83 million, 7 s of it in the kernel) with jemalloc's defaults, 22.8 / 23.3 s (0.19-0.20 million, 921 / 925 MB)
on glibc with lpt.host's thresholds.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
_LEVEL = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {_LEVEL}"
_FAST = "--xla_cpu_use_fusion_emitters=false"
_ONE_PART = "--xla_cpu_parallel_codegen_split_count=1"
os.environ["XLA_FLAGS"] += f" {_FAST} {_ONE_PART}"
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # jax reads it as its flag's default
_FAST_ON = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "t", "yes", "y", "on")

_OWN_CACHE_DIR = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="lpt-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
# cache every program, however quick to compile or small (jax reads these variables as its config defaults)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# MLIR locations name an operation's innermost frame outside jax, not its whole Python traceback (module docstring)
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "0")

JEMALLOC_PATHS = tuple(f"/usr/lib/{d}/libjemalloc.so.2" for d in ("x86_64-linux-gnu", "aarch64-linux-gnu")) + \
    ("/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")
"""Where Debian's ``libjemalloc2`` (CI installs it) and other systems put jemalloc."""
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
"""jemalloc keeps freed pages instead of handing them back to the kernel after 10 s (module docstring)."""


def _jemalloc_for_started_processes() -> str | None:
    """jemalloc (``LD_PRELOAD``) for every process started from here on: the pytest-xdist workers (the first
    process that loads this file starts them) and every process a test starts. XLA's compiler (LLVM) allocates
    and frees many small objects, and jemalloc serves them faster than glibc's malloc: two compile-heavy modules
    took 0.93 × the CPU time (module docstring). Nothing where jemalloc is not installed, where ``LD_PRELOAD``
    names it already, or with ``LPT_MALLOC=system`` (lpt.host). Returns the jemalloc that started processes
    load (None: none)."""
    preload = os.environ.get("LD_PRELOAD", "").split()
    if os.environ.get("LPT_MALLOC", "").lower() == "system" or any("jemalloc" in p for p in preload):
        return next((p for p in preload if "jemalloc" in p), None)
    path = next((p for p in JEMALLOC_PATHS if os.path.exists(p)), None)
    if path is not None:
        os.environ["LD_PRELOAD"] = " ".join([path, *preload])
        os.environ.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return path


JEMALLOC = _jemalloc_for_started_processes()

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
from lpt.host import collect_less, reuse_freed_memory  # noqa: E402


def _worker_core() -> int | None:
    """The core of this pytest-xdist worker (worker k: core k of those it may run on); None outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return cores[int(worker[2:]) % len(cores)]


WORKER_CORE = _worker_core()


def on_worker_core(cmd: list[str]) -> list[str]:
    """``cmd`` restricted to this worker's core (``taskset``), for a process of one rank that the test waits for
    (the worker's own XLA threads run there, :func:`_init_backend`, and are idle meanwhile); XLA in that process
    sizes its thread pool for the one core. Unchanged outside xdist or without ``taskset``."""
    taskset = shutil.which("taskset")
    return cmd if WORKER_CORE is None or taskset is None else [taskset, "-c", str(WORKER_CORE), *cmd]


def _init_backend() -> None:
    """Initialise XLA's CPU back-end now (XLA reads ``XLA_FLAGS`` once, before a test marked optimized changes
    them for its processes). In a pytest-xdist worker (``-n 2``: the workers keep the cores busy already) XLA's
    threads run on one core, worker k's on core k: they are created while the process may run only there, and
    the main thread (and so every process a test starts) may run on all cores again after. CPU time is what two
    busy workers share: the one-shot accuracy test (tests/test_train.py) took 89.4 CPU-s with XLA's threads on
    two cores and glibc's default malloc thresholds, 69.5 on one core with :func:`~lpt.host.reuse_freed_memory`
    (``/usr/bin/time``, user + system, one test run alone)."""
    if WORKER_CORE is None:
        jax.devices()
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {WORKER_CORE})
    try:
        jax.devices()
    finally:
        os.sched_setaffinity(0, cores)


reuse_freed_memory()  # as lpt-train does (glibc's malloc; under jemalloc, as in the xdist workers, it sets nothing)
_init_backend()
# Python's cyclic garbage collector: tracing allocates many short-lived objects, and with the session's growing
# heap (jax's caches) the full collections took 9.9 of 148 CPU-s of three test modules (tests/test_mesh_uneven.py,
# test_parallel_mgrit.py, test_transformer.py; gc.callbacks), 3.1 s with collections less often (the thresholds of
# lpt.host.collect_less); the modules loaded so far are also frozen out of them. tests/test_mesh_uneven.py with
# test_parallel_mgrit.py, one core, two runs each, alternating: 115.3 / 115.6 CPU-s against 119.0 / 116.0 without
# either (/usr/bin/time, user + system; 0.98 ×; load 1.0 before and 1.3 after)
collect_less()  # as lpt-train does (lpt.host)

# Property tests draw the same examples on every machine (CI equals a local run); LPT_HYPOTHESIS_PROFILE=explore
# draws new ones each run (with ``--hypothesis-seed=N`` to repeat one), for looking for failures by hand.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("LPT_HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def child_xla_flags(*flags: str) -> str:
    """``XLA_FLAGS`` of a process that a test starts: ``flags`` (e.g. one device) and the session's compilation
    settings (the level, the fusion emitters and one LLVM module per program; ``JAX_DISABLE_MOST_OPTIMIZATIONS``
    comes with the environment)."""
    return " ".join([*flags, _LEVEL, _ONE_PART, *([] if _OPTIMIZED else [_FAST])])


_OPTIMIZED = False  # True while a test marked ``optimized`` runs
_EMITTERS = False  # True while a test marked ``optimized(fusion_emitters=True)`` runs


def _fusion_emitters_while_optimized() -> None:
    """While a test marked ``optimized(fusion_emitters=True)`` runs, XLA compiles this process's programs with its
    fusion emitters (an option of each compilation: jax's ``compiler_options``, which XLA applies over
    ``XLA_FLAGS``). The main job's MGRIT step at LLVM level 1 runs in 0.058 s with them, 0.090 s without (0.64 ×;
    its first step with compilation 4.5 s against 3.0 s; ``XLA_FLAGS="--xla_backend_optimization_level=1
    [--xla_cpu_use_fusion_emitters=false]" taskset -c 0 python scripts/time_preset_step.py peaks solver=mgrit
    --repeats 30``, one run each in one command, load 1.1): the one-shot accuracy test (tests/test_train.py, 1200
    such steps) took 37.7 and 38.0 s with them (two runs), 58.0 s without (README). Conv programs compile much
    longer with them: the parareal MNIST test (tests/test_parareal.py) took 25.0 s with them, 17.7 s without; so it
    is the test's choice. jax's function that builds the options is wrapped; a jax whose function takes no such
    overrides compiles without the emitters."""
    from jax._src import compiler

    original = compiler.get_compile_options
    if "env_options_overrides" not in inspect.signature(original).parameters:
        return

    @functools.wraps(original)
    def get_compile_options(*args, env_options_overrides=None, **kwargs):
        if _EMITTERS:
            env_options_overrides = {**(env_options_overrides or {}), "xla_cpu_use_fusion_emitters": True}
        return original(*args, env_options_overrides=env_options_overrides, **kwargs)

    compiler.get_compile_options = get_compile_options


_fusion_emitters_while_optimized()


@pytest.fixture(autouse=True)
def _xla_optimisation(request, monkeypatch):
    """A test marked ``optimized`` (its time goes into running its steps) compiles with XLA's optimisations, in
    this process and in those it starts; every other test compiles for compile time (module docstring)."""
    marker = request.node.get_closest_marker("optimized")
    if marker is None:
        yield
        return
    global _OPTIMIZED, _EMITTERS
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    monkeypatch.setenv("XLA_FLAGS", os.environ["XLA_FLAGS"].replace(_FAST, "").strip())  # for the processes it starts
    jax.config.update("jax_disable_most_optimizations", False)
    _OPTIMIZED, _EMITTERS = True, bool(marker.kwargs.get("fusion_emitters", False))
    try:
        yield
    finally:
        _OPTIMIZED, _EMITTERS = False, False
        jax.config.update("jax_disable_most_optimizations", _FAST_ON)


def pytest_configure(config):
    """With ``-n 2 --dist loadfile`` pytest-xdist hands out the modules by their number of tests, most first, so a
    module of few long tests (MPI runs, scripts, full trainings) would start last and run alone at the end.
    Keep the collection order instead, which :func:`pytest_collection_modifyitems` makes longest first."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Modules in decreasing order of their tests marked ``slow``: ``@pytest.mark.slow(seconds=S)`` counts S (a
    rough measured duration on 2 cores), a plain ``slow`` 60 s. A stable sort: each module stays in one piece,
    modules without slow tests keep their order, after the others."""
    weight: dict = {}
    for item in items:
        mark = item.get_closest_marker("slow")
        weight[item.path] = weight.get(item.path, 0) + (mark.kwargs.get("seconds", 60) if mark else 0)
    items.sort(key=lambda item: -weight[item.path])


def pytest_unconfigure(config):
    if _OWN_CACHE_DIR is not None:
        shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder ../shared/data beside the repository; skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it holds peaks, Indian Pines and MNIST)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def enable_x64():
    """jax's context manager that sets x64 for a block: ``jax.enable_x64`` (jax 0.10, which no longer has
    ``jax.experimental.enable_x64``) or ``jax.experimental.enable_x64`` (the dependency floors' jax 0.6.1, which has
    no ``jax.enable_x64``; .ci/run)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64
    from jax.experimental import enable_x64 as experimental

    return experimental
