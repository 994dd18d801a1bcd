"""Training: gradient strategies (solvers), optimisers, the jitted step and the loop."""

from lpt.train.build import ConfigError, LoopSettings, build_dataset, build_model
from lpt.train.loop import RunResult, run
from lpt.train.optim import make_optimizer
from lpt.train.solver import SerialSolver, Solver, make_solver, objective
from lpt.train.state import TrainState, init_state, make_evaluate, make_train_step

__all__ = ["ConfigError", "LoopSettings", "RunResult", "SerialSolver", "Solver", "TrainState", "build_dataset",
           "init_state", "build_model", "make_evaluate", "make_optimizer", "make_solver", "make_train_step",
           "objective", "run"]
