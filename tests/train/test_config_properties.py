"""Property-based tests (hypothesis): the workflow's config schema and the typed configs agree.

Values are generated from workflow/schemas/config.schema.yaml itself (its `train` and
`model.overrides` properties), so a key added to one side only is caught:
- every schema-valid `train` mapping loads into TrainConfig;
- every mapping with one key out of the schema's range is refused by both, and TrainConfig's
  message names that key;
- every schema-valid set of model overrides builds a ModelConfig or fails naming one of the keys
  it was given (d_model divisible by n_heads is a rule across keys the schema cannot state).
"""

from __future__ import annotations

import math
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from recpar.model.config import ModelConfig
from recpar.train.config import ConfigError, TrainConfig

EXAMPLES = 300
"""Examples per property."""
SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[2] / "workflow" / "schemas"
                         / "config.schema.yaml").read_text())
TRAIN = SCHEMA["properties"]["train"]["properties"]
OVERRIDES = SCHEMA["properties"]["model"]["properties"]["overrides"]["properties"]


def _valid(spec: dict) -> st.SearchStrategy:
    """Values the schema accepts for one property (numbers kept to sizes a run could use)."""
    if "enum" in spec:
        return st.sampled_from(spec["enum"])
    if "not" in spec:  # `not: {const: c}`: every value of the rest but c
        rest = {k: v for k, v in spec.items() if k != "not"}
        return _valid(rest).filter(lambda v: v != spec["not"]["const"])
    if isinstance(spec["type"], list):  # e.g. [number, "null"]
        (kind,) = [t for t in spec["type"] if t != "null"]
        return st.none() | _valid({**spec, "type": kind})
    kind = spec["type"]
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(_valid(spec["items"]), min_size=spec["minItems"],
                        max_size=spec["maxItems"])
    lo = spec.get("minimum", spec.get("exclusiveMinimum", 0))
    if kind == "integer":
        lo = lo + 1 if "exclusiveMinimum" in spec else lo
        return st.integers(min_value=lo, max_value=lo + 10_000)
    hi = spec.get("maximum", spec.get("exclusiveMaximum", lo + 1e4))
    return st.floats(min_value=lo, max_value=hi, allow_nan=False,
                     exclude_min="exclusiveMinimum" in spec,
                     exclude_max="exclusiveMaximum" in spec)


def _out_of_range(spec: dict) -> st.SearchStrategy | None:
    """Values the schema refuses for one numeric property (None for enums and booleans)."""
    if spec.get("type") not in ("integer", "number"):
        return None
    if "exclusiveMinimum" in spec:
        bound = spec["exclusiveMinimum"]
        return st.integers(min_value=int(math.floor(bound)) - 100, max_value=int(bound)) \
            if spec["type"] == "integer" else st.floats(max_value=bound, min_value=bound - 100)
    bound = spec["minimum"]
    return st.integers(min_value=bound - 100, max_value=bound - 1) if spec["type"] == "integer" \
        else st.floats(min_value=bound - 100, max_value=bound, exclude_max=True)


def _schema_ok(props: dict, values: dict) -> bool:
    try:
        jsonschema.validate(values, {"type": "object", "properties": props,
                                     "additionalProperties": False})
    except jsonschema.ValidationError:
        return False
    return True


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: _valid(v) for k, v in TRAIN.items()}))
def test_every_schema_valid_train_mapping_loads(values):
    assert _schema_ok(TRAIN, values)
    cfg = TrainConfig.from_mapping(values)
    for k, v in values.items():
        assert getattr(cfg, k) == (tuple(v) if k == "betas" else v)


BOUNDED = sorted(k for k, v in TRAIN.items() if _out_of_range(v) is not None)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(BOUNDED).flatmap(
    lambda k: st.tuples(st.just(k), _out_of_range(TRAIN[k]))))
def test_a_train_value_out_of_range_is_refused_by_both_naming_the_key(key_value):
    key, value = key_value
    assert not _schema_ok(TRAIN, {key: value})
    with pytest.raises(ConfigError, match=f"train.{key} "):
        TrainConfig.from_mapping({key: value})


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.floats(min_value=1.0, max_value=10.0), min_size=2, max_size=2))
def test_betas_outside_zero_one_are_refused_by_both(betas):
    assert not _schema_ok(TRAIN, {"betas": betas})
    with pytest.raises(ConfigError, match="train.betas must be two numbers in"):
        TrainConfig.from_mapping({"betas": betas})


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: _valid(v) for k, v in OVERRIDES.items()}))
def test_schema_valid_model_overrides_build_or_fail_naming_a_given_key(overrides):
    assume(overrides.get("d_model", 1) <= 4096 and overrides.get("n_heads", 1) <= 4096)
    assert _schema_ok(OVERRIDES, overrides)
    try:
        cfg = ModelConfig.named("tiny", **overrides)
    except ValueError as e:
        assert any(f"{k}=" in str(e) or f"{k} " in str(e) for k in overrides), str(e)
        return
    for k, v in overrides.items():
        assert getattr(cfg, k) == v
