"""The config schema (lpt/config): every shipped YAML is accepted and fully described by it, the option files'
options (defaults and help) and the README's option tables are the ones generated from it, and every bad value is
refused in one line naming ``group.key=value``."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lpt.cli.compose import compose_config
from lpt.config import ConfigError, check_config, check_options, register_schemas, schema_for, schema_nodes
from lpt.config.fields import field_type
from lpt.config.files import BEGIN, FILE_KEYS, generated_part, option_files, with_options
from lpt.config.run import RunOptions
from lpt.config.tables import markdown_tables, readme_tables

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
GROUP_FILES = sorted(p for g in ("dataset", "model", "solver", "optimizer", "parallel", "logging")
                     for p in (CONFIGS / g).glob("*.yaml"))
PRESETS = sorted((CONFIGS / "experiment").glob("*.yaml"))
NODES = {f"{group.removeprefix('schema/')}/{name}": node for group, name, node in schema_nodes()}


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    return data


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_group_option_file_is_its_schema_node_with_the_same_defaults(path):
    """configs/<group>/<name>.yaml merges into its structured config (Hydra/OmegaConf type checks), passes
    lpt's check, and holds the schema node's defaults: every field (or those of ``FILE_KEYS``) once, each with its
    default."""
    group, values = path.parent.name, _load(path)
    node = NODES[f"{group}/{path.stem}"]
    OmegaConf.merge(OmegaConf.structured(node), values)  # raises on a key or type the schema lacks
    schema, variant = schema_for(group, values)
    check_options(values, schema, group, variant)
    defaults = OmegaConf.to_container(OmegaConf.structured(node))
    assert list(values) == list(FILE_KEYS.get(f"{group}/{path.stem}", defaults)), path
    for key, value in values.items():
        assert defaults[key] == value, (path.name, key, defaults[key], value)


def test_the_option_files_hold_the_options_generated_from_the_schema():
    """Every option file of configs/ (groups, and train.yaml's top level and ``train:`` block) holds, after its
    hand-written header, exactly the lines generated from the schema (defaults and help: lpt.config.files;
    ``python scripts/option_tables.py --write`` rewrites them), and a changed default is a difference."""
    files = option_files(CONFIGS)
    assert set(files) == {*GROUP_FILES, CONFIGS / "train.yaml"}
    for path, lines in files.items():
        text = path.read_text()
        assert generated_part(text)[1] == lines, f"{path}: run python scripts/option_tables.py --write"
        assert with_options(text, lines) == text
    mgrit = CONFIGS / "solver" / "mgrit.yaml"
    edited = mgrit.read_text().replace("\ncfactor: 4 ", "\ncfactor: 2 ")
    assert edited != mgrit.read_text() and generated_part(edited)[1] != files[mgrit]
    assert BEGIN in (CONFIGS / "logging" / "default.yaml").read_text().splitlines()[0]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_composed_is_accepted_and_every_key_is_described(path):
    cfg = compose_config([f"+experiment={path.stem}"])
    check_config(cfg)
    for group, values in _load(path).items():
        schema, _ = schema_for(group, cfg[group])
        fields = {f.name: f for f in dataclasses.fields(schema)}
        for key in values:
            assert fields[key].metadata["help"].strip(), (group, key)


def test_top_level_yaml_is_accepted():
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    check_config({**compose_config([]), **{k: v for k, v in train.items() if k not in ("defaults", "hydra")}})


def _bad_value(schema: type, f: dataclasses.Field):
    """A value of the wrong type for field ``f`` (for Any fields: a list of strings)."""
    kind, _ = field_type(schema, f.name)
    if f.metadata["choices"] or kind is str:
        return 3 if kind is str and not f.metadata["choices"] else "nonsense"
    return {int: 2.5, float: "abc", bool: 2}.get(kind, ["x"])


CASES = [(name, schema, f) for name, schema in NODES.items() if isinstance(schema, type)
         for f in dataclasses.fields(schema) if not f.metadata.get("group")]


@pytest.mark.parametrize("name, schema, f", CASES, ids=[f"{n}.{f.name}" for n, _, f in CASES])
def test_a_bad_value_of_every_option_is_one_line_naming_it(name, schema, f):
    group = name.split("/")[0]
    values = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(schema)).items() if v is not None}
    bad = _bad_value(schema, f)
    prefix = "" if schema is RunOptions else group  # the top level: "seed=…", not "schema.seed=…"
    with pytest.raises(ConfigError) as info:
        check_options({**values, f.name: bad}, schema, prefix)
    message = str(info.value)
    assert message.startswith(f"{prefix + '.' if prefix else ''}{f.name}={bad!r} ") and "\n" not in message
    assert "must be" in message or "is not valid; choose one of" in message


@pytest.mark.parametrize("args, message", [
    (["+model.widht=8"], "model: unknown option(s) ['widht'] for model.arch=resnet; valid keys are ['arch', "),
    (["model=transformer", "+model.width=8"], "unknown option(s) ['width'] for model.arch=transformer"),
    (["+optimizer.momentum=0.5"], "optimizer: unknown option(s) ['momentum']; valid keys are ['name', 'lr', 'b1'"),
    (["model.arch=mlp"], "model.arch='mlp' is not valid; choose one of ['resnet', 'parareal', 'transformer']"),
    (["optimizer.name=rmsprop"], "optimizer.name='rmsprop' is not valid; choose one of ['sgd', 'adam', 'lbfgs']"),
    (["model.width=null"], "model.width=None: this option needs a value (an integer ≥ 1)"),
    (["solver=mgrit", "solver.cfactor=[2,1]"], "solver.cfactor=[2, 1] must be an integer ≥ 2 or a non-empty list"),
    (["solver=mgrit", "solver.warm_start=1"], "solver.warm_start=1 must be auto, true or false"),
    (["optimizer=sgd", "optimizer.momentum=1"], "optimizer.momentum=1 must be a number in [0, 1)"),
    (["dataset=shakespeare", "dataset.val_fraction=0.6"], "dataset.val_fraction=0.6 must be a number in [0, 0.5]"),
    (["train.batch_size=0"], "train.batch_size=0 must be an integer ≥ 1 or null"),
])
def test_composed_bad_values_name_option_and_what_is_valid(args, message):
    with pytest.raises(ConfigError) as info:
        check_config(compose_config(args))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_schemas_are_stored_in_hydras_config_store():
    from hydra.core.config_store import ConfigStore

    register_schemas()
    store = ConfigStore.instance()
    for path in GROUP_FILES:
        node = store.load(f"schema/{path.parent.name}/{path.stem}.yaml").node
        assert OmegaConf.get_type(node) is not dict, path  # a structured config (typed), not a plain dict


def test_readme_option_tables_are_generated_from_the_schema():
    """`python scripts/option_tables.py --write` makes this pass after a schema change."""
    assert readme_tables((ROOT / "README.md").read_text()) == markdown_tables()


@pytest.mark.parametrize("make, args, option", [
    ("resnet", dict(depth=0), "depth=0"), ("resnet", dict(T=-1.0), "T=-1.0"),
    ("resnet", dict(activation="swish"), "activation=swish"), ("resnet", dict(conv_layout="NCHW"), "conv_layout=NCHW"),
    ("parareal", dict(num_parallel=0), "num_parallel=0"), ("parareal", dict(coarse_units=0), "coarse_units=0"),
    ("transformer", dict(heads=0), "heads=0"), ("transformer", dict(embed_scale=0.0), "embed_scale=0.0"),
    ("transformer", dict(causal="yes"), "causal=yes"),
])
def test_the_model_classes_check_their_options_by_the_schemas_fields(make, args, option):
    """A library user's model (lpt.model's classes, no config) is refused with the run's one line for the same
    option: one definition of the range and the message, the schema's."""
    from lpt.model import ModelError, ResNet
    from lpt.model.parareal import ParaRealNet
    from lpt.model.transformer import Transformer

    build = {"resnet": lambda **kw: ResNet(input_shape=(2,), num_outputs=3, **kw),
             "parareal": lambda **kw: ParaRealNet(ResNet(input_shape=(2,), num_outputs=3, depth=8), **kw),
             "transformer": lambda **kw: Transformer(input_shape=(8, 8, 1), num_outputs=3, d_model=8, patch=4, **kw)}
    with pytest.raises(ModelError) as by_class:
        build[make](**args)
    model_file = {"resnet": "dense", "parareal": "parareal", "transformer": "transformer"}[make]
    with pytest.raises(ConfigError) as by_run:
        check_config(compose_config([f"model={model_file}", f"++model.{option}"]))
    assert str(by_class.value) == str(by_run.value) and "\n" not in str(by_class.value)



