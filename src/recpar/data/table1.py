"""Table I (dataset statistics) as markdown: the paper's row beside each prepared source."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import yaml

from recpar.data.errors import DataError
from recpar.data.split import split_sizes

# Shape of the 5-core Electronics file of the McAuley et al. 2014 release (published with the
# data; the real numbers are what `recpar data prepare --source amazon-electronics-2014` prints)
RELEASE_2014_5CORE = {"users": 192_403, "items": 63_001, "reviews": 1_689_188}
AMAZON_2014 = "amazon-electronics-2014"  # the source that downloads that file

PAPER_KEYS = ("users", "items", "train", "valid", "test")
STATS_KEYS = ("source", "users", "items", "train", "valid", "test")


def load_paper_table1(path: str | Path | None = None) -> dict:
    """Paper values of Table I (default: the packaged paper_table1.yaml)."""
    if path is None:
        text = resources.files("recpar.data").joinpath("paper_table1.yaml").read_text()
        where = "recpar/data/paper_table1.yaml"
    else:
        text, where = Path(path).read_text(), str(path)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(values, dict):
        raise DataError(f"{where}: expected a mapping")
    missing = [k for k in PAPER_KEYS if not isinstance(values.get(k), int)]
    if missing:
        raise DataError(f"{where}: missing or non-integer key(s) {', '.join(missing)}")
    return values


def _row(label: str, s: Mapping) -> str:
    total = s["train"] + s["valid"] + s["test"]
    return (f"| {label} | {s['users']:,} | {s['items']:,} | {s['train']:,} | {s['valid']:,} "
            f"| {s['test']:,} | {total:,} |")


def _pct(a: int, b: int) -> str:
    return f"{100.0 * (a - b) / b:+.1f} %" if b else "n/a"


def render(stats_by_source: Mapping[str, Mapping], paper: Mapping | None = None) -> str:
    """Markdown: the paper's Table I row, one row per source (label -> stats.json dict), notes."""
    paper = dict(paper) if paper is not None else load_paper_table1()
    for label, s in stats_by_source.items():
        missing = [k for k in STATS_KEYS if k not in s]
        if missing:
            raise DataError(f"stats for {label!r}: missing key(s) {', '.join(missing)}")
    p_total = paper["train"] + paper["valid"] + paper["test"]
    lines = [
        "| Dataset | # Users | # Items | Train | Valid | Test | Total |",
        "|---|---:|---:|---:|---:|---:|---:|",
        _row(f"{paper.get('dataset', 'Amazon Electronics')} (paper, "
             f"{paper.get('source', 'Table I')})", paper),
    ]
    for label, s in stats_by_source.items():
        lines.append(_row(label, s))
    rel = RELEASE_2014_5CORE
    rule_ok = split_sizes(p_total) == (paper["train"], paper["valid"], paper["test"])
    lines += [
        "",
        "Notes:",
        "",
        f"- The 5-core Electronics file of the 2014 Amazon release (McAuley et al.) has, by "
        f"its published counts, {rel['users']:,} users, {rel['items']:,} items and "
        f"{rel['reviews']:,} reviews ({_release_checked(stats_by_source)}). The "
        f"paper's users and items equal that release, but its split sizes sum to "
        f"{p_total:,} interactions, {p_total - rel['reviews']:,} ({_pct(p_total, rel['reviews'])})"
        " more than the release holds, so they match no known release of the data.",
        f"- The paper's sizes {'are' if rule_ok else 'are not'} exactly round-half-up 80/10/10 "
        f"of {p_total:,} (train (8n+5)//10, valid (n+5)//10, test the rest), the rule used "
        "here for every source.",
    ]
    for label, s in stats_by_source.items():
        n = s["train"] + s["valid"] + s["test"]
        ok = split_sizes(n) == (s["train"], s["valid"], s["test"])
        lines.append(
            f"- {label}: users {_pct(s['users'], paper['users'])}, items "
            f"{_pct(s['items'], paper['items'])}, interactions {_pct(n, p_total)} vs the paper"
            f"{'' if ok else '; WARNING: split sizes do not follow the 80/10/10 rule'}."
        )
    return "\n".join(lines) + "\n"


def _release_checked(stats_by_source: Mapping[str, Mapping]) -> str:
    """Whether this table's own data checked the published 2014 counts, and the outcome."""
    rel = RELEASE_2014_5CORE
    for s in stats_by_source.values():
        if s.get("source") == AMAZON_2014 and s.get("scale", 1) in (None, 1, 1.0):
            got = {"users": s["users"], "items": s["items"],
                   "reviews": s["train"] + s["valid"] + s["test"]}
            if got == rel:
                return "checked by this run: the downloaded file has the same counts"
            return ("checked by this run: the downloaded file DIFFERS, with "
                    f"{got['users']:,} users, {got['items']:,} items, {got['reviews']:,} reviews")
    return (f"not checked by this run, which did not prepare {AMAZON_2014}; "
            f"`recpar data prepare --source {AMAZON_2014}` prints them")


def label_for(stats: Mapping, taken: set[str]) -> str:
    """Row label for one stats.json: source name (+ scale if not 1), made unique if needed."""
    base = str(stats["source"])
    scale = stats.get("scale", 1)
    label = base if scale in (None, 1, 1.0) else f"{base} (scale {scale:g})"
    if label in taken:
        label = f"{label[:-1]}, seed {stats.get('seed', 0)})" if label.endswith(")") \
            else f"{label} (seed {stats.get('seed', 0)})"
    k = 2
    unique = label
    while unique in taken:
        unique = f"{label} #{k}"
        k += 1
    return unique
