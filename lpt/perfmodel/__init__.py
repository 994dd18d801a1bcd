"""Performance model of layer-parallel training (DESIGN §7): what one MGRIT cycle, one gradient and one
training step cost on a P_data × P_layers grid, from measured per-step costs c(stacked batch), message
latency α and inverse bandwidth β; serial time, speedup, weak and strong scaling, the crossover point and the
best (cfactor, levels) for a machine. ``lpt-model calibrate`` measures the costs and stores them.
"""

from lpt.perfmodel.costs import Calibration, CalibrationError, CommCosts, CostCurve, Profile, profile_key
from lpt.perfmodel.model import Breakdown, Grid, PerfModel
from lpt.perfmodel.work import (Ops, cycle_ops, gradient_ops, layout_for, solve_ops, textbook_level_work,
                                textbook_work_per_cycle)

__all__ = ["Breakdown", "Calibration", "CalibrationError", "CommCosts", "CostCurve", "Grid", "Ops", "PerfModel",
           "Profile", "cycle_ops", "gradient_ops", "layout_for", "profile_key", "solve_ops", "textbook_level_work",
           "textbook_work_per_cycle"]
