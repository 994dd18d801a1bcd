#!/usr/bin/env python
"""Where the test suite's CPU time goes: a pytest plugin that records, for every test, the CPU time of the pytest
process and of the processes the test started (MPI ranks, ``lpt-train``, scripts), and jax's own account of the
test's tracing, lowering and XLA compilation (``jax.monitoring``) with the persistent cache's hits and misses;
then, run as a script, a summary of the records.

    PYTHONPATH=scripts CPU_PROFILE=/tmp/prof pytest -q -n 2 --dist loadfile -p pytest_cpu_profile
    python scripts/pytest_cpu_profile.py /tmp/prof [--top 30]

Each pytest process appends its tests' records to ``$CPU_PROFILE.<worker>.jsonl``. jax's durations are wall
times of the calling thread (compilation may use more than one core); CPU times are user + system.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import resource
import time

import pytest

EVENTS = {"trace": "/jax/core/compile/jaxpr_trace_duration",
          "lower": "/jax/core/compile/jaxpr_to_mlir_module_duration",
          "compile": "/jax/core/compile/backend_compile_duration",
          "hits": "/jax/compilation_cache/cache_hits", "misses": "/jax/compilation_cache/cache_misses"}
_counts: dict[str, float] = {}
_listening = []


def _add(event: str, amount: float = 1.0, **_) -> None:
    _counts[event] = _counts.get(event, 0.0) + amount


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # the test runs at the yield
    import jax.monitoring

    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_add)
        jax.monitoring.register_event_listener(_add)
        _listening.append(True)
    _counts.clear()
    own, children, wall = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN), time.time()
    yield
    record = {"test": item.nodeid, "wall": time.time() - wall, "cpu": _cpu(resource.RUSAGE_SELF) - own,
              "children_cpu": _cpu(resource.RUSAGE_CHILDREN) - children,
              **{name: _counts.get(event, 0.0) for name, event in EVENTS.items()}}
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"{os.environ.get('CPU_PROFILE', 'cpu_profile')}.{worker}.jsonl", "a") as out:
        out.write(json.dumps(record) + "\n")



def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="the CPU_PROFILE prefix of the records")
    p.add_argument("--top", type=int, default=30, help="modules and tests listed")
    args = p.parse_args(argv)
    records = [json.loads(line) for name in sorted(glob.glob(f"{args.prefix}.*.jsonl")) for line in open(name)]
    if not records:
        p.error(f"no records {args.prefix}.*.jsonl: run pytest with the plugin first (see above)")
    keys = ("cpu", "children_cpu", "trace", "lower", "compile", "hits", "misses")
    total, modules = collections.Counter(), collections.defaultdict(collections.Counter)
    for r in records:
        total.update({k: r[k] for k in keys})
        modules[r["test"].split("::")[0]].update({k: r[k] for k in keys})
    print(f"{len(records)} tests: pytest processes {total['cpu']:.0f} CPU-s (tracing {total['trace']:.0f} s, "
          f"lowering {total['lower']:.0f} s, compilation {total['compile']:.0f} s; cache {total['hits']:.0f} hits, "
          f"{total['misses']:.0f} misses), processes started by tests {total['children_cpu']:.0f} CPU-s")
    print(f"\n{'CPU-s':>7s} {'own':>7s} {'started':>7s} {'compile':>7s}  module")
    ranked = sorted(modules.items(), key=lambda kv: -(kv[1]["cpu"] + kv[1]["children_cpu"]))
    for name, c in ranked[:args.top]:
        both = c["cpu"] + c["children_cpu"]
        print(f"{both:7.1f} {c['cpu']:7.1f} {c['children_cpu']:7.1f} {c['compile']:7.1f}  {name}")
    print(f"\n{'CPU-s':>7s} {'wall s':>7s}  test")
    for r in sorted(records, key=lambda r: -(r["cpu"] + r["children_cpu"]))[:args.top]:
        print(f"{r['cpu'] + r['children_cpu']:7.1f} {r['wall']:7.1f}  {r['test']}")


if __name__ == "__main__":
    main()
