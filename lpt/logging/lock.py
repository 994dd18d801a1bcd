"""One writer per run directory: an advisory lock file held while a run writes its log and checkpoints."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("lpt")

LOCK_NAME = "run.lock"


class RunDirBusy(RuntimeError):
    """Another process holds the lock of the run directory."""


class RunDirLock:
    """``flock`` on ``<run_dir>/run.lock`` for the lifetime of this object (or until :meth:`release`).

    The operating system drops the lock when the holder ends in any way (SIGKILL included), so a stale lock
    never blocks a requeued job. On file systems without ``flock`` the run goes on unlocked, with a warning.

    Raises:
        RunDirBusy: another live process holds the lock; the message names its pid and host.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._file.seek(0)
                holder = self._file.read().strip() or "another process"
                self._file.close()
                raise RunDirBusy(f"run directory {self.path.parent} is in use by {holder}: two runs must not write "
                                 f"the same log; choose another hydra.run.dir (or wait for that run to end before "
                                 f"resuming it)") from exc
            log.warning("cannot lock %s (%s): this file system has no flock; make sure no other run uses the "
                        "directory", self.path, exc)
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
