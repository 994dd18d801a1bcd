#!/usr/bin/env python
"""Generate text from a trained character model (``+experiment=charlm_shakespeare``).

Reads the run's configuration (``run.h5``) and parameters (``checkpoint.npz``), then extends ``--prompt``
character by character: each next character is drawn from softmax(logits / temperature) of the last position,
the model seeing the last ``context`` characters (serial forward propagation). Only the vocabulary needs
the data folder.

    python scripts/sample_charlm.py runs/2026-12-03/16-40-00-000000 --chars 400 --prompt "ROMEO." --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path


def load_params(checkpoint: Path) -> dict:
    """The ``params`` subtree of a checkpoint as nested dicts of numpy arrays (leaf paths ``params.a.b``)."""
    import numpy as np

    params: dict = {}
    with np.load(checkpoint) as data:
        for i, name in enumerate(data["names"]):
            parts = str(name).split(".")
            if parts[0] != "params":
                continue
            node = params
            for key in parts[1:-1]:
                node = node.setdefault(key, {})
            node[parts[-1]] = data[f"leaf_{i:05d}"]
    return params


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--chars", type=int, default=400, help="characters to generate (default 400)")
    p.add_argument("--prompt", default="\n", help="text to start from (default: a newline)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import yaml

    from lpt.data.shakespeare import shakespeare_vocabulary
    from lpt.logging import read_run
    from lpt.train import build_dataset, build_model

    cfg = yaml.safe_load(read_run(args.run_dir).attrs["config"])
    cfg["dataset"] = {**cfg["dataset"], "n_train": 1, "n_val": 1}  # the shapes only
    model = build_model(cfg["model"], build_dataset(cfg))
    params = jax.tree_util.tree_map(jnp.asarray, load_params(args.run_dir / "checkpoint.npz"))
    vocab = shakespeare_vocabulary(cfg.get("data_dir"))
    unknown = sorted(set(args.prompt) - set(vocab))
    if unknown:
        raise SystemExit(f"--prompt holds characters outside the vocabulary: {unknown}")
    context = model.tokens
    # causal attention: a window shorter than the context is padded on the right and read at its last character
    next_logits = jax.jit(lambda x, last: model.forward(params, x)[0, last])
    ids = [vocab.index(c) for c in args.prompt]
    key = jax.random.PRNGKey(args.seed)
    for _ in range(args.chars):
        window = ids[-context:]
        x = jnp.asarray([window + [0] * (context - len(window))], jnp.int32)
        key, sub = jax.random.split(key)
        ids.append(int(jax.random.categorical(sub, next_logits(x, len(window) - 1) / args.temperature)))
    print("".join(vocab[i] for i in np.asarray(ids)))


if __name__ == "__main__":
    main()
