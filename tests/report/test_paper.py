import copy
import re

import pytest
import yaml

from recpar.report import paper
from recpar.report.paper import PaperError, Tolerance

PAPER_YAML = "paper_tables/paper.yaml"


def _raw() -> dict:
    with open(PAPER_YAML) as f:
        return yaml.safe_load(f)


def test_committed_paper_yaml_validates_and_holds_the_published_numbers():
    p = paper.load(PAPER_YAML)
    assert p.table2_value("dp", "throughput_samples_per_s").value == 3400
    assert p.table2_value("mp", "speedup").value == 2.8
    assert p.table2_value("baseline", "comm_ms_per_iter").value == 5.2
    assert p.table3(4, "hybrid")["speedup"].value == 14.6
    assert p.table3(1, "dp") is None  # the paper's "—"
    assert p.q("fig4.comm_share_pct.mp").value == 42
    assert p.q("table1.values.train").value == 1735654
    assert p.table2_row("deepspeed")["values"] == {}  # named in §IV.B, no row in Table II
    for scheme in ("baseline", "dp", "mp", "hybrid"):
        q = p.table2_value(scheme, "speedup")
        assert q.unit and q.where and q.tolerance.reason


@pytest.mark.parametrize("mutate, key", [
    # (YAML anchors share nested dicts: replace them rather than edit them in place.)
    (lambda d: d["table2"]["rows"]["dp"]["values"]["speedup"].update(
        tolerance={"kind": "relative", "value": 0.1}), "table2/rows/dp/values/speedup/tolerance"),
    (lambda d: d["table3"]["rows"][4].update(speedup={**d["table3"]["rows"][4]["speedup"],
                                                      "value": "fast"}),
     "table3/rows/4/speedup/value"),
    (lambda d: d["fig4"]["comm_share_pct"]["mp"].update(
        tolerance={**d["fig4"]["comm_share_pct"]["mp"]["tolerance"], "kind": "roughly"}),
     "fig4/comm_share_pct/mp/tolerance/kind"),
    (lambda d: d.pop("abstract"), "(top level)"),
])
def test_broken_copy_fails_naming_the_key(tmp_path, mutate, key):
    d = copy.deepcopy(_raw())
    mutate(d)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(PaperError, match=re.escape(f"{path}: invalid at {key}:")):
        paper.load(path)


def test_missing_and_unparsable_files_are_named(tmp_path):
    with pytest.raises(PaperError, match="not found"):
        paper.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(PaperError, match=f"{bad}: not valid YAML"):
        paper.load(bad)


def test_tolerance_edges():
    rel = Tolerance("relative", 0.10, "ten percent")
    assert rel.met(3.06, 3.4) and rel.met(3.74, 3.4)  # exactly on both edges
    assert not rel.met(3.0599, 3.4) and rel.miss(3.0, 3.4) == pytest.approx(0.06)
    ab = Tolerance("absolute", 0.01, "one hundredth")
    assert ab.met(0.331, 0.321) and not ab.met(0.3311, 0.321)
    least = Tolerance("at_least", 0.0, "a lower bound")
    assert least.met(30.0, 30.0) and least.met(1e6, 30.0) and not least.met(29.99, 30.0)
    most = Tolerance("at_most", 1.0, "an upper bound")
    assert most.met(2.0, 1.0) and not most.met(2.01, 1.0)
