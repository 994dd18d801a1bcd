"""Run under mpirun: rank 1 fails while the other ranks wait for it in MPI calls that never complete.

Argument: ``raise`` (rank 1 raises an uncaught exception) or ``kill`` (rank 1 ends itself with SIGKILL). Every
rank installs lpt's abort hook and, as the training loop does, the graceful-stop signal handlers, so the test
also shows that those handlers do not keep a rank that is blocked in MPI alive.
"""

import os
import signal
import sys
import time

from mpi4py import MPI

from lpt.parallel.faults import install_abort_on_error
from lpt.train.signals import StopRequest

install_abort_on_error()
stop = StopRequest()
world = MPI.COMM_WORLD
rank = world.Get_rank()
world.Barrier()
print(f"rank {rank} ready", flush=True)
if rank == 1:
    time.sleep(0.5)
    print(f"rank 1 fails at {time.time():.3f}", flush=True)
    if sys.argv[1] == "raise":
        raise RuntimeError("injected fault on rank 1")
    os.kill(os.getpid(), signal.SIGKILL)
world.recv(source=1, tag=7)  # never sent
print(f"rank {rank} was not stopped", flush=True)
