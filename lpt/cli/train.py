"""``lpt-train``: the Hydra application that trains a network (serial or layer-parallel).

Exit status: 0 trained; 2 invalid input (one line on stderr); 3 numerical failure (non-finite steps stopped the
run, checkpoint of the last good state written); 128 + signal number when SIGINT (130), SIGUSR1 (138) or
SIGTERM (143) interrupted the run after a checkpoint; 1 an unexpected error (traceback). In a run of several
processes (``parallel=mpi``, ``parallel.processes`` > 1) an unexpected error on one process ends all of them
(:func:`lpt.parallel.faults.end_all_processes`).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lpt.config import register_schemas
from lpt.data import DataError
from lpt.host import set_up_process
from lpt.model import ModelError
from lpt.train import ConfigError, run
from lpt.train.signals import Interrupted

log = logging.getLogger("lpt")

USER_ERRORS = (ConfigError, DataError, ModelError, FileNotFoundError)
"""Errors caused by the input: reported in one line, exit status 2, no traceback."""

register_schemas()  # the typed schema of every option, as structured configs in Hydra's ConfigStore (schema/)

EXIT_USER_ERROR = 2
EXIT_NUMERICAL = 3
"""Exit status when non-finite steps stop the run (train.on_nonfinite) or MGRIT diverges with
solver.on_divergence=error; a checkpoint of the last good state is in the run directory."""
# Interrupted by SIGINT / SIGUSR1 / SIGTERM after a checkpoint: 128 + signal number = 130 / 138 / 143.


HYDRA_FILES = {".hydra", "train.log"}
"""What Hydra itself puts into a run directory (the composed config and the log of the job)."""


def remove_if_unused(run_dir: str | Path) -> None:
    """Remove the run directory of an invocation refused before it ran when it holds only Hydra's own files
    (failed invocations leave no empty run directories; the error was printed on stderr)."""
    path = Path(run_dir)
    if path.is_dir() and {p.name for p in path.iterdir()} <= HYDRA_FILES:
        shutil.rmtree(path, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="pkg://lpt.configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train with the composed configuration; returns the final validation metric (for sweepers)."""
    from hydra.core.hydra_config import HydraConfig

    logging.getLogger("jax").setLevel(logging.WARNING)  # no backend-probing chatter in run logs
    set_up_process()  # XLA's buffers stay in the process, fewer garbage collections while tracing (lpt.host)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if (resolved.get("parallel") or {}).get("name") == "mpi":
        from lpt.parallel.faults import install_abort_on_error

        try:
            install_abort_on_error()  # an exception on one rank ends all ranks, with the error shown
        except ImportError:
            pass  # no mpi4py: run() refuses parallel=mpi with one line saying how to install it
    try:
        result = run(resolved, HydraConfig.get().runtime.output_dir)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        print(f"lpt-train: error: {exc}", file=sys.stderr)
        remove_if_unused(HydraConfig.get().runtime.output_dir)
        sys.exit(EXIT_USER_ERROR)
    except FloatingPointError as exc:  # NonFiniteError, MGRIT divergence
        log.error("%s", exc)
        print(f"lpt-train: numerical failure: {exc}", file=sys.stderr)
        sys.exit(EXIT_NUMERICAL)
    except Interrupted as exc:
        print(f"lpt-train: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        parallel = resolved.get("parallel") or {}
        if parallel.get("name") == "mpi" or (parallel.get("processes") or 1) > 1:
            from lpt.parallel.faults import end_all_processes

            end_all_processes(exc, parallel.get("name"))  # else the other processes wait for this one for ever
        raise
    log.info("log written to %s", result.log_path)
    for key in ("val_acc", "val_mse"):
        if key in result.final:
            return result.final[key]
    return None


if __name__ == "__main__":
    main()
