import re
import copy
import json

import pytest

from recpar.train import record
from recpar.train.record import RecordError


def make_record(run_id="baseline-tiny-n1", seed=0, hr=0.1, ndcg=0.05):
    q = {"hr_at_10": hr, "ndcg_at_10": ndcg, "n_examples": 100, "protocol": "full"}
    return {
        "schema_version": 1, "run_id": run_id, "scheme": "baseline", "status": "completed",
        "created_utc": record.utc_now(),
        "config": {"model": {"d_model": 64}, "train": {"lr": 0.001}},
        "plan": {"scheme": "baseline", "dp": 1, "tp": 1, "pp": 1, "world_size": 1},
        "topology": {"kind": "local", "nodes": 1, "ranks_per_node": 1},
        "dataset": {"source": "movielens-100k", "path": "results/data/x", "stats": {"users": 3}},
        "versions": record.versions(), "git": {"commit": "a" * 40, "dirty": False},
        "hardware": record.hardware("cpu"), "seed": seed,
        "timing": {"warmup_steps": 1, "timed_steps": 2, "window_start_utc": None,
                   "window_end_utc": None, "window_s": None, "device_sync": "none"},
        "metrics": {"throughput_samples_per_s": 10.0, "comm_ms_per_iter": 0.0},
        "quality": {"test": {"full": q, "sampled100": {**q, "protocol": "sampled100"}}},
    }


def test_environment_facts_are_complete_and_hostname_free():
    rec = make_record()
    record.validate(rec)
    blob = json.dumps(rec)
    import socket
    assert socket.gethostname() not in blob
    assert rec["versions"]["torch"] and rec["hardware"]["logical_cpus"] >= 1


def test_write_then_read_round_trip(tmp_path):
    rec = make_record()
    path = record.write(rec, tmp_path / "r" / "record.json")
    assert record.read(path) == rec
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temp file left


@pytest.mark.parametrize("mutate, where", [
    (lambda r: r.pop("seed"), "(top level)"),
    (lambda r: r["plan"].update(dp=0), "plan/dp"),
    (lambda r: r["metrics"].update({"throughput": "fast"}), "metrics/throughput"),
    (lambda r: r["topology"].update(hostname="node7"), "topology"),
    (lambda r: r["quality"]["test"]["full"].update(hr_at_10=1.5), "quality/test/full/hr_at_10"),
    (lambda r: r.update(extra=1), "(top level)"),
])
def test_invalid_record_is_refused_on_write_with_the_field(tmp_path, mutate, where):
    rec = copy.deepcopy(make_record())
    mutate(rec)
    with pytest.raises(RecordError, match=f"at {re.escape(where)}"):
        record.write(rec, tmp_path / "record.json")
    assert not (tmp_path / "record.json").exists()


def test_read_names_the_file(tmp_path):
    bad = tmp_path / "record.json"
    bad.write_text("{not json")
    with pytest.raises(RecordError, match=f"{re.escape(str(bad))}: not valid JSON"):
        record.read(bad)
    with pytest.raises(RecordError, match="not found"):
        record.read(tmp_path / "missing.json")
    rec = make_record()
    del rec["metrics"]
    bad.write_text(json.dumps(rec))
    with pytest.raises(RecordError, match=f"{re.escape(str(bad))}: invalid run record"):
        record.read(bad)


def test_git_state_outside_a_checkout(tmp_path):
    assert record.git_state(tmp_path) == {"commit": None, "dirty": None}
