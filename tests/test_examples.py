"""The examples run and do what they print: the gradient through lpt.layer_parallel matches jax.grad of the
lax.scan (float32), and training lowers the loss. The README shows examples/plain_jax.py verbatim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_xla_flags, on_worker_core

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    env = {**os.environ, "XLA_FLAGS": child_xla_flags(), "JAX_ENABLE_X64": "0"}
    proc = subprocess.run(on_worker_core([sys.executable, str(ROOT / "examples" / name)]), capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def printed(pattern: str, out: str) -> tuple[float, ...]:
    match = re.search(pattern, out)
    assert match, out
    return tuple(float(v) for v in match.groups())


@pytest.mark.slow(seconds=50)
def test_plain_jax_example_trains_one_shot():
    out = run_example("plain_jax.py")
    (error,) = printed(r"gradient check: relative error (\S+) against", out)
    first, last, serial = printed(r"loss (\S+) -> (\S+) after 200 one-shot adam steps; serial loss at the end (\S+)",
                                  out)
    assert error < 1e-5, out
    assert last < 0.05 * first, out
    assert abs(serial - last) < 0.1 * last, out  # the one-shot states are converged by the end


@pytest.mark.slow(seconds=40)
def test_equinox_example_trains():
    pytest.importorskip("equinox")
    out = run_example("equinox_stack.py")
    (error,) = printed(r"gradient check: relative error (\S+) against", out)
    first, last = printed(r"loss (\S+) -> (\S+) after 60 adam steps", out)
    assert error < 1e-5 and last < 0.8 * first, out


def test_readme_shows_the_plain_jax_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n# examples/plain_jax\.py\n(.*?)```", readme, re.S)
    assert block, "README: a ```python block starting with the line '# examples/plain_jax.py'"
    assert block.group(1) == (ROOT / "examples" / "plain_jax.py").read_text()
