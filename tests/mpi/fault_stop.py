"""Run under mpirun: a stop signal that reaches only rank 0 stops every rank after the same step.

A loop of "steps" (each with a collective, as the training step has) checks ``StopRequest.should_stop()`` at the
top, as lpt's training loop does; rank 0 sends itself SIGUSR1 during step 3. Every rank prints the step it
stopped at and exits 0.
"""

import os
import signal

from mpi4py import MPI

from lpt.parallel.faults import agree_max, install_abort_on_error
from lpt.train.signals import StopRequest

install_abort_on_error()
world = MPI.COMM_WORLD
rank = world.Get_rank()
stop = StopRequest(agree=agree_max())
try:
    for step in range(1000):
        if stop.should_stop():
            print(f"rank {rank} stopped before step {step} on {signal.Signals(stop.signum).name}", flush=True)
            break
        if rank == 0 and step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        world.allreduce(step)  # the step's communication
    else:
        print(f"rank {rank} was not stopped", flush=True)
finally:
    stop.restore()
