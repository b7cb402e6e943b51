"""How an item's metadata becomes the single text string that the text encoder embeds."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

# 1,000 characters ~ 200-250 word pieces: about all-MiniLM-L6-v2's max_seq_length (256 tokens);
# text beyond it would be cut by the tokenizer anyway, so it is cut here, at a word boundary.
MAX_TEXT_CHARS = 1000

_WS = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]{0,200}>")  # HTML tags inside Amazon descriptions


def clean(value: object) -> str:
    """Text field -> one line of plain text ('' for None/NaN/non-text)."""
    if value is None or isinstance(value, float):  # NaN from pandas, or missing
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean(v) for v in value)
    s = html.unescape(str(value))
    s = _TAG.sub(" ", s)
    return _WS.sub(" ", s).strip()


def truncate_words(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars` characters, at the last word boundary if possible."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + " ..."


def category_paths(categories: object) -> list[str]:
    """Amazon 2014 `categories` (list of category paths) -> distinct 'A > B > C' strings."""
    if not isinstance(categories, (list, tuple)):
        return []
    paths: list[str] = []
    for path in categories:
        if isinstance(path, (list, tuple)):
            s = " > ".join(c for c in (clean(x) for x in path) if c)
        else:
            s = clean(path)
        if s and s not in paths:
            paths.append(s)
    return paths


def compose_item_text(
    title: object,
    brand: object = None,
    categories: Iterable[str] = (),
    description: object = None,
    max_chars: int = MAX_TEXT_CHARS,
) -> str:
    """title + brand + categories + description, in that order, cut to `max_chars`.

    Title, brand and categories come first so that truncation only ever shortens the
    description (the part least likely to matter and most likely to be long).
    """
    parts = []
    t = clean(title)
    if t:
        parts.append(t if t.endswith((".", "!", "?")) else t + ".")
    b = clean(brand)
    if b:
        parts.append(f"Brand: {b}.")
    cats = [c for c in categories if c]
    if cats:
        parts.append(f"Categories: {'; '.join(cats)}.")
    d = clean(description)
    if d:
        parts.append(d)
    return truncate_words(" ".join(parts), max_chars)
