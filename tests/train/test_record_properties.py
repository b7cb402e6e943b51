"""Property-based tests (hypothesis) of the run-record schema, on the published records: every
record survives a write/read round trip unchanged, and a metric turned into a non-number, a
required field dropped or a hostname added is refused with the field named."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recpar.train import record

EXAMPLES = 300
"""Examples per property."""
PUBLISHED = sorted((Path(__file__).resolve().parents[2] / "paper_tables").rglob("record.json"))
RECORDS = [json.loads(p.read_text()) for p in PUBLISHED]
REQUIRED = json.loads(record.SCHEMA_PATH.read_text())["required"]

a_record = st.sampled_from(range(len(RECORDS)))


def test_there_are_published_records_to_draw_from():
    assert len(RECORDS) >= 10


@settings(max_examples=EXAMPLES, deadline=None)
@given(a_record)
def test_write_then_read_gives_the_same_record(tmp_path_factory, i):
    path = tmp_path_factory.mktemp("rec") / "record.json"
    record.write(RECORDS[i], path)
    assert record.read(path) == RECORDS[i]


@settings(max_examples=EXAMPLES, deadline=None)
@given(a_record, st.data())
def test_a_metric_that_is_not_a_number_is_refused_naming_it(i, data):
    rec = copy.deepcopy(RECORDS[i])
    key = data.draw(st.sampled_from(sorted(rec["metrics"])))
    rec["metrics"][key] = data.draw(st.text(min_size=1, max_size=8))
    with pytest.raises(record.RecordError, match=f"at metrics/{key}: "):
        record.validate(rec, "r.json")


@settings(max_examples=EXAMPLES, deadline=None)
@given(a_record, st.sampled_from(REQUIRED))
def test_a_missing_required_field_is_refused_naming_it(i, field):
    rec = copy.deepcopy(RECORDS[i])
    del rec[field]
    with pytest.raises(record.RecordError, match=f"'{field}' is a required property"):
        record.validate(rec, "r.json")


@settings(max_examples=EXAMPLES, deadline=None)
@given(a_record, st.sampled_from(["hostname", "hostnames"]), st.text(min_size=1, max_size=20))
def test_a_hostname_in_the_topology_is_refused(i, key, value):
    rec = copy.deepcopy(RECORDS[i])
    rec["topology"][key] = value
    with pytest.raises(record.RecordError, match="at topology: "):
        record.validate(rec, "r.json")
