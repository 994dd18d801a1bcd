"""The choice lists of options, at the bottom of the package: the schema (:mod:`lpt.config.groups`,
:mod:`lpt.config.run`) and the modules that implement the choices import them from here, so that
:mod:`lpt.config` imports no module that could import it (the model classes check their options through the
schema's fields)."""

from __future__ import annotations

ACTIVATION_NAMES: tuple[str, ...] = ("identity", "relu", "smoothrelu", "tanh")
"""σ of the ResNet's steps (:data:`lpt.model.activations.ACTIVATIONS` maps each to its function)."""

LAYER_KINDS: tuple[str, ...] = ("dense", "conv", "conv2")
"""The ResNet's layer kinds (:mod:`lpt.model.layers`)."""

CONV_IMPLS: tuple[str, ...] = ("auto", "matmul", "xla")
"""Formulations of the convolutions (:mod:`lpt.model.conv`)."""

CONV_LAYOUTS: tuple[str, ...] = ("auto", "NHWC", "CNHW")
"""Memory layouts of conv states (:mod:`lpt.model.conv`)."""

CYCLES: tuple[str, ...] = ("V", "F", "FMG")
"""MGRIT cycles (:mod:`lpt.mgrit.options` imports this list)."""

RESTRICTIONS: tuple[str, ...] = ("inject", "average")
"""Restrictions of the coarse weights (:mod:`lpt.mgrit.options` imports this list)."""

BACKENDS: tuple[str, ...] = ("single", "mesh", "mpi")
"""Parallel back-ends (:mod:`lpt.parallel.grid` imports this list)."""
