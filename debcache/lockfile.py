"""Lockfiles: a manifest as a self-contained JSON document; export, parse and import.

Import fetches the blobs the store lacks, from the upstreams or from another
debcache, verifies each, and stores the manifest only when all arrived.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import sqlite_utils

from .archive import parse_archive_path, upstream_url
from .config import NAME_PATTERN, Config
from .errors import ImportFailed, InvalidArchivePath, InvalidLockfile
from .manifest import Entry, Manifest, manifest_id, save_manifest
from .store import SHA256_PATTERN, FileStore
from .upstream import DownloadFailure, UpstreamClient

LOCKFILE_FORMAT = "debcache-manifest/1"


def export_lockfile(manifest: Manifest) -> dict:
    """A self-contained JSON document that `import_lockfile` turns back into this manifest."""
    return {
        "format": LOCKFILE_FORMAT,
        "id": manifest.id,
        "label": manifest.label,
        "created": manifest.created,
        "recordings": manifest.recordings,
        "releases": manifest.releases,
        "unverified": manifest.unverified,
        "completed": manifest.completed,
        "entries": [asdict(e) for e in manifest.entries],
    }


def parse_lockfile(document: object, source: str) -> Manifest:
    """Validate a lockfile; every entry must be a safe archive path with a sha256."""

    def bad(reason: str) -> InvalidLockfile:
        return InvalidLockfile(
            f"{source}: {reason}", "export it again with `debcache manifests export`"
        )

    if not isinstance(document, dict) or document.get("format") != LOCKFILE_FORMAT:
        raise bad(f"not a debcache lockfile (format {LOCKFILE_FORMAT} expected)")
    raw_entries = document.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise bad("it has no entries")
    entries = []
    for number, raw in enumerate(raw_entries, 1):
        entries.append(_lockfile_entry(raw, number, bad))
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        raise bad("an upstream/path appears twice")
    computed = manifest_id(entries)
    if document.get("id") != computed:
        raise bad(f"its id {document.get('id')!r} does not match its entries ({computed})")
    try:
        created = float(document.get("created") or time.time())
    except (TypeError, ValueError, OverflowError):
        created = math.nan
    if not math.isfinite(created):
        raise bad("its created time is not a number")
    lists = {key: document.get(key) or [] for key in ("recordings", "unverified", "completed")}
    releases = document.get("releases") or {}
    if not isinstance(releases, dict) or not all(isinstance(v, list) for v in lists.values()):
        raise bad(
            "its releases are not an object, or its recordings, unverified or completed not lists"
        )
    return Manifest(
        computed,
        document.get("label") if isinstance(document.get("label"), str) else None,
        created,
        [str(r) for r in lists["recordings"]],
        sorted(entries, key=lambda e: e.key),
        releases,
        [str(u) for u in lists["unverified"]],
        [str(c) for c in lists["completed"]],
    )


def _lockfile_entry(raw: object, number: int, bad: Callable[[str], InvalidLockfile]) -> Entry:
    if not isinstance(raw, dict):
        raise bad(f"entry {number} is not an object")
    upstream, path, sha256, size = (raw.get(k) for k in ("upstream", "path", "sha256", "size"))
    if not isinstance(upstream, str) or not NAME_PATTERN.fullmatch(upstream):
        raise bad(f"entry {number} has no valid upstream name")
    if not isinstance(path, str):
        raise bad(f"entry {number} has no path")
    try:
        if parse_archive_path(path) != path:
            raise InvalidArchivePath("encoded")
    except InvalidArchivePath:
        raise bad(f"entry {number} has an unsafe path {path!r}") from None
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
        raise bad(f"entry {number} has no valid sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad(f"entry {number} has no valid size")
    info = {k: raw.get(k) for k in ("package", "version", "architecture", "suite")}
    return Entry(
        upstream, path, sha256, size, **{k: v for k, v in info.items() if isinstance(v, str)}
    )


@dataclass(frozen=True)
class Imported:
    """What `import_manifest` did: a new manifest or a known one, and what it fetched."""

    created: bool
    restored_files: int  # entries whose blob was missing and is now stored
    restored_bytes: int


def import_manifest(
    config: Config,
    db: sqlite_utils.Database,
    store: FileStore,
    manifest: Manifest,
    client: UpstreamClient,
    source_url: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Imported:
    """Fetch the blobs the store lacks, verify each, then store the manifest (all or nothing).

    Also how evicted blobs of a known manifest come back (promote refuses it until then).
    Runs on a worker thread; `client` downloads on its event loop.
    """
    store.create_directories()
    missing = {e.sha256: e for e in manifest.entries if not store.has(e.sha256)}
    if missing:
        failures = client.wait_for(
            _fetch_blobs(
                config, store, client, manifest.id, list(missing.values()), source_url, progress
            )
        )
        if failures:
            raise import_failure(manifest, len(missing), failures, source_url)
    restored = sum(1 for e in manifest.entries if e.sha256 in missing)
    created = save_manifest(db, manifest)
    return Imported(created, restored, sum(e.size for e in missing.values()))


async def _fetch_blobs(
    config: Config,
    store: FileStore,
    client: UpstreamClient,
    manifest_id: str,
    entries: list[Entry],
    source_url: str | None,
    progress: Callable[[int], None] | None,
) -> list[tuple[Entry, str]]:
    """Each entry from the peer at `source_url`, else from its upstream; (entry, why) of
    those that failed."""

    async def fetch(entry: Entry) -> DownloadFailure | None:
        upstream = config.upstreams.get(entry.upstream)
        if source_url:
            url = _peer_url(source_url, manifest_id, entry)
            why = await client.download_from_peer(url, store, entry.sha256, entry.size)
        elif upstream is None:
            why = DownloadFailure("no URL to fetch it from")
        else:
            why = await client.download_blob(upstream, entry.path, store, entry.sha256, entry.size)
        if progress:
            progress(1)
        return why

    outcomes = await client.bounded(fetch(e) for e in entries)
    failures = [(e, why) for e, why in zip(entries, outcomes, strict=True) if why]
    return sorted(failures, key=lambda f: f[0].key)


def _peer_url(source_url: str, manifest_id: str, entry: Entry) -> str:
    """Where another debcache serves `entry` of a manifest it holds."""
    base = f"{source_url.rstrip('/')}/manifest/{manifest_id}/{entry.upstream}"
    return upstream_url(base, entry.path)


def import_failure(
    manifest: Manifest, wanted: int, failures: list[tuple[Entry, str]], source_url: str | None
) -> ImportFailed:
    """One line: how many failed, the first reason (its URL names the file), the remedy."""
    entry, why = failures[0]
    if source_url:  # the peer is named once; the first file by its upstream and path
        why = why.removeprefix(f"{_peer_url(source_url, manifest.id, entry)}: ")
        return ImportFailed(
            f"{len(failures)} of {wanted} files of manifest {manifest.short_id} could not be "
            f"fetched from {source_url}; the first, {entry.upstream}/{entry.path}: {why}",
            "nothing was imported; check that it is a debcache that holds this manifest, "
            "or import without --from to fetch from the upstreams",
        )
    first = (
        why if why.startswith(("http://", "https://")) else f"{entry.upstream}/{entry.path}: {why}"
    )
    return ImportFailed(
        f"{len(failures)} of {wanted} files of manifest {manifest.short_id} could not be "
        f"fetched; the first, {first}",
        "nothing was imported; check that the upstreams are reachable and still have "
        "these files, or import --from a debcache that has them",
    )
