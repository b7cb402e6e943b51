from pathlib import Path

from recpar.report import figures, paper, projection, records
from tests.report.record_factory import make_run

PAPER = paper.load("paper_tables/paper.yaml")
PROJ = projection.Projection({"dp": {"comm_share_pct": 10.0}}, {(2, "dp"): {"speedup": 12.0}}, "t")


def _rs(runs):
    return records.group([(f"r{i}.json", r) for i, r in enumerate(runs)])


def test_figures_are_drawn_from_measured_rows(tmp_path):
    rs = _rs([make_run("baseline", throughput=100),
              make_run("dp", dp=2, throughput=180, comm_ms=10, exposed_ms=5),
              make_run("dp", dp=4, nodes=2, throughput=300, comm_ms=20)])
    drawn, skipped = figures.draw_all(rs, PAPER, PROJ, tmp_path)
    names = {p.name for p in drawn}
    assert names == {"comm_share.png", "speedup_vs_nodes.png"}
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in drawn)
    assert [s[0] for s in skipped] == ["utilisation_memory.png"] and "4 nodes" in skipped[0][1]


def test_a_figure_without_measured_data_is_not_drawn(tmp_path):
    rs = _rs([make_run("baseline")])  # paper values and projections alone draw nothing
    drawn, skipped = figures.draw_all(rs, PAPER, PROJ, tmp_path)
    assert drawn == [] and len(skipped) == 3
    assert "no parallel record" in dict(skipped)["comm_share.png"]
    # each one's place holds a card saying why (so the workflow can declare every file)
    assert sorted(p.name for p in Path(tmp_path).glob("*.png")) == sorted(figures.FIGURE_FILES)
