"""Options as dataclass fields, and the one generic check of a value against its field.

Every option of ``lpt-train`` is a field of a schema dataclass (:mod:`lpt.config.schema`) made by :func:`option`:
its type is the field's annotation (``int``, ``float``, ``bool``, ``str``, ``Optional[...]``, or ``Any`` with an
``accepts`` predicate), its default the field's default, and its metadata hold the help text and the valid
range or choices. :func:`check_options` checks a mapping of values against a schema and raises a
:class:`ConfigError` whose one line names the option as ``group.key=value`` and says what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from typing import Any, Callable, Mapping, Sequence


class ConfigError(ValueError):
    """An invalid configuration value; the message names the option, the value and what is valid."""


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, choices: Sequence[Any] | None = None,
           valid: str | None = None, note: str | None = None,
           accepts: Callable[[Any], bool] | None = None) -> Any:
    """A schema field: ``default``, one-line ``help``, and what is valid — ``min`` ≤ value ≤ ``max``,
    ``above`` < value < ``below``, one of ``choices``, or ``accepts(value)`` (for ``Any`` fields, with ``valid``
    saying in words what it accepts). ``valid`` replaces the generated description, ``note`` is appended to it
    in parentheses."""
    meta = {"help": help, "min": min, "max": max, "above": above, "below": below,
            "choices": tuple(choices) if choices is not None else None, "valid": valid, "note": note,
            "accepts": accepts}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def field_type(schema: type, name: str) -> tuple[Any, bool]:
    """(base type, whether null is a value) of field ``name`` of ``schema``."""
    hint = typing.get_type_hints(schema)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _range_words(meta: Mapping[str, Any], noun: str) -> str:
    lo, hi, above, below = meta["min"], meta["max"], meta["above"], meta["below"]
    if (lo is not None or above is not None) and (hi is not None or below is not None):
        left = f"[{_num(lo)}" if lo is not None else f"({_num(above)}"
        right = f"{_num(hi)}]" if hi is not None else f"{_num(below)})"
        return f"a number in {left}, {right}" if noun == "number" else f"an integer in {left}, {right}"
    if above == 0 and noun == "number":
        return "a positive finite number"
    if lo is not None:
        return f"a finite number ≥ {_num(lo)}" if noun == "number" else f"an integer ≥ {_num(lo)}"
    return "a finite number" if noun == "number" else "an integer"


def describe(schema: type, f: dataclasses.Field) -> str:
    """What is valid for field ``f``, in words (as the error messages and the README's tables say it)."""
    meta, (kind, nullable) = f.metadata, field_type(schema, f.name)
    if meta["valid"]:
        words = meta["valid"]
    elif meta["choices"]:
        words = " | ".join("null" if c is None else str(c) for c in meta["choices"])
    elif kind is bool:
        words = "true or false"
    elif kind in (int, float):
        words = _range_words(meta, "integer" if kind is int else "number")
    else:
        words = "a string"
    if nullable and not meta["valid"] and not meta["choices"]:
        words += " or null"
    return f"{words} ({meta['note']})" if meta["note"] else words


def _in_range(meta: Mapping[str, Any], value: float) -> bool:
    return ((meta["min"] is None or value >= meta["min"]) and (meta["max"] is None or value <= meta["max"])
            and (meta["above"] is None or value > meta["above"]) and (meta["below"] is None or value < meta["below"]))


def is_valid(schema: type, f: dataclasses.Field, value: Any) -> bool:
    """Whether ``value`` is a valid value of field ``f`` of ``schema``."""
    meta, (kind, nullable) = f.metadata, field_type(schema, f.name)
    if value is None:
        return nullable or (meta["choices"] is not None and None in meta["choices"])
    if meta["accepts"] is not None:
        return bool(meta["accepts"](value))
    if meta["choices"] is not None:
        return any(value == c and type(value) is type(c) for c in meta["choices"] if c is not None)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:  # numbers.Integral: NumPy integers too (library users' models)
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and _in_range(meta, value)
    if kind is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and _in_range(meta, value))
    return isinstance(value, str)


def check_value(schema: type, f: dataclasses.Field, value: Any, path: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``path=value`` and what is valid unless ``value`` is."""
    if is_valid(schema, f, value):
        return
    words = describe(schema, f)
    if value is None:
        raise ConfigError(f"{path}=None: this option needs a value ({words})")
    if f.metadata["choices"] and f.metadata["accepts"] is None:
        raise ConfigError(f"{path}={value!r} is not valid; choose one of {list(f.metadata['choices'])}")
    kind = field_type(schema, f.name)[0]
    boolean = ", not a boolean" if isinstance(value, bool) and kind in (int, float) else ""
    raise ConfigError(f"{path}={value!r} must be {words}{boolean}")


def check_attributes(obj: Any, schema: type, names: Sequence[str] | Mapping[str, str], prefix: str,
                     error: type[ValueError] = ConfigError) -> None:
    """Check the attributes ``names`` of ``obj`` (e.g. a model a library user built) against the fields of the
    same names of ``schema`` (or, ``names`` a mapping attribute → field, of those fields): the run's one-line
    ``prefix.field=value`` message, raised as ``error``."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    pairs = names.items() if isinstance(names, Mapping) else ((name, name) for name in names)
    for attr, name in pairs:
        try:
            check_value(schema, fields[name], getattr(obj, attr), f"{prefix}.{name}")
        except ConfigError as exc:
            raise (exc if error is ConfigError else error(str(exc))) from None


def check_options(values: Mapping[str, Any], schema: type, prefix: str, variant: str = "") -> None:
    """Check every key of ``values`` against the fields of ``schema``: unknown keys are refused (``+trian.steps``,
    a typo that Hydra's ``+`` lets through), each value must be valid. ``prefix`` is the config group ("" for
    the top level), ``variant`` e.g. ``model.arch=transformer`` for the message."""
    fields = [f for f in dataclasses.fields(schema) if not f.metadata.get("group")]
    names = [f.name for f in dataclasses.fields(schema)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{prefix}: unknown option(s) {unknown}" if prefix else f"unknown top-level option(s) {unknown}"
        what = f"valid {'keys' if prefix else 'top-level keys'} are {names}"
        raise ConfigError(f"{where}{f' for {variant}' if variant else ''}; {what}")
    for f in fields:
        if f.name in values:
            check_value(schema, f, values[f.name], f"{prefix}.{f.name}" if prefix else f.name)
