"""lpt.host: glibc keeps freed memory in the process, so buffers freed and allocated again every step are not
faulted in and zeroed again by the kernel; one's own malloc settings are left alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from conftest import JEMALLOC

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")

# malloc, touch and free 64 MiB ten times, as XLA's runtime does with a step's buffers: the minor page faults of the
# loop (resource.getrusage) after `reuse_freed_memory()` (TUNE=1) or without it. 64 MiB is above the largest mmap
# threshold that glibc sets by itself (32 MiB), so untuned every block is mapped afresh: 16 384 pages of 4 KiB.
LOOP = """
import ctypes, os, resource
from lpt.host import reuse_freed_memory
tuned = reuse_freed_memory() if os.environ.get("TUNE") == "1" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
def step(size=64 << 20):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _glibc_env(**env) -> dict[str, str]:
    """This environment without malloc settings and without ``LD_PRELOAD`` (tests/conftest.py preloads jemalloc),
    plus ``env``: a process on glibc's malloc as it comes."""
    drop = ("GLIBC_TUNABLES", "LPT_MALLOC", "LD_PRELOAD")
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in drop}, **env}


def _faults(**env) -> tuple[str, int]:
    """The loop above in a process on glibc's malloc, with ``env`` added."""
    proc = subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True, timeout=120,
                          env=_glibc_env(**env))
    assert proc.returncode == 0, proc.stderr
    tuned, faults = proc.stdout.split()
    return tuned, int(faults)


def test_freed_buffers_are_reused_without_page_faults():
    """Untuned, each 64 MiB block is mapped afresh (16 384 page faults each time); tuned, the later ones reuse the
    first one's pages (measured: 163 850 faults against 0)."""
    untuned = _faults(TUNE="0")
    tuned = _faults(TUNE="1")
    assert untuned[0] == "None" and tuned[0] == "True"
    assert untuned[1] >= 10 * 16384 * 0.9, untuned
    assert tuned[1] < untuned[1] / 10, (tuned, untuned)


@pytest.mark.parametrize("env", [{"LPT_MALLOC": "system"}, {"MALLOC_ARENA_MAX_": "2"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}])
def test_own_malloc_settings_are_left_alone(env):
    """LPT_MALLOC=system, a MALLOC_*_ variable or glibc.malloc tunables: no thresholds set, the faults stay."""
    tuned, faults = _faults(TUNE="1", **env)
    assert tuned == "False"
    assert faults >= 10 * 16384 * 0.9


@pytest.mark.skipif(JEMALLOC is None, reason="no jemalloc for started processes: not installed (Debian: "
                    "libjemalloc2) or LPT_MALLOC=system")
def test_processes_started_by_tests_run_on_jemalloc_and_glibc_thresholds_are_left_out():
    """tests/conftest.py puts jemalloc in front of glibc's malloc for the processes started after it; there
    reuse_freed_memory() sets nothing (glibc's thresholds would not reach jemalloc) and says so."""
    code = "from lpt.host import reuse_freed_memory; print(reuse_freed_memory()); print(open('/proc/self/maps').read())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tuned, maps = proc.stdout.split("\n", 1)
    assert tuned == "False" and "libjemalloc" in maps
    assert _faults(TUNE="1")[0] == "True"  # the same call on glibc's malloc sets the thresholds


# 100 000 short-lived cycles (a list holding itself): the first-generation collections they trigger, after
# `collect_less()` (LESS=1) or without it, and how many objects the collector leaves out (frozen)
CYCLES = """
import gc, os
from lpt.host import GC_THRESHOLDS, collect_less
alive = [[] for _ in range(10_000)]
if os.environ.get("LESS") == "1":
    collect_less()
    assert gc.get_threshold() == GC_THRESHOLDS
    frozen = gc.get_freeze_count()
    later = [[] for _ in range(1000)]
    collect_less()  # a second call (the next job of a sweep) freezes nothing more
    assert gc.get_freeze_count() == frozen
before = gc.get_stats()[0]["collections"]
for _ in range(100_000):
    cycle = []
    cycle.append(cycle)
print(gc.get_stats()[0]["collections"] - before, gc.get_freeze_count())
"""


@pytest.mark.parametrize("less", [False, True])
def test_collect_less_collects_less_often_and_leaves_the_objects_alive_out(less):
    """Python's thresholds collect the first generation every 2000 allocations (about 50 times here); after
    collect_less every 50 000 (at most 2 times), and the 10 000 lists alive before are frozen out of collections."""
    proc = subprocess.run([sys.executable, "-c", CYCLES], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LESS": "1" if less else "0"})
    assert proc.returncode == 0, proc.stderr
    collections, frozen = map(int, proc.stdout.split())
    if less:
        assert collections <= 2 and frozen >= 10_000, proc.stdout
    else:
        assert collections >= 25 and frozen == 0, proc.stdout


def test_set_up_process_sets_both_as_lpt_train_does():
    """lpt.host.set_up_process (lpt-train, lpt-model, scripts/time_preset_step.py): glibc's thresholds set (True, on
    glibc's malloc), then the collector's thresholds and the modules loaded frozen."""
    code = ("import gc; from lpt.host import GC_THRESHOLDS, set_up_process; tuned = set_up_process(); "
            "print(tuned, gc.get_threshold() == GC_THRESHOLDS, gc.get_freeze_count() > 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_glibc_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True"]
