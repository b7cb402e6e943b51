"""The paper's published numbers (paper_tables/paper.yaml): load, validate, judge a value.

Every quantity carries its unit, where the paper gives it and a tolerance with its reason; the
file is checked against paper.schema.json on load, and an error names the offending key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("paper.schema.json")
DEFAULT_PATH = Path("paper_tables/paper.yaml")


class PaperError(ValueError):
    """paper.yaml is missing, unreadable or does not match its schema (message names the key)."""


@dataclass(frozen=True)
class Tolerance:
    """How far a measured value may sit from the paper's and still count as met."""

    kind: str
    """relative: |m-p| <= value*|p|; absolute: |m-p| <= value; at_least: m >= p - value;
    at_most: m <= p + value."""
    value: float
    """Width of the band, a fraction (relative) or in the quantity's unit (the others)."""
    reason: str
    """One line: why this width."""

    def bounds(self, paper: float) -> tuple[float | None, float | None]:
        """(low, high) of the accepted band around `paper` (None = unbounded)."""
        if self.kind == "relative":
            w = self.value * abs(paper)
            return paper - w, paper + w
        if self.kind == "absolute":
            return paper - self.value, paper + self.value
        if self.kind == "at_least":
            return paper - self.value, None
        if self.kind == "at_most":
            return None, paper + self.value
        raise PaperError(f"unknown tolerance kind {self.kind!r}")

    def met(self, measured: float, paper: float) -> bool:
        lo, hi = self.bounds(paper)
        # A hair of slack for binary floating point at the exact edge (0.1 * 3.4 etc.).
        eps = 1e-9 * max(1.0, abs(paper))
        return (lo is None or measured >= lo - eps) and (hi is None or measured <= hi + eps)

    def miss(self, measured: float, paper: float) -> float:
        """Distance from `measured` to the nearest edge of the band (0 when met)."""
        lo, hi = self.bounds(paper)
        if lo is not None and measured < lo:
            return lo - measured
        if hi is not None and measured > hi:
            return measured - hi
        return 0.0

    def describe(self) -> str:
        if self.kind == "relative":
            return f"±{100 * self.value:g} % (relative)"
        if self.kind == "absolute":
            return f"±{self.value:g} (absolute)"
        if self.kind == "at_least":
            return f"≥ paper − {self.value:g}"
        return f"≤ paper + {self.value:g}"

    @classmethod
    def from_mapping(cls, m: dict) -> "Tolerance":
        return cls(kind=m["kind"], value=float(m["value"]), reason=m["reason"])


@dataclass(frozen=True)
class Quantity:
    """One published number."""

    key: str
    """Dotted path in paper.yaml, e.g. table2.rows.dp.values.speedup."""
    value: float
    """The paper's number."""
    unit: str
    """Its unit as the paper uses it."""
    where: str
    """Table, figure or section that states it."""
    tolerance: Tolerance
    """Band a measured value must fall in."""
    note: str | None = None
    """Our reading of an ambiguous statement, if any."""

    @classmethod
    def from_mapping(cls, key: str, m: dict) -> "Quantity":
        return cls(key=key, value=float(m["value"]), unit=m["unit"], where=m["where"],
                   tolerance=Tolerance.from_mapping(m["tolerance"]), note=m.get("note"))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def validate(data: Any, where: str = "paper.yaml") -> None:
    """Raise PaperError naming the first offending key (as a slash path)."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PaperError(f"{where}: invalid at {key}: {e.message}{more}")


@dataclass(frozen=True)
class Paper:
    """paper.yaml, validated."""

    data: dict
    """The parsed document."""
    path: str
    """Where it was read from (for messages)."""

    def q(self, dotted: str) -> Quantity | None:
        """The quantity at a dotted key, or None when the paper gives none there."""
        node: Any = self.data
        for part in dotted.split("."):
            if isinstance(node, list):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return None
        return Quantity.from_mapping(dotted, node) if isinstance(node, dict) else None

    def table2_row(self, scheme: str) -> dict | None:
        return self.data["table2"]["rows"].get(scheme)

    def table2_value(self, scheme: str, metric: str) -> Quantity | None:
        return self.q(f"table2.rows.{scheme}.values.{metric}")

    def table2_number(self, scheme: str, metric: str) -> float | None:
        """The number of table2_value, None when the paper gives none."""
        q = self.table2_value(scheme, metric)
        return q.value if q else None

    def table3(self, nodes: int, scheme: str) -> dict[str, Quantity] | None:
        for i, r in enumerate(self.data["table3"]["rows"]):
            if r["nodes"] == nodes and r["scheme"] == scheme:
                return {m: Quantity.from_mapping(f"table3.rows.{i}.{m}", r[m])
                        for m in ("throughput_samples_per_s", "speedup")}
        return None

    def table3_nodes(self) -> list[int]:
        return sorted({r["nodes"] for r in self.data["table3"]["rows"]})

    def quality_tolerance(self, metric: str) -> Tolerance:
        """paper.yaml's constant band for |scheme − baseline| of `metric` (used where no seed
        spread is measured: recpar.report.quality_band)."""
        return Tolerance.from_mapping(self.data["table2"]["quality_vs_baseline"][metric])

    def quality_gap(self, metrics: tuple[str, ...] = ("hr_at_10", "ndcg_at_10")) -> float | None:
        """The paper's own largest |scheme − baseline| over `metrics` in Table II (0.002 for
        HR@10 and NDCG@10), rounded to the 6th decimal; None when Table II gives no pair."""
        gaps = []
        for m in metrics:
            base = self.table2_number("baseline", m)
            for scheme in self.data["table2"]["rows"]:
                v = self.table2_number(scheme, m)
                if scheme != "baseline" and v is not None and base is not None:
                    gaps.append(abs(v - base))
        return round(max(gaps), 6) if gaps else None

    @property
    def devices_per_node(self) -> int:
        return int(self.data["paper"]["devices_per_node"])

    @property
    def profile(self) -> str:
        return self.data["paper"]["perfmodel_profile"]


def load(path: str | Path = DEFAULT_PATH) -> Paper:
    """Read and validate paper.yaml; PaperError names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PaperError(f"{path}: paper values file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise PaperError(f"{path}: not valid YAML{at}") from None
    validate(data, str(path))
    return Paper(data=data, path=str(path))
