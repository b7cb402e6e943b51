"""Quality table: HR@10 / NDCG@10 per run id, aggregated over seeds (mean ± std)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from recpar.report.metrics import PROTOCOLS, QUALITY_METRICS
from recpar.train import record


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def quality_table(paths: list[str | Path], split: str = "test") -> str:
    """Markdown table, one row per run id; every record is schema-validated on read."""
    by_run: dict[str, list[dict]] = defaultdict(list)
    for p in paths:
        rec = record.read(p)
        by_run[rec["run_id"]].append(rec)
    header = ["run", "seeds"] + [f"{m.replace('_at_', '@').upper()} ({proto})"
                                 for proto in PROTOCOLS for m in QUALITY_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run_id, recs in by_run.items():
        cells = [run_id, str(len(recs))]
        for proto in PROTOCOLS:
            for m in QUALITY_METRICS:
                cells.append(_fmt([r["quality"][split][proto][m] for r in recs]))
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(by_run.values()))[0]
    n = first["quality"][split]["full"]["n_examples"]
    commits = sorted({(r["git"]["commit"] or "unknown")[:12] for rs in by_run.values() for r in rs})
    lines += [
        "",
        f"Split `{split}` of `{first['dataset']['source']}` ({n} scored interactions). "
        "`full`: target ranked against all items (earlier history masked); `sampled100`: target "
        "vs 100 uniformly sampled never-interacted items. Measured, "
        f"commit {', '.join(commits)}, {first['hardware']['cpu_model']}, "
        f"topology {first['topology']['kind']}.",
    ]
    return "\n".join(lines) + "\n"