@pytest.mark.parametrize("key, value, override", [
    ("name", "gpu", "parallel.name=gpu"), ("data", 0, "parallel.data=0"),
    ("processes", True, "parallel.processes=true"),
    ("heartbeat_s", 0, "parallel.heartbeat_s=0"), ("coordinator", 3, "parallel.coordinator=3"),
    ("process_id", -1, "parallel.process_id=-1"),
])
def test_the_processor_grid_checks_its_options_by_the_schemas_fields(key, value, override):
    """A grid a library user builds is refused with the run's one line for the same option (ranges and messages
    defined once, in lpt.config.run.ParallelOptions)."""
    from lpt.parallel.grid import GridError, ProcessorGrid

    with pytest.raises(GridError) as by_class:
        ProcessorGrid(**{"backend" if key == "name" else key: value})
    with pytest.raises(ConfigError) as by_run:
        check_config(compose_config(["parallel=mesh", f"++{override}"]))
    assert str(by_class.value) == str(by_run.value) and "\n" not in str(by_class.value)


@pytest.mark.parametrize("key, value, override", [
    ("cfactor", 1, "solver.cfactor=1"), ("max_levels", 0, "solver.max_levels=0"), ("nrelax", -1, "solver.nrelax=-1"),
    ("cycle", "W", "solver.cycle=W"), ("abs_tol", -1.0, "solver.abs_tol=-1.0"),
    ("restrict", "mean", "solver.restrict=mean"),
])
def test_the_mgrit_options_check_their_options_by_the_schemas_fields(key, value, override):
    """MGRITOptions a library user builds are refused with the run's one line for the same option (ranges and
    messages defined once, in lpt.config.run.MGRITSolverOptions)."""
    from lpt.mgrit.options import MGRITOptions

    with pytest.raises(ValueError) as by_class:
        MGRITOptions(**{key: value})
    with pytest.raises(ConfigError) as by_run:
        check_config(compose_config(["solver=mgrit", f"++{override}"]))
    assert str(by_class.value) == str(by_run.value) and "\n" not in str(by_class.value)

