"""The one exception type the data stage raises for bad input or unusable sources."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input to the data stage: the message is one line naming the file/key/value at fault.

    The CLI turns it into `SystemExit("recpar: <message>")`.
    """
