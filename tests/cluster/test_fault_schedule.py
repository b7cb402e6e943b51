"""Fault schedule parsing and validation (no root needed)."""

import pytest

from recpar.cluster.fault import load_schedule


def _write(tmp_path, text):
    p = tmp_path / "faults.yaml"
    p.write_text(text)
    return p


def test_load_schedule_parses_units_and_sorts(tmp_path):
    p = _write(tmp_path, """
- {at_s: 10, action: straggler, args: {node: 0, slowdown: 2, duration_s: 5s}}
- {at_s: 2, action: link, args: {node: 1, rate: 50mbit, loss: 1%, latency: 3ms}}
- {at_s: 20, action: reset-link, args: {node: 1}}
- {at_s: 30, action: kill-rank, args: {node: 1, local_rank: 1}}
""")
    ev = load_schedule(p)
    assert [e.action for e in ev] == ["link", "straggler", "reset-link", "kill-rank"]
    assert ev[0].args == {"node": 1, "rate": 5e7, "loss": pytest.approx(0.01),
                          "latency": pytest.approx(0.003)}
    assert ev[1].args["duration_s"] == 5.0


@pytest.mark.parametrize("text,msg", [
    ("{at_s: 1}", "YAML list"),
    ("- {at_s: 1, action: explode, args: {node: 0}}", r"\[0\]: action 'explode'"),
    ("- {at_s: -1, action: reset-link, args: {node: 0}}", "at_s must be >= 0"),
    ("- {at_s: x, action: reset-link, args: {node: 0}}", "at_s 'x'"),
    ("- {at_s: 1, action: straggler, args: {node: 0}}", "needs duration_s, slowdown"),
    ("- {at_s: 1, action: link, args: {node: 0, speed: 1}}", "does not take speed"),
    ("- {at_s: 1, action: link, args: {node: 0, rate: fast}}", r"\[0\]\.args\.rate"),
    ("- {at_s: 1, action: kill-rank, args: {node: -2}}", "args.node"),
    ("- {at_s: 1, action: link, when: now, args: {node: 0}}", "unknown key"),
    ("- [unclosed", "not valid YAML"),
])
def test_bad_schedules_name_file_entry_and_value(tmp_path, text, msg):
    p = _write(tmp_path, text)
    with pytest.raises(ValueError, match=msg) as e:
        load_schedule(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="fault schedule not found"):
        load_schedule(tmp_path / "nope.yaml")


def test_run_schedule_writes_its_log_as_each_event_happens(tmp_path):
    """The launcher's log (what a run's record reads): every event with when it was applied
    and whether it worked; a failing event is logged, not raised."""
    import json
    import threading
    import time
    from recpar.cluster.fault import parse_event, run_schedule
    from recpar.cluster.shaping import LinkShape
    from recpar.cluster.state import ClusterState

    # No cluster: a kill-rank on a namespace that does not exist finds no rank and fails.
    shape = LinkShape(1e8).to_dict()
    state = ClusterState(prefix="rpnone", nodes=1, ranks_per_node=1, base_shape=shape,
                         node_shapes=[shape], netem=False, created_unix_s=0.0)
    events = [parse_event({"at_s": 0.0, "action": "kill-rank", "args": {"node": 0}}, "e0"),
              parse_event({"at_s": 0.2, "action": "kill-rank", "args": {"node": 0}}, "e1")]
    path = tmp_path / "faults.json"
    t0 = time.time()
    log = run_schedule(state, events, threading.Event(), log_path=path)
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(log)) and len(written) == 2
    assert [e["ok"] for e in written] == [False, False]
    assert "no rank with local_rank 0 is running on node 0" in written[0]["error"]
    assert t0 <= written[0]["unix_s"] < written[1]["unix_s"] <= time.time()
    assert written[1]["started_s"] >= 0.2