def test_choice_lists_have_one_definition():
    """lpt.config.choices holds the choice lists the schema offers; the modules that implement them use the same
    (lpt.mgrit and lpt.parallel import theirs from lpt.config.choices: one list each, no copy)."""
    from lpt.config import choices
    from lpt.mgrit import options
    from lpt.model import ACTIVATIONS, conv, layers
    from lpt.parallel import grid

    assert tuple(sorted(ACTIVATIONS)) == choices.ACTIVATION_NAMES
    assert layers.LAYER_KINDS is choices.LAYER_KINDS and conv.CONV_IMPLS is choices.CONV_IMPLS
    assert conv.CONV_LAYOUTS is choices.CONV_LAYOUTS
    assert options.CYCLES is choices.CYCLES and options.RESTRICTIONS is choices.RESTRICTIONS
    assert grid.BACKENDS is choices.BACKENDS


def test_no_code_outside_the_schema_repeats_an_options_default():
    """Code that reads an option from a configuration built by hand (``cfg.get(key, default)``, or a local
    ``get(key, default)``) takes the default
    from the schema (``RunOptions.seed``), never a literal copy of it (``cfg.get("seed", 0)``), which would drift
    when the schema's default changes. Not counted: an empty string (a table's blank for a missing value) and a
    mesh's axis sizes (``mesh.shape.get("data", 1)``), which are no options."""

    names = {f.name for _, _, node in schema_nodes() for f in dataclasses.fields(node)}
    value = r"""-?[0-9][0-9.e]*|["'][^"']+["']|True|False"""
    literal = re.compile(rf"""([\w.]*)\bget\(\s*["']([a-z_]+)["']\s*,\s*({value})\s*\)""")
    found = [f"{path.relative_to(ROOT)}: {owner}get({key!r}, {value})"
             for path in sorted((ROOT / "lpt").rglob("*.py")) if "config" not in path.parent.name
             for owner, key, value in literal.findall(path.read_text())
             if key in names and not owner.endswith("shape.")]
    assert not found, f"literal defaults of schema options: {found}"


