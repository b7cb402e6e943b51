"""Tables as text: every cell a short string (— for absent), then Markdown or LaTeX."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def fmt(v: Any) -> str:
    """One value as a short string: — for None/NaN, floats to about three significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        a = abs(v)
        if a >= 100:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The same table with every cell a short string (— for absent)."""
    return df.apply(lambda col: col.map(fmt)) if len(df) else df.astype(str)


def to_markdown(df: pd.DataFrame, title: str, notes: list[str]) -> str:
    body = display(df).to_markdown(index=False) if len(df) else "(no rows)"
    return f"# {title}\n\n{body}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def to_latex(df: pd.DataFrame, caption: str) -> str:
    d = display(df)
    d.columns = [c.replace("_", " ") for c in d.columns]
    return d.to_latex(index=False, caption=caption, escape=True, longtable=False)

