"""The exception types the data stage raises: bad input or unusable sources (DataError), a
prepared-data directory that breaks its contract (PreparedDataError)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input to the data stage: the message is one line naming the file/key/value at fault.

    The CLI turns it into `SystemExit("recpar: <message>")`.
    """


class PreparedDataError(ValueError):
    """A prepared-data directory is missing a file or violates its contract
    (recpar.data.prepared). Here, not there, so the CLI can name it without importing
    pandas."""