def _library_defaults():
    """(class, schema, {class field: schema field}) of the library classes whose options are the run's: every
    field with a default that has a schema field of its name (or of the name in ``renamed``), but those whose
    meaning differs from the run's option (``differs``) and those whose default is None (nothing to copy)."""
    from lpt.config.groups import ParaRealModel, ResNetModel, TransformerModel
    from lpt.config.run import MGRITSolverOptions, ParallelOptions, TrainOptions
    from lpt.mgrit.control import Control
    from lpt.mgrit.options import MGRITOptions
    from lpt.mgrit.training import MGRITSolver
    from lpt.model import ResNet
    from lpt.model.parareal import ParaRealNet
    from lpt.model.transformer import Transformer
    from lpt.parallel.grid import ProcessorGrid
    from lpt.train.build import LoopSettings

    control = {n: f"control_{n}" for n in ("tol", "max_iters", "every", "min_cos", "tightenings")}
    cases = [(ResNet, ResNetModel, {}, ()), (Transformer, TransformerModel, {}, ()),
             (ParaRealNet, ParaRealModel, {}, ()), (ProcessorGrid, ParallelOptions, {"backend": "name"}, ()),
             (LoopSettings, TrainOptions, {}, ()), (Control, MGRITSolverOptions, {"kind": "control", **control}, ()),
             # one solve's nrelax_fine None means nrelax; the solver's warm_start is resolved (no "auto"), its
             # control an object
             (MGRITOptions, MGRITSolverOptions, {}, ("nrelax_fine",)),
             (MGRITSolver, MGRITSolverOptions, {}, ("warm_start", "control"))]
    out = []
    for cls, schema, renamed, differs in cases:
        options = {f.name for f in dataclasses.fields(schema)}
        names = {f.name: renamed.get(f.name, f.name) for f in dataclasses.fields(cls)
                 if renamed.get(f.name, f.name) in options and f.name not in differs
                 and f.default is not dataclasses.MISSING and f.default is not None}
        out.append((cls, schema, names))
    return out


@pytest.mark.parametrize("cls, schema, names", _library_defaults(), ids=lambda v: getattr(v, "__name__", ""))
def test_library_classes_take_the_schemas_defaults(cls, schema, names):
    """A model, solver or grid built in Python without an option gets the run's default of that option: the
    class's default is the schema field (``depth: int = ResNetModel.depth``), defined once. (Where one solve's
    option means something else than the run's, e.g. ``MGRITOptions.max_iter`` = 2 cycles of one solve, or
    ``nrelax_fine`` None = ``nrelax``, it is not listed.)"""
    assert names, cls.__name__
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    source = Path(sys.modules[cls.__module__].__file__).read_text()
    for attr, name in names.items():
        assert defaults[attr] == getattr(schema, name), (cls.__name__, attr)
        assert re.search(rf"^    {attr}: [^=\n]+ = {schema.__name__}\.{name}\b", source, re.M), (cls.__name__, attr)
