"""One typed schema of every ``lpt-train`` option: one dataclass per config group and variant
(:mod:`lpt.config.groups`, :mod:`lpt.config.run`), each field with its type, default, valid range or choices and
a help line. The run's checks (:func:`check_config`), the README's option tables (``scripts/option_tables.py``)
and Hydra's ConfigStore (:func:`register_schemas`) come from it."""

from lpt.config.fields import ConfigError, check_options, describe, option
from lpt.config.store import GROUPS, VARIANTS, check_config, check_group, register_schemas, schema_for, schema_nodes

__all__ = ["GROUPS", "VARIANTS", "ConfigError", "check_config", "check_group", "check_options", "describe", "option",
           "register_schemas", "schema_for", "schema_nodes"]
