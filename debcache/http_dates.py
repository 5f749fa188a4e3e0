"""Dates as HTTP headers and Release files write them, and the seconds they can show.

Both use the RFC 5322 form (`Sat, 01 Jun 2024 12:00:00 GMT`), whole seconds only.
"""

from __future__ import annotations

import functools
import math
from email.utils import parsedate_to_datetime


@functools.lru_cache(maxsize=4096)  # a hit parses its file's Last-Modified: the same strings
def http_date_timestamp(value: str | None) -> float | None:
    """The POSIX time of an HTTP date header (or a Release's Valid-Until), or None."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def http_seconds(timestamp: float) -> int:
    """The whole second a Last-Modified header shows (aiohttp rounds up)."""
    return math.ceil(timestamp)
