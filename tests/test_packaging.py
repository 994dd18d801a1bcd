"""The package installs completely, and the README's commands are the ones CI and the tests run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lpt").rglob("__init__.py")}
    assert found | {"lpt.configs"} == listed


def test_config_tree_is_package_data():
    import lpt.configs

    installed = Path(lpt.configs.__file__).parent
    assert (installed / "train.yaml").is_file() and (installed / "experiment" / "peaks.yaml").is_file()


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_quick_start_commands():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert blocks[0] == "pip install . && lpt-train"  # run by tests/test_cli.py (lpt-train) and CI (install)
    test_command = blocks[1]
    assert test_command.startswith("pip install '.[test]'") and "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command, "CI must run exactly the README's test command"
    floors = [b for b in blocks if ".ci/floors.txt" in b]  # the dependency floors' tests, also run by CI
    assert len(floors) == 1 and floors[0] in ci
