"""``lpt-train``: the Hydra application that trains a network (serial or layer-parallel)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from lpt.data import DataError
from lpt.model import ModelError
from lpt.train import ConfigError, run

log = logging.getLogger("lpt")

USER_ERRORS = (ConfigError, DataError, ModelError, FileNotFoundError)
"""Errors caused by the input: reported in one line, exit status 2, no traceback."""


@hydra.main(version_base="1.3", config_path="pkg://lpt.configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train with the composed configuration; returns the final validation metric (for sweepers)."""
    from hydra.core.hydra_config import HydraConfig

    logging.getLogger("jax").setLevel(logging.WARNING)  # no backend-probing chatter in run logs

    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        result = run(resolved, HydraConfig.get().runtime.output_dir)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        print(f"lpt-train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    log.info("log written to %s", result.log_path)
    for key in ("val_acc", "val_mse"):
        if key in result.final:
            return result.final[key]
    return None


if __name__ == "__main__":
    main()
