"""Tables II-III projected for the paper's cluster by recpar.perfmodel (profile from
paper.yaml, the perfmodel's default projection settings): labelled projected, never mixed
with measured values."""

from __future__ import annotations

from dataclasses import dataclass

from recpar.report.paper import Paper


@dataclass
class Projection:
    """perfmodel's projection of Tables II-III on the paper's cluster (kind: projected)."""

    table2: dict[str, dict]
    """scheme -> projected row (one node)."""
    table3: dict[tuple[int, str], dict]
    """(nodes, scheme) -> projected row."""
    caption: str
    """What it was projected for (hardware, model size, batch)."""
    error: str | None = None
    """Why there is no projection, when there is none."""


def project(paper: Paper) -> Projection:
    """Project on the paper's hardware profile; a failure leaves an empty, explained projection."""
    from recpar.perfmodel.hardware import ProfileError, load_profile
    from recpar.perfmodel.predict import ProjectionSettings, project_paper_tables
    from recpar.perfmodel.shapes import CostInputError

    try:
        hw = load_profile(paper.profile)
        settings = ProjectionSettings(nodes=tuple(paper.table3_nodes()))
        res = project_paper_tables(hw, settings)
    except (CostInputError, ProfileError) as e:
        return Projection({}, {}, "", error=f"no projection: {e}")
    a = res["assumptions"]
    caption = (f"projected by recpar.perfmodel on `{a['hardware']}` for model size "
               f"`{a['model_size']}` ({a['trainable_params'] / 1e6:.0f} M parameters), "
               f"{a['batch_per_gpu']} sequences per GPU per step, {a['num_microbatches']} "
               "micro-batches; conditional on these choices (the paper states none)")
    return Projection(table2={r["scheme"]: r for r in res["table2"]},
                      table3={(r["nodes"], r["scheme"]): r for r in res["table3"]},
                      caption=caption)
