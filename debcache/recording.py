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
from dataclasses import asdict, dataclass

import sqlite_utils

from . import db as queries
from .db import FETCH_COLUMNS, Database
from .errors import InvalidCredentials, InvalidName, UnknownRecording
from .fetchlog_retention import fetch_log_extent
from .manifest import near_matches
from .metrics import Metrics

RECORDING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_recording_name(name: str) -> str:
    if not RECORDING_NAME.fullmatch(name):
        raise InvalidName(
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
        raise InvalidCredentials(
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
    relayed: bool = False  # answered by the fetcher process, which logs it: not a row here


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
        if record.relayed:
            return
        record.duration = round(time.time() - record.time, 6)
        if self.metrics:
            self.metrics.count_file(record.source, record.status, record.size, record.complete)
        # The dataclass fields are the table's columns (a SQLite boolean is 0 or 1).
        self.database.log_fetch(tuple(getattr(record, column) for column in FETCH_COLUMNS))


# --- failed fetches -----------------------------------------------------------------


@dataclass(frozen=True)
class FailedFetch:
    """A path a recording asked for and never received whole (its last attempt)."""

    recording: str
    upstream: str
    path: str
    status: int
    complete: bool
    expected: str | None  # why this failure is normal for an installer, else None

    def __str__(self) -> str:
        return f"{self.upstream}/{self.path} ({self.outcome})"

    @property
    def outcome(self) -> str:
        if not self.status:
            return "no response"
        return f"HTTP {self.status}" + ("" if self.complete else ", incomplete")

    def as_json(self) -> dict:
        return asdict(self)


def failed_fetches(
    db: sqlite_utils.Database, recordings: list[str] | None = None
) -> list[FailedFetch]:
    """The recordings' failed fetches (all recordings when None), each marked when expected."""
    rows = queries.failed_fetches(db, recordings)
    names = sorted({row["recording"] for row in rows})
    received = queries.received_dists_paths(db, names) if names else set()
    return [
        FailedFetch(
            row["recording"],
            row["upstream"],
            row["path"],
            row["status"],
            bool(row["complete"]),
            expected_failure(row, received),
        )
        for row in rows
    ]


def expected_failure(row: dict, received: set[tuple]) -> str | None:
    """Why a 404 is what a good install gets, or None.

    debian-installer probes dists/<suite>/Release of every suite name it knows and
    skips those the mirror lacks; apt and debootstrap ask for InRelease first and
    fall back to Release + Release.gpg. Neither says the install went wrong.
    """
    parts = row["path"].split("/")
    if row["status"] != 404 or not row["complete"] or len(parts) != 3 or parts[0] != "dists":
        return None
    recording, upstream, prefix = row["recording"], row["upstream"], f"dists/{parts[1]}/"
    if parts[2] == "Release":
        if not any(
            r == recording and u == upstream and p.startswith(prefix) for r, u, p in received
        ):
            return "a suite probe: the mirror has no such suite"
    elif parts[2] == "InRelease":
        fallback = {(recording, upstream, prefix + name) for name in ("Release", "Release.gpg")}
        if fallback <= received:
            return "Release and Release.gpg were fetched instead"
    return None


def recording_summaries(db: sqlite_utils.Database) -> list[dict]:
    """One row per recording: first/last fetch, files received, failed fetches (and how
    many of those are expected), clients, upstreams."""
    rows = queries.recording_summaries(db)
    failed: dict[str, list[FailedFetch]] = {}
    for failure in failed_fetches(db):
        failed.setdefault(failure.recording, []).append(failure)
    for row in rows:
        mine = failed.get(row["recording"], [])
        row["failed"] = len(mine)
        row["expected_failures"] = sum(1 for f in mine if f.expected)
    return rows


def recordings_listing(db: sqlite_utils.Database, fetch_log_days: int) -> dict:
    """What `recordings` lists: each recording's summary, and how far back the fetch log
    goes (a recording whose rows were all pruned is simply no longer there)."""
    return {
        "recordings": recording_summaries(db),
        "fetch_log": fetch_log_extent(db, fetch_log_days),
    }


def recording_contents(db: sqlite_utils.Database, name: str) -> dict:
    """What `recordings show` lists: the files received and, apart, the failed fetches."""
    return {
        "recording": name,
        "files": queries.recorded_files(db, [name]),
        "failed": [f.as_json() for f in failed_fetches(db, [name])],
    }


def check_recordings_exist(db: sqlite_utils.Database, recordings: list[str]) -> None:
    for name in recordings:
        if not queries.recording_exists(db, name):
            known = queries.recording_names(db)
            raise UnknownRecording(
                f"no recording named {name!r}{near_matches(name, known)}",
                "list them with `debcache recordings`",
            )
