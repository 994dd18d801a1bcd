#!/usr/bin/env python
"""Where the error of one-shot layer-parallel training comes from: a full-batch run of a preset with the
layer-parallel solver, and at every step, against exact (serial) quantities at the same weights:

- ``fwd_start`` / ``fwd_end``: ‖y − y*‖/‖y*‖ of the warm-start states the step starts from and of the states
  it ends with (y* the exact states at the step's weights; NaN on the first, cold step);
- ``adj_end``: ‖ȳ − ȳ*‖/‖ȳ*‖ of the adjoint states, ȳ* the exact adjoint at the step's own forward states;
- ``grad_err``: ‖g − g*‖/‖g*‖ of the one-shot gradient, and ``grad_cos`` its cosine with the exact one;
- ``grad_err_fwd``: the same for the layer gradient assembled from the step's forward states and the exact
  adjoint (what the forward solve alone costs);
- the solver's own residuals (``fwd_residual``, ``fwd_initial``, ``bwd_residual``).

The training itself is that of ``lpt-train`` (Adam/SGD update of the one-shot gradient, the solver's warm
start); the exact quantities are computed on the side and never enter the trajectory.

    python scripts/diagnose_one_shot.py peaks --steps 300
    python scripts/diagnose_one_shot.py peaks --steps 300 solver.bwd_iters=1 --out diag.npz
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

KEYS = ("fwd_start", "fwd_end", "adj_end", "grad_err", "grad_cos", "grad_err_fwd", "loss")


def _flat(tree) -> jnp.ndarray:
    return jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(tree)])


def diagnose(preset: str, overrides: list[str], steps: int) -> dict[str, np.ndarray]:
    """Per-step diagnostics (arrays of length ``steps``) of a full-batch one-shot run; see the module doc."""
    import optax

    from lpt.cli.compose import compose_config
    from lpt.mgrit.adjoint import adjoint_solve, layer_gradient
    from lpt.mgrit.options import MGRITOptions
    from lpt.model import propagate_states
    from lpt.train import build_dataset, build_model, make_optimizer, make_solver
    from lpt.train.solver import objective

    cfg = compose_config([f"+experiment={preset}", "solver=mgrit", *overrides])
    data = build_dataset(cfg)
    model = build_model(cfg["model"], data)
    opt = make_optimizer(cfg["optimizer"])
    solver = make_solver(cfg["solver"], full_batch=True)
    if not solver.warm_start:
        raise SystemExit("diagnose_one_shot.py studies the warm-started (full-batch) one-shot method")
    params = model.init(jax.random.PRNGKey(cfg["seed"]))
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    exact = MGRITOptions(max_levels=1, max_iter=1)

    def rel(a, b):
        return jnp.linalg.norm(_flat(a) - _flat(b)) / jnp.linalg.norm(_flat(b))

    @jax.jit
    def step(params, opt_state, state):
        y0 = model.open(params, x)
        hs = model.step_sizes(y0.dtype)
        ystar = propagate_states(model.step, params["layers"], hs, y0)
        n = ystar.shape[0]
        fwd_start = jnp.where(state.valid, rel(state.ys[:n], ystar), jnp.nan)
        _, aux, grads, new_state, stats = solver.value_and_grad(model, params, x, y, state)
        ys = new_state.ys[:n]
        ybar_final = jax.grad(lambda yn: model.data_loss(model.head(params, yn), y))(ys[-1])
        ybar_star, _ = adjoint_solve(model.step, params["layers"], hs, ys, ybar_final, exact)
        g_star = jax.grad(lambda p: objective(model, p, x, y)[0])(params)
        g_fwd = layer_gradient(model.step, params["layers"], hs, ys, ybar_star)
        flat, flat_star = _flat(grads), _flat(g_star)
        out = dict(fwd_start=fwd_start, fwd_end=rel(ys, ystar), adj_end=rel(new_state.ybars[:n], ybar_star),
                   grad_err=rel(grads, g_star),
                   grad_cos=flat @ flat_star / (jnp.linalg.norm(flat) * jnp.linalg.norm(flat_star)),
                   grad_err_fwd=rel(g_fwd, g_star["layers"]), loss=aux["loss"],
                   fwd_residual=stats["fwd_residual"], fwd_initial=stats["fwd_initial"],
                   bwd_residual=stats["bwd_residual"])
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_state, out

    opt_state, state, rows = opt.init(params), solver.init_state(model, params, x), []
    for _ in range(steps):
        params, opt_state, state, out = step(params, opt_state, state)
        rows.append(jax.device_get(out))
    return {k: np.stack([np.asarray(r[k], np.float64) for r in rows]) for k in rows[0]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. solver.bwd_iters=1")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", help="write the per-step arrays to this .npz file")
    args = p.parse_intermixed_args(argv)
    d = diagnose(args.preset, args.overrides, args.steps)
    if args.out:
        np.savez(args.out, **d)
    later = slice(args.steps // 3, None)
    grew = np.mean(d["fwd_end"][1:] > d["fwd_start"][1:])
    print(f"{args.preset} {' '.join(args.overrides)}: {args.steps} steps; medians over steps "
          f"{args.steps // 3 + 1}..{args.steps}:")
    for key in KEYS:
        print(f"  {key:13s} {np.nanmedian(d[key][later]):.4g}")
    print(f"  steps whose forward error grew: {grew:.1%}; forward error reduction per step (median) "
          f"{np.nanmedian(d['fwd_end'][1:] / d['fwd_start'][1:]):.3g}")
    done = np.isfinite(d["fwd_residual"]).sum(axis=1)  # cycles done (growth cycles vary per step)
    up = d["fwd_residual"][np.arange(len(done)), done - 1] > d["fwd_initial"]
    print(f"  steps whose final forward residual exceeds the F-relaxed warm start's: {np.mean(up[1:]):.1%}")


if __name__ == "__main__":
    main()
