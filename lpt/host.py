"""Settings of the host process: keep freed memory in the process (glibc's malloc) so that XLA's buffers are reused,
and run Python's cyclic garbage collector less often.

XLA's CPU runtime allocates the buffers of every step (layer states, MGRIT levels, gradients) with ``malloc`` and
frees them at the end of the step. glibc hands a freed block above its mmap threshold (128 KiB at start, raised
to at most 32 MiB as such blocks are freed) back to the kernel, and trims free memory above 128 KiB at the heap's
top, so the next step gets fresh pages that the kernel faults in and zeroes again.

:func:`reuse_freed_memory` sets glibc's thresholds (``mallopt``) so that blocks up to 1 GiB come from the heap
and free memory is kept up to 2 GiB. The process keeps the memory of its largest step instead of returning it
between steps; its peak (``/usr/bin/time`` maximum resident size) was 767 → 837 MB in the main job's MGRIT run
(100 steps) and 1098 → 1081 MB in ``+experiment=peaks_lpl train.steps=20``. ``lpt-train`` and ``lpt-model``
call it at start (:func:`set_up_process`). Another C library (musl, macOS) or ``LPT_MALLOC=system`` leaves the
allocator as it is, and so do glibc malloc settings of one's own (``MALLOC_*_`` variables or ``glibc.malloc`` in
``GLIBC_TUNABLES``) and another allocator put in front of glibc's (jemalloc or tcmalloc by ``LD_PRELOAD``, as the
test suite does).

Measured on one core, the main job's one-shot MGRIT run for 200 steps (``taskset -c 0 lpt-train +experiment=peaks
solver=mgrit train.steps=200 train.eval_every=20 dataset.n_val=1000``, ``/usr/bin/time``, 2 runs each): with
``LPT_MALLOC=system`` 23.4-23.6 s (18.0 s user, 5.3 s system, 2.81 million page faults); with the thresholds
19.1 s (18.3 s user, 0.8 s system, 0.19 million).

:func:`collect_less` runs Python's cyclic garbage collector less often (first generation after 50 000 allocations
instead of 2 000: tracing and lowering a train step allocate many short-lived objects) and leaves the objects
alive at that point (the modules loaded) out of its collections. ``lpt-train +experiment=peaks_1024
dataset.n_train=30 dataset.n_val=15 model.depth=32 train.steps=3`` (most of it building, tracing, lowering and
compiling; ``taskset -c 0``, the tests' compile settings, no compilation cache, ``/usr/bin/time`` user + system,
three runs each, alternating, load 0.3-1.2) took 5.05 / 5.30 / 5.27 CPU-s with it against 5.51 / 5.47 / 5.59 (0.94 ×),
``lpt-train solver=mgrit train.steps=5 dataset.n_train=500`` 3.22 / 3.20 / 3.12 against 3.31 / 3.49 / 3.42 (0.94 ×); the
main job's MGRIT run for 200 steps (XLA's defaults, one run each) 19.0 against 20.7 CPU-s with the same peak memory
(943 and 944 MB). ``lpt-train`` and ``lpt-model`` call it at start, as the test processes do.
"""

from __future__ import annotations

import ctypes
import gc
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameters (glibc's ``malloc.h``)."""

MMAP_THRESHOLD = 1 << 30
"""Blocks up to this size (1 GiB) come from the heap and stay in the process when freed."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the heap's top up to this size (2 GiB; glibc takes an ``int``) stays in the process."""
GC_THRESHOLDS = (50_000, 50, 50)
"""Python's garbage-collector thresholds after :func:`collect_less` (``gc.set_threshold``; Python's: 2000, 10, 10)."""


def _own_malloc_settings() -> bool:
    """Whether the environment sets glibc's malloc itself (then lpt leaves it alone)."""
    if os.environ.get("LPT_MALLOC", "").lower() == "system":
        return True
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(key.startswith("MALLOC_") and key.endswith("_") for key in os.environ)


def _malloc_is_glibcs() -> bool:
    """Whether the process's ``malloc`` is glibc's own, not another allocator's put in front of it (jemalloc or
    tcmalloc by ``LD_PRELOAD``, as the test suite does): glibc's thresholds would not reach that one."""
    try:
        return ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value == \
            ctypes.cast(ctypes.CDLL("libc.so.6").malloc, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return False


def reuse_freed_memory() -> bool:
    """Keep freed memory in the process for the next step (module docstring); True if glibc's thresholds are set.

    False without glibc (``mallopt`` absent or refusing), under another allocator (``LD_PRELOAD``) or when the
    environment has malloc settings of its own.
    Process-wide: call it once at the start of a program that trains (``lpt-train`` does).
    """
    if _own_malloc_settings() or not _malloc_is_glibcs():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def collect_less() -> None:
    """Python's cyclic garbage collector less often, and not over the objects alive at the first call (module
    docstring). Process-wide: call it after the imports, at the start of a program that compiles (``lpt-train``
    does). It freezes only in a process where nothing is frozen yet: a later call (the next job of a multirun
    sweep in the same process) would keep the last job's uncollected garbage for good."""
    if gc.get_freeze_count() == 0:
        gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def set_up_process() -> bool:
    """The process as ``lpt-train`` sets it up: :func:`reuse_freed_memory`, then :func:`collect_less` (after the
    imports). For a program that compiles and runs training steps (``lpt-train``, ``lpt-model``, one's own scripts);
    returns what :func:`reuse_freed_memory` returns."""
    tuned = reuse_freed_memory()
    collect_less()
    return tuned
