"""A run log that writes nothing: MPI ranks other than 0 log through it, so only one rank writes files."""

from __future__ import annotations

from typing import Any


class NullLog:
    """Accepts every :class:`~lpt.logging.runlog.RunLog` call and does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
