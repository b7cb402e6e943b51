"""The config schema's `train` and `model` blocks match `TrainConfig` and `ModelConfig` field for
field: the schema copies them by hand (workflow/schemas/config.schema.yaml, documented key by key
in config/README.md), so a field added to, renamed in or retyped in a dataclass fails here
instead of at `snakemake` time."""

import dataclasses
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml

from recpar.model.config import ModelConfig
from recpar.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
README = (ROOT / "config/README.md").read_text()

TRAIN_PROPS = SCHEMA["properties"]["train"]["properties"]
MODEL_OVERRIDE_PROPS = SCHEMA["properties"]["model"]["properties"]["overrides"]["properties"]

NOT_OVERRIDABLE = {"text_dim"}
"""ModelConfig fields deliberately left out of `model.overrides`: `text_dim` is the width of the
item-text embeddings on disk; the training loop sets it from them (0 with --no-text) and would
overwrite any override."""

# (schema block, dataclass, fields the block leaves out on purpose)
BLOCKS = {
    "train": (TRAIN_PROPS, TrainConfig, set()),
    "model.overrides": (MODEL_OVERRIDE_PROPS, ModelConfig, NOT_OVERRIDABLE),
}

SCALARS = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _fields(cls, leave_out: set[str]) -> dict[str, object]:
    """{name: resolved type} of the dataclass's fields, minus `leave_out`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in leave_out}


def _type_problem(name: str, py_type, prop: dict) -> str | None:
    """Why schema property `prop` does not describe a value of `py_type`, or None."""
    if "enum" in prop:
        wrong = [v for v in prop["enum"] if type(v) is not py_type]
        return (f"{name}: enum values {wrong} are not {py_type.__name__}" if wrong else None)
    if typing.get_origin(py_type) is tuple:
        args = typing.get_args(py_type)
        want = {"type": "array", "minItems": len(args), "maxItems": len(args)}
        got = {k: prop.get(k) for k in want}
        item_types = {SCALARS[a] for a in args}
        if got != want or len(item_types) != 1 or prop.get("items", {}).get("type") not in item_types:
            return f"{name}: {py_type} wants an array of {len(args)} {item_types}, schema {prop}"
        return None
    args = typing.get_args(py_type)
    if type(None) in args:  # `X | None`: the schema's type is [X's, "null"]
        (inner,) = [a for a in args if a is not type(None)]
        want = [SCALARS[inner], "null"]
        if prop.get("type") != want:
            return f"{name}: {py_type} wants type {want!r}, schema says {prop.get('type')!r}"
        return None
    want = SCALARS[py_type]
    if prop.get("type") != want:
        return f"{name}: {py_type.__name__} wants type {want!r}, schema says {prop.get('type')!r}"
    return None


@pytest.mark.parametrize("block", BLOCKS)
def test_schema_keys_are_the_dataclass_fields(block):
    props, cls, leave_out = BLOCKS[block]
    fields = _fields(cls, leave_out)
    missing = sorted(set(fields) - set(props))
    extra = sorted(set(props) - set(fields))
    assert not missing and not extra, (
        f"workflow/schemas/config.schema.yaml `{block}` vs {cls.__name__}: "
        f"missing from the schema: {missing or 'none'}; in the schema but not a field: "
        f"{extra or 'none'} (update the schema and config/README.md)")


@pytest.mark.parametrize("block", BLOCKS)
def test_schema_types_are_the_dataclass_field_types(block):
    props, cls, leave_out = BLOCKS[block]
    fields = _fields(cls, leave_out)
    problems = [p for name, t in fields.items() if name in props
                if (p := _type_problem(name, t, props[name]))]
    assert not problems, f"`{block}` vs {cls.__name__}: " + "; ".join(problems)


@pytest.mark.parametrize("block", BLOCKS)
def test_dataclass_defaults_are_valid_under_the_schema(block):
    """The schema's bounds admit the values the dataclasses ship with."""
    props, cls, leave_out = BLOCKS[block]
    default = cls()
    bad = []
    for name in _fields(cls, leave_out):
        if name not in props:
            continue
        value = getattr(default, name)
        value = list(value) if isinstance(value, tuple) else value
        try:
            jsonschema.validate(value, props[name])
        except jsonschema.ValidationError as e:
            bad.append(f"{name}={value!r}: {e.message}")
    assert not bad, f"`{block}` rejects {cls.__name__}'s defaults: " + "; ".join(bad)


def test_readme_documents_every_train_field_and_model_override():
    train = [n for n in _fields(TrainConfig, set()) if f"`train.{n}`" not in README]
    overrides_row = next(line for line in README.splitlines()
                         if line.startswith("| `model.overrides`"))
    model = [n for n in _fields(ModelConfig, NOT_OVERRIDABLE) if f"`{n}`" not in overrides_row]
    assert not train and not model, (
        f"config/README.md does not document train.{train} / model.overrides {model}")
