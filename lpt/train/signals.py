"""Graceful stops on SIGTERM, SIGINT and SIGUSR1 (SLURM preemption and time limits, Ctrl-C).

While training, the first of these signals only sets a flag: the loop finishes the step it is in, writes a
checkpoint, marks the run log ``status = "interrupted: SIGTERM"`` (etc.), closes it and raises
:class:`Interrupted`; ``lpt-train`` then exits with status 128 + signal number (130 SIGINT, 138 SIGUSR1,
143 SIGTERM), the shell's code for "ended by that signal". A second stop signal restores the previous handlers
and is delivered to its previous handler, so it acts at once as without lpt (SIGTERM ends the process, Ctrl-C
twice raises KeyboardInterrupt).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("lpt")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
"""Signals that stop training after the current step. SIGUSR2 is left to submitit, which uses it itself."""


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; checkpoint written to "
                         f"{checkpoint}; continue with resume={checkpoint.parent}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 138 for SIGUSR1, 143 for SIGTERM."""
        return 128 + self.signum


class StopRequest:
    """Catches the stop signals while installed; ``signum`` is the first one received (None: none yet).

    Handlers can only be installed from the main thread; elsewhere (a Hydra launcher's worker thread) this
    is inert and the signals keep their previous handlers.

    Args:
        signals: the signals to catch.
        agree: for runs of several processes (MPI): ``agree(local) -> global`` returns the largest signal
            number any process received (a collective, see :func:`lpt.parallel.faults.agree_max`), so that all
            processes stop after the same step even when the signal reaches them at different times.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, agree: Callable[[int], int] | None = None):
        self.signum: int | None = None
        self._agree = agree
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second signal: stop at once with the previous behaviour
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        log.warning("received %s: stopping after the current step (checkpoint, then exit %d); send it again to "
                    "stop at once", signal.Signals(signum).name, 128 + signum)

    @property
    def requested(self) -> bool:
        """Whether this process received a stop signal."""
        return self.signum is not None

    def should_stop(self) -> bool:
        """Whether to stop now: this process (with ``agree``: any process) received a stop signal.

        With ``agree`` this is a collective: every process must call it at the same point of the loop.
        """
        if self._agree is not None:
            agreed = int(self._agree(self.signum or 0))
            if agreed and self.signum is None:
                self.signum = agreed
            # the agreed answer, not this process's: a signal that arrives during the collective reaches only
            # this process, which would stop alone (and wait for ever in the checkpoint's gather); it counts at the
            # next agreement, on every process
            return agreed != 0
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class StopWhileCompiling:
    """A stop signal while the first step is traced and compiled (minutes for deep conv presets) ends the run at
    once, instead of after the first step: no step has been taken, so there is nothing to save.

    While XLA compiles, the main thread runs no Python code, so the handlers of :class:`StopRequest` wait for
    the compilation. The signal's number also reaches a pipe (:func:`signal.set_wakeup_fd`) that a daemon thread
    watches until :meth:`done`; on a stop signal it calls ``on_stop(signum)`` (the loop marks its log
    ``interrupted``), prints one line on stderr and ends the process with 128 + signal number. Inert where
    :class:`StopRequest` installed no handlers (not the main thread).
    """

    def __init__(self, stop: StopRequest, on_stop: Callable[[int], None], resume_hint: str):
        self._done = threading.Event()
        self._old_fd = None
        if not stop._previous:
            return
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._on_stop, self._hint = on_stop, resume_hint
        threading.Thread(target=self._watch, name="lpt-stop-while-compiling", daemon=True).start()

    def _watch(self) -> None:
        while not self._done.is_set():
            ready, _, _ = select.select([self._read], [], [], 0.2)
            if not ready or self._done.is_set():
                continue
            for signum in os.read(self._read, 64):
                if signum in STOP_SIGNALS and not self._done.is_set():
                    self._stop(signum)

    def _stop(self, signum: int) -> None:
        name = signal.Signals(signum).name
        try:
            self._on_stop(signum)
            log.warning("interrupted by %s while compiling the first step: no step was taken, nothing to save", name)
            sys.stderr.write(f"lpt-train: interrupted by {name} while compiling the first step; {self._hint}\n")
            sys.stderr.flush()
            for handler in logging.getLogger("lpt").handlers + logging.getLogger().handlers:
                handler.flush()
        finally:
            os._exit(128 + signum)

    def done(self) -> None:
        """The first step is compiled: later signals stop the run after their step, as :class:`StopRequest` says
        (call from the main thread; idempotent)."""
        if self._done.is_set():
            return
        self._done.set()
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
            self._old_fd = None
