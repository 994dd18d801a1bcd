"""Run logs (HDF5), their reader, and atomic checkpoints."""

from lpt.logging.checkpoint import (CHECKPOINT_NAME, atomic_write_bytes, find_checkpoint, load_checkpoint,
                                   resolve_resume, save_checkpoint)
from lpt.logging.lock import RunDirBusy, RunDirLock
from lpt.logging.reader import LOG_NAME, RunRecord, find_log, read_run
from lpt.logging.runlog import RunLog, git_revision

__all__ = ["CHECKPOINT_NAME", "LOG_NAME", "RunDirBusy", "RunDirLock", "RunLog", "RunRecord", "atomic_write_bytes",
           "find_checkpoint", "find_log", "git_revision", "load_checkpoint", "read_run", "resolve_resume",
           "save_checkpoint"]
