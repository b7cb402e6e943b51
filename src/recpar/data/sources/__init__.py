"""Registry of raw-data sources: name -> Source class.

    >>> from recpar.data.sources import get_source, SourceOptions
    >>> src = get_source("synthetic-amazon")(SourceOptions(scale=0.01, seed=1))
"""

from __future__ import annotations

from recpar.data.errors import DataError
from recpar.data.sources.amazon import AmazonElectronics2014
from recpar.data.sources.base import (
    DEFAULT_MAX_BAD_FRACTION,
    LineCounts,
    RawInteractions,
    Source,
    SourceOptions,
)
from recpar.data.sources.movielens import MovieLens100k
from recpar.data.sources.synthetic import SyntheticAmazon

SOURCES: dict[str, type[Source]] = {
    cls.name: cls for cls in (AmazonElectronics2014, MovieLens100k, SyntheticAmazon)
}


def get_source(name: str) -> type[Source]:
    """The Source class registered under `name` (DataError listing the known names if none)."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(
            f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}"
        ) from None


__all__ = [
    "DEFAULT_MAX_BAD_FRACTION", "LineCounts", "RawInteractions", "SOURCES", "Source",
    "SourceOptions", "get_source",
]
