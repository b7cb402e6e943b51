import copy

from recpar.report import audit, paper
from recpar.report.audit import CONSISTENT, INCONSISTENT, QUESTIONABLE

PAPER = paper.load("paper_tables/paper.yaml")


def _by_id(p) -> dict[str, audit.Finding]:
    return {f.id: f for f in audit.audit(p)}


def _with(mutate) -> paper.Paper:
    data = copy.deepcopy(PAPER.data)
    mutate(data)
    paper.validate(data)
    return paper.Paper(data=data, path="planted.yaml")


def test_findings_on_the_published_numbers():
    f = _by_id(PAPER)
    assert f["A1"].status == CONSISTENT  # throughput / 1,000 = speedup everywhere
    assert f["A2"].status == INCONSISTENT and "mp" in f["A2"].detail
    assert f["A4"].status == INCONSISTENT and "+11.8 %" in f["A4"].detail
    assert f["A5"].status == INCONSISTENT
    assert f["A6"].status == INCONSISTENT and "36" in f["A6"].detail
    assert f["A8"].status == QUESTIONABLE
    assert f["A10"].status == CONSISTENT and f["A11"].status == INCONSISTENT
    assert "2,169,567" in f["A11"].detail


def test_a_planted_speedup_that_does_not_match_its_throughput_is_found():
    def plant(d):
        row = d["table2"]["rows"]["dp"]["values"]
        row["speedup"] = {**row["speedup"], "value": 3.0}
    f = _by_id(_with(plant))
    assert f["A1"].status == INCONSISTENT
    assert "Table II dp: 3,400/1,000 = 3.400× but speedup 3×" in f["A1"].detail


def test_removing_an_inconsistency_makes_the_check_pass():
    def fix(d):
        d["fig4"]["also_stated"]["dp_discussion"] = {**d["fig4"]["also_stated"]["dp_discussion"],
                                                     "value": 35}
        hyb = d["table2"]["rows"]["hybrid"]["values"]
        hyb["throughput_samples_per_s"] = {**hyb["throughput_samples_per_s"], "value": 4500}
        hyb["speedup"] = {**hyb["speedup"], "value": 4.5}
    f = _by_id(_with(fix))
    assert f["A6"].status == CONSISTENT
    assert "Table II: +32.4 %" in f["A4"].detail  # 4,500 / 3,400; Table III still +14.1 %
    assert f["A4"].status == INCONSISTENT


def test_markdown_counts():
    md = audit.audit_markdown(audit.audit(PAPER), PAPER)
    n = sum(f.status == INCONSISTENT for f in audit.audit(PAPER))
    assert f"{n} inconsistent" in md and "| A1 |" in md
