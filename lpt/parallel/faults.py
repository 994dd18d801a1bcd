"""MPI faults: an error on one rank must end every rank, with the error shown, in bounded time.

Without this, a rank that raises leaves through ``MPI_Finalize`` (mpi4py's exit handler) while the other ranks
wait in a collective for it — for ever. :func:`install_abort_on_error` replaces ``sys.excepthook`` (and
``threading.excepthook``) so that an uncaught exception prints ``lpt: rank R of P: <Type>: <message>`` and the
traceback on stderr, then calls ``MPI_Abort`` on ``COMM_WORLD``: the launcher (mpirun, srun) then ends every
rank of the job. A rank that dies (SIGKILL, segfault) is handled by the launcher itself: mpirun ends the job
when one process ends abnormally; with srun use ``--kill-on-bad-exit=1``.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any, Callable

ABORT_CODE = 1
"""``MPI_Abort`` error code of an uncaught exception (mpirun's exit status)."""


def install_abort_on_error(comm: Any = None, *, code: int = ABORT_CODE) -> None:
    """Make an uncaught exception on this rank abort all ranks of ``comm`` (default ``MPI.COMM_WORLD``).

    Call once per process, after MPI is initialised (importing ``mpi4py.MPI`` does that); calling it again
    only replaces the communicator. Keyboard interrupts abort as well.

    Args:
        comm: an mpi4py communicator whose ``Abort`` ends the job.
        code: the error code passed to ``MPI_Abort``.
    """
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    def abort(exc_type, exc, tb, where: str = "") -> None:
        try:
            sys.stderr.write(f"lpt: rank {rank} of {size}{where}: {exc_type.__name__}: {exc}\n")
            traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
            sys.stderr.write(f"lpt: rank {rank}: aborting all {size} ranks (MPI_Abort, code {code})\n")
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            comm.Abort(code)

    def excepthook(exc_type, exc, tb) -> None:
        abort(exc_type, exc, tb)

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        abort(args.exc_type, args.exc_value, args.exc_traceback, f" (thread {name})")

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def abort_all_ranks(message: str, code: int = ABORT_CODE, comm: Any = None) -> None:
    """Print ``message`` with this rank's number on stderr and end all ranks with ``MPI_Abort(code)``.

    For errors that are handled (and would otherwise end only this rank with ``sys.exit``) in a run under MPI.
    """
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    sys.stderr.write(f"lpt: rank {comm.Get_rank()} of {comm.Get_size()}: {message}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    comm.Abort(code)


def agree_max(comm: Any = None) -> Callable[[int], int]:
    """``agree(value) -> max of value over all ranks``, on a private duplicate of ``comm`` (default
    ``COMM_WORLD``), so that it never interleaves with the collectives of the training step.

    Used by :class:`lpt.train.signals.StopRequest` to make every rank stop after the same step.
    """
    from mpi4py import MPI

    private = (comm or MPI.COMM_WORLD).Dup()
    return lambda value: int(private.allreduce(int(value), op=MPI.MAX))


def end_all_processes(exc: BaseException, backend: str, code: int = ABORT_CODE) -> None:
    """End every process of a multi-process run after an unexpected exception on this one, with the error shown.

    Under ``lpt-train`` Hydra catches the exception before ``sys.excepthook`` could see it, and a normal exit
    would wait for the other processes, which wait in a collective for this one: under MPI (``backend="mpi"``)
    the ranks end by ``MPI_Abort``. On a multi-process mesh this process leaves by ``os._exit``, without JAX's
    shutdown barrier, which would hold it (and its connections) while the others wait in a collective: a process
    waiting in a CPU collective then fails at once on the closed connection (and ends the same way), any other
    when JAX's coordination service misses this process's heartbeat (``parallel.heartbeat_s``).
    """
    if backend == "mpi":
        from mpi4py import MPI

        where = f"rank {MPI.COMM_WORLD.Get_rank()} of {MPI.COMM_WORLD.Get_size()}"
    else:
        import jax

        where = f"process {jax.process_index()} of {jax.process_count()}"
    try:
        sys.stderr.write(f"lpt: {where}: {type(exc).__name__}: {exc}\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.write(f"lpt: {where}: ending all processes (exit status {code})\n")
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        if backend == "mpi":
            MPI.COMM_WORLD.Abort(code)
        os._exit(code)


def is_last_process(runtime: Any) -> bool:
    """Whether this is the last process of the run (the last MPI rank or JAX process; the only one otherwise)."""
    if runtime.grid.processes > 1:
        import jax

        return jax.process_index() == jax.process_count() - 1
    if runtime.grid.backend == "mpi":
        return runtime.comm.rank == runtime.grid.size - 1
    return True
