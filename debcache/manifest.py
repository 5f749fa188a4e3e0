"""Manifests: the entries, their content-derived id, and storing, loading and naming them.

A manifest is a set of (upstream, path, sha256, size). Its id is the sha256 of
the canonical JSON of those entries alone, so the same files always give the
same id.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import sqlite_utils

from . import db as queries
from .errors import AmbiguousManifestId, UnknownManifest

SHORT_ID = 12


@dataclass(frozen=True)
class Entry:
    """One file of a manifest; package fields describe pool files and are not part of the id."""

    upstream: str
    path: str
    sha256: str
    size: int
    package: str | None = None
    version: str | None = None
    architecture: str | None = None
    suite: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.upstream, self.path


@dataclass
class Manifest:
    id: str
    label: str | None
    created: float
    recordings: list[str]
    entries: list[Entry]
    releases: dict[str, dict] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)
    # "upstream/path" of files no recording fetched: what completeness added (DESIGN §4)
    completed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # freeze's: a probe left out, ...

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID]

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)


def canonical_json(entries: Iterable[Entry]) -> bytes:
    """The bytes the manifest id hashes: sorted entries, four fields each, no whitespace."""
    rows = [
        {"path": path, "sha256": sha256, "size": size, "upstream": upstream}
        for upstream, path, sha256, size in sorted(
            (e.upstream, e.path, e.sha256, e.size) for e in entries
        )
    ]
    return json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()


def manifest_id(entries: Iterable[Entry]) -> str:
    return hashlib.sha256(canonical_json(entries)).hexdigest()


def near_matches(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def save_manifest(db: sqlite_utils.Database, manifest: Manifest) -> bool:
    """Store it in one transaction; False if a manifest with that id existed already."""
    row = {
        "id": manifest.id,
        "label": manifest.label,
        "created": manifest.created,
        "recordings": json.dumps(manifest.recordings),
        "files": len(manifest.entries),
        "bytes": manifest.bytes,
        "releases": json.dumps(manifest.releases, sort_keys=True),
        "unverified": json.dumps(manifest.unverified),
        "completed": json.dumps(manifest.completed),
        "warnings": json.dumps(manifest.warnings),
    }
    return queries.insert_manifest(db, row, [asdict(e) for e in manifest.entries])


def resolve_manifest_id(db: sqlite_utils.Database, text: str) -> str:
    """The full id for a unique prefix (at least 4 hex digits)."""
    if not re.fullmatch(r"[0-9a-fA-F]{4,64}", text):
        raise UnknownManifest(
            f"{text!r} is not a manifest id",
            "give at least 4 hex digits; `debcache manifests` lists them",
        )
    ids = queries.manifest_ids_with_prefix(db, text)
    if not ids:
        raise UnknownManifest(
            f"no manifest id starts with {text}", "list them with `debcache manifests`"
        )
    if len(ids) > 1:
        raise AmbiguousManifestId(
            f"manifest id prefix {text} is ambiguous: {', '.join(i[:SHORT_ID] for i in ids)}",
            "give more digits",
        )
    return ids[0]


def load_manifest(db: sqlite_utils.Database, manifest_id: str) -> Manifest:
    row = queries.manifest_row(db, manifest_id)
    if row is None:
        raise UnknownManifest(f"no manifest {manifest_id}", "list them with `debcache manifests`")
    entries = [Entry(**e) for e in queries.manifest_entries(db, manifest_id)]
    return Manifest(
        row["id"],
        row["label"],
        row["created"],
        json.loads(row["recordings"]),
        entries,
        json.loads(row["releases"]),
        json.loads(row["unverified"]),
        json.loads(row["completed"]),
        json.loads(row.get("warnings") or "[]"),
    )
