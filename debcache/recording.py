"""The fetch log and recordings: who fetched which file, tagged with which recording.

A recording is named by the request: `/record/<name>/<upstream>/<path>` in
mirror-URL mode, or the user name of the proxy credentials
(`http://<name>@cache:3142/`), which apt sends as Proxy-Authorization and, in
mirror-URL mode with the user in the sources URL, as Authorization.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass

from .db import FETCH_COLUMNS, Database
from .errors import BadRequest
from .metrics import Metrics

RECORDING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_recording_name(name: str) -> str:
    if not RECORDING_NAME.match(name):
        raise BadRequest(
            f"{name!r} is not a valid recording name",
            "use up to 128 letters, digits, '.', '_', '+' and '-', starting with a letter or digit",
        )
    return name


def recording_from_credentials(header: str | None) -> str | None:
    """The user name of a Basic credential, with or without the `:password` part.

    BusyBox wget sends `base64(name)` for `http://name@host/`, apt and GNU wget
    `base64(name:)`; the password, if any, is ignored.
    """
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest(
            "the proxy credentials are not valid Basic credentials",
            "name the recording as http://NAME@cache:3142/ in the proxy URL",
        ) from None
    name = decoded.partition(":")[0]
    return check_recording_name(name) if name else None


@dataclass
class FetchRecord:
    """One fetch-log row: one served request."""

    time: float
    client: str | None
    recording: str | None
    upstream: str
    path: str
    method: str
    status: int = 0
    sha256: str | None = None
    size: int | None = None
    source: str = "error"
    duration: float = 0.0
    complete: bool = False


class FetchLog:
    """Appends fetch-log rows; the writer thread commits them in groups."""

    def __init__(self, database: Database, metrics: Metrics | None = None) -> None:
        self.database = database
        self.metrics = metrics

    def begin(
        self, client: str | None, recording: str | None, upstream: str, path: str, method: str
    ) -> FetchRecord:
        return FetchRecord(time.time(), client, recording, upstream, path, method)

    def finish(self, record: FetchRecord) -> None:
        """Log a request once its response is over, complete or not."""
        record.duration = round(time.time() - record.time, 6)
        if self.metrics:
            self.metrics.count_file(record.source, record.status, record.size, record.complete)
        # The dataclass fields are the table's columns (a SQLite boolean is 0 or 1).
        self.database.log_fetch(tuple(getattr(record, column) for column in FETCH_COLUMNS))
