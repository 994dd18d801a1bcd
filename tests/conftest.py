"""Test session set-up: 8 emulated host devices and float64 enabled, set before jax is imported.

Library code always passes explicit dtypes, so float32 paths stay float32 under x64.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder ../shared/data beside the repository; skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it holds peaks, Indian Pines and MNIST)")
    return SHARED_DATA
