#!/usr/bin/env python
"""Check before training whether MGRIT converges for a preset at its initial weights.

Builds the data set, model and layer-parallel solver of ``+experiment=PRESET`` (plus overrides; the solver is
``mgrit`` whatever the preset says), draws the initial weights of ``seed`` and prints, for the first
``--samples`` training samples:

- the levels and, per coarse level, H·ρ, the coarse-step stability estimate that ``lpt-train`` logs as
  ``mgrit/coarse_hrho`` (README "Large T and coarse-step stability"), and its warning if any;
- the residual history of a cold forward solve (coarse-level initial guess, ``--cycles`` cycles), relative
  to the norm of the states, and its convergence factor (geometric mean over cycles ≥ 2).

    python scripts/check_convergence.py indian_pines_512 dataset.n_train=100
    python scripts/check_convergence.py indian_pines_512 dataset.n_train=100 model.init_scale=1
"""

from __future__ import annotations

import argparse
import dataclasses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.init_scale=1")
    p.add_argument("--cycles", type=int, default=8, help="cycles of the cold forward solve (default 8)")
    p.add_argument("--samples", type=int, default=100, help="training samples to propagate (default 100)")
    args = p.parse_intermixed_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from lpt.cli.compose import compose_config
    from lpt.mgrit import mgrit_solve
    from lpt.mgrit.solve import convergence_factor
    from lpt.train import build_dataset, build_model, make_solver

    cfg = compose_config([f"+experiment={args.preset}", "solver.name=mgrit", *args.overrides])
    data = build_dataset(cfg)
    model = build_model(cfg["model"], data)
    solver = make_solver(cfg["solver"], full_batch=True)
    dtype = jnp.dtype(cfg.get("dtype", "float32"))
    params = model.init(jax.random.PRNGKey(cfg["seed"]), dtype)
    x = jnp.asarray(data.x_train[: args.samples], dtype)

    shapes = solver.layouts(model.depth)[0].shapes
    values, message = solver.coarse_stability(model, params, x)
    print(f"{args.preset}: N={model.depth}, T={model.T:g}, h={model.h:.4g}, init_scale={model.init_scale:g}; "
          f"levels (steps) {[s.n for s in shapes]}")
    print("H·rho per coarse level: " + " ".join(f"{v:.3g}" for v in values))
    print(f"warning: {message}" if message else "warning: none")
    options = dataclasses.replace(solver.fwd, max_iter=args.cycles, abs_tol=0.0, rel_tol=0.0, growth_iter=0)
    _, stats = mgrit_solve(model.step, params["layers"], model.step_sizes(dtype), model.open(params, x), options)
    rel = np.asarray(stats.residuals) / float(stats.state_norm)
    print("cold solve, ||r_k||/||y|| per cycle: " + " ".join(f"{r:.2e}" for r in rel))
    print(f"convergence factor (geometric mean, cycles >= 2): {float(convergence_factor(stats)):.3f}")


if __name__ == "__main__":
    main()
