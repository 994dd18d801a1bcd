"""Command-line entry points (Hydra applications) and the config resolvers they use."""

from omegaconf import OmegaConf

# `${lpt.ranks:${parallel.data},${parallel.layers}}`: the number of ranks of a processor grid (SLURM tasks).
OmegaConf.register_new_resolver("lpt.ranks", lambda data, layers: int(data) * int(layers), replace=True)
