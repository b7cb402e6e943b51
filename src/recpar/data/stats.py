"""Table I statistics of a prepared dataset (written to `stats.json`, printed by `prepare`)."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field

STATS_VERSION = 1  # bump when a key changes meaning


@dataclass
class DatasetStats:
    """Everything `stats.json` records; key names are the JSON keys."""

    source: str  # registry name of the source, e.g. "synthetic-amazon"
    scale: float  # size relative to Amazon Electronics 5-core (1.0 for real sources)
    seed: int  # RNG seed (only the synthetic source uses it)
    k_core: int  # minimum interactions per user and per item after filtering
    users: int  # users after filtering (ids 0..users-1)
    items: int  # items after filtering (ids 1..items; 0 is padding)
    interactions: int  # interactions after dedup + k-core
    train: int  # train interactions = round(0.8 interactions)
    valid: int  # valid interactions = round(0.1 interactions)
    test: int  # test interactions = the rest
    density: float  # interactions / (users * items), a fraction
    interactions_per_user: float  # mean interactions per user
    interactions_per_item: float  # mean interactions per item
    raw_interactions: int  # interactions read from the source (well-formed lines)
    raw_users: int  # distinct users read from the source
    raw_items: int  # distinct items read from the source
    duplicates_dropped: int  # repeated user-item pairs removed (earliest kept)
    kcore_dropped: int  # interactions removed by the k-core filter
    kcore_passes: int  # k-core passes that removed something before the fixed point
    ts_min: int  # earliest timestamp kept, seconds since the epoch (UTC)
    ts_max: int  # latest timestamp kept, seconds since the epoch (UTC)
    split_ts_valid_start: int  # timestamp of the first valid interaction (-1 if none)
    split_ts_test_start: int  # timestamp of the first test interaction (-1 if none)
    items_without_metadata: int  # kept items the source had no metadata row for
    items_without_text: int  # kept items whose text is empty
    lines_read: dict[str, int] = field(default_factory=dict)  # file -> non-blank lines parsed
    malformed_lines: dict[str, int] = field(default_factory=dict)  # file -> rejected lines
    skipped_lines: dict[str, int] = field(default_factory=dict)  # file -> lines not needed
    split_rule: str = "global (ts, user, item) order; train (8n+5)//10, valid (n+5)//10, rest test"
    stats_version: int = STATS_VERSION  # schema version of this record

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


def _date(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).date().isoformat()


def format_stats(stats: DatasetStats | dict) -> str:
    """Human-readable multi-line summary (what `recpar data prepare` prints)."""
    s = asdict(stats) if isinstance(stats, DatasetStats) else dict(stats)
    n = s["interactions"]
    pct = (lambda x: f"{100.0 * x / n:.1f} %") if n else (lambda x: "-")
    lines = [
        f"source            {s['source']} (scale {s['scale']:g}, seed {s['seed']}, "
        f"{s['k_core']}-core)",
        f"users             {s['users']:,}",
        f"items             {s['items']:,}",
        f"interactions      {n:,}  (density {s['density']:.3e}, "
        f"{s['interactions_per_user']:.2f} per user, {s['interactions_per_item']:.2f} per item)",
        f"train / valid / test  {s['train']:,} / {s['valid']:,} / {s['test']:,}  "
        f"({pct(s['train'])} / {pct(s['valid'])} / {pct(s['test'])})",
        f"read              {s['raw_interactions']:,} interactions, {s['raw_users']:,} users, "
        f"{s['raw_items']:,} items",
        f"dropped           {s['duplicates_dropped']:,} duplicate pairs, "
        f"{s['kcore_dropped']:,} by the k-core filter ({s['kcore_passes']} passes)",
    ]
    if n:
        lines.append(f"time span         {_date(s['ts_min'])} .. {_date(s['ts_max'])}")
    bad = {k: v for k, v in s.get("malformed_lines", {}).items() if v}
    lines.append("malformed lines   " + (
        ", ".join(f"{k}: {v:,} of {s['lines_read'].get(k, 0):,}" for k, v in bad.items())
        if bad else "none"))
    if s.get("items_without_metadata") or s.get("items_without_text"):
        lines.append(f"items lacking     metadata: {s['items_without_metadata']:,}, "
                     f"text: {s['items_without_text']:,}")
    return "\n".join(lines)
