"""The option files of ``configs/``, generated from the schema: each group file ``configs/<group>/<name>.yaml``
(and the top-level options and ``train:`` block of ``configs/train.yaml``) is a hand-written header of comments
(and a defaults list), the line :data:`BEGIN`, then the options of its schema node with their defaults and, as a
comment, their help text (``python scripts/option_tables.py --write`` writes them; ``tests/test_schema.py`` checks
that every file holds exactly these). In ``configs/train.yaml`` the generated part ends at the line :data:`END`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import yaml

from lpt.config.run import RunOptions, TrainOptions
from lpt.config.store import schema_nodes

BEGIN = "# options: generated from the schema (lpt/config) by `python scripts/option_tables.py --write`; edit it"
END = "# end of the generated options"

# the keys of the option files that hold fewer than their schema node's fields (all others hold all)
FILE_KEYS: dict[str, tuple[str, ...]] = {
    "solver/serial": ("name",),  # the mgrit keys are accepted, unused (a preset may set them for solver=mgrit)
    "parallel/single": ("name", "data", "layers"),  # the multi-process keys concern parallel=mesh only
    "parallel/mpi": ("name", "data", "layers"),
}


def _yaml(value: Any) -> str:
    """``value`` as one line of YAML (flow style)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()


def option_lines(node: Any, keys: Sequence[str] | None = None, indent: str = "") -> list[str]:
    """``key: default  # help`` of the fields ``keys`` (all but the config groups if None) of schema ``node`` (a
    dataclass or an instance of one: its values are the defaults), the comments in one column."""
    values = node() if isinstance(node, type) else node
    fields = [f for f in dataclasses.fields(node) if not f.metadata.get("group") and (keys is None or f.name in keys)]
    pairs = [(f"{indent}{f.name}: {_yaml(getattr(values, f.name))}", f.metadata["help"]) for f in fields]
    width = max(len(text) for text, _ in pairs) + 2
    return [f"{text.ljust(width)}# {help_text}" for text, help_text in pairs]


def option_files(root: Path) -> dict[Path, list[str]]:
    """The generated lines of every option file under ``root`` (the configs folder), by path."""
    files = {root / "train.yaml": [*option_lines(RunOptions), "", "train:", *option_lines(TrainOptions, indent="  ")]}
    for group, name, node in schema_nodes():
        group = group.removeprefix("schema/")
        if group not in ("schema", "train"):
            files[root / group / f"{name}.yaml"] = option_lines(node, FILE_KEYS.get(f"{group}/{name}"))
    return files


def generated_part(text: str) -> tuple[str, list[str], str]:
    """(header up to and with :data:`BEGIN`, the lines after it up to :data:`END` or the end, the rest from
    :data:`END` on) of an option file's ``text``; a file without :data:`BEGIN` is a ValueError."""
    lines = text.splitlines()
    if BEGIN not in lines:
        raise ValueError(f"no line {BEGIN!r}")
    start = lines.index(BEGIN) + 1
    stop = lines.index(END) if END in lines else len(lines)
    return "\n".join(lines[:start]) + "\n", lines[start:stop], "".join(f"{line}\n" for line in lines[stop:])


def with_options(text: str, options: list[str]) -> str:
    """An option file's ``text`` with its generated part replaced by ``options``."""
    head, _, tail = generated_part(text)
    return head + "".join(f"{line}\n" for line in options) + tail
