"""The test session's compilation settings (tests/conftest.py): tests compile for compile time; a test marked
``optimized`` with XLA's optimisations, and with ``fusion_emitters=True`` also with XLA's fusion emitters (an option
of each compilation in this process)."""

from __future__ import annotations

import jax
import pytest
from jax._src import compiler

import conftest


def _overrides() -> dict:
    """The per-compilation XLA options that jax would give a program compiled now."""
    return dict(compiler.get_compile_options(num_replicas=1, num_partitions=1).env_option_overrides)


def test_a_plain_test_compiles_for_compile_time():
    assert jax.config.read("jax_disable_most_optimizations") == conftest._FAST_ON
    assert "xla_cpu_use_fusion_emitters" not in _overrides()
    assert "--xla_cpu_use_fusion_emitters=false" in conftest.child_xla_flags()


@pytest.mark.optimized
def test_an_optimized_test_compiles_with_optimisations_but_without_the_emitters_here():
    assert not jax.config.read("jax_disable_most_optimizations")
    assert "xla_cpu_use_fusion_emitters" not in _overrides()
    assert "--xla_cpu_use_fusion_emitters=false" not in conftest.child_xla_flags()  # its processes: with them


@pytest.mark.optimized(fusion_emitters=True)
def test_an_optimized_test_may_ask_for_the_fusion_emitters_here():
    assert not jax.config.read("jax_disable_most_optimizations")
    assert _overrides()["xla_cpu_use_fusion_emitters"] is True
    # and a program compiles and runs with it
    x = jax.numpy.arange(4.0)
    assert float(jax.jit(lambda v: (v * v).sum())(x)) == 14.0
