"""From an ``lpt-train`` configuration to what the model needs: the network, its batch, solver options and
the name of its calibration profile."""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from lpt.perfmodel.costs import profile_key


def network_from_config(cfg: Mapping[str, Any]):
    """(model, data set, batch size) of a composed run configuration (the data set is loaded for its shapes)."""
    from lpt.train.build import build_dataset, build_model

    data = build_dataset(cfg)
    model = build_model(cfg["model"], data)
    batch = cfg["train"].get("batch_size") or data.x_train.shape[0]
    return model, data, int(batch)


def profile_key_for(model, dtype: Any = "float32", procs: int = 1) -> str:
    """The profile name of ``model`` (layer, width, input, σ, dtype); ``procs`` > 1 marks costs measured while
    that many processes share the machine (one per MPI rank)."""
    key = profile_key(model.layer, model.width, model.input_shape, model.activation, str(jnp.dtype(dtype)),
                      model.kernel_size)
    return key if procs == 1 else f"{key}/procs{procs}"


def solver_options(cfg: Mapping[str, Any], *, full_batch: bool = False):
    """The forward and adjoint :class:`lpt.mgrit.MGRITOptions` and warm start of the ``solver`` group (the
    defaults of solver=mgrit when the configuration trains serially)."""
    from lpt.mgrit import MGRITSolver

    solver_cfg = cfg["solver"] if cfg["solver"].get("name") == "mgrit" else {"name": "mgrit"}
    solver = MGRITSolver.from_config(solver_cfg, full_batch=full_batch)
    return solver.fwd, solver.bwd, solver.warm_start
