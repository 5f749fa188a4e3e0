"""Lockfiles: a manifest as a self-contained JSON document; export, parse and import.

Import fetches the blobs the store lacks, from the upstreams or from another
debcache, verifies each, and stores the manifest only when all arrived.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import sqlite_utils

from . import db as queries
from .archive import CLEARSIGN_HEADER, parse_archive_path, parse_release, suite_of, upstream_url
from .config import NAME_PATTERN, Config
from .errors import ImportFailed, InvalidArchivePath, InvalidLockfile
from .freeze import release_summary
from .manifest import Entry, Manifest, manifest_id, save_manifest
from .store import SHA256_PATTERN, FileStore
from .upstream import DownloadFailure, UpstreamClient

LOCKFILE_FORMAT = "debcache-manifest/1"
MAX_SIZE = 2**63 - 1  # the largest SQLite INTEGER
MAX_LABEL = 1000
LATEST_CREATED = 253402300799  # 9999-12-31T23:59:59Z


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
    for key in ("recordings", "unverified", "completed", "warnings"):
        value = document.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(f"its {key} are not a list of strings")
    recordings = document.get("recordings", [])
    if not all(NAME_PATTERN.fullmatch(r) for r in recordings):
        raise bad("its recordings are not all recording names")
    # What freeze wrote of each suite's Release; import derives it from the Release files
    # themselves (`releases_of`), so only its shape is checked here.
    releases = document.get("releases", {})
    if not isinstance(releases, dict) or not all(isinstance(v, dict) for v in releases.values()):
        raise bad("its releases are not an object of objects")
    return Manifest(
        computed,
        _label(document.get("label"), bad),
        _created(document.get("created"), bad),
        list(recordings),
        sorted(entries, key=lambda e: e.key),
        {},
        list(document.get("unverified", [])),
        list(document.get("completed", [])),
        list(document.get("warnings", [])),
    )


def _label(label: object, bad: Callable[[str], InvalidLockfile]) -> str | None:
    if label is None:
        return None
    if not isinstance(label, str) or len(label) > MAX_LABEL or not label.isprintable():
        raise bad(f"its label is not one line of at most {MAX_LABEL} characters")
    return label


def _created(created: object, bad: Callable[[str], InvalidLockfile]) -> float:
    """When it was frozen, seconds since the epoch (now if the file does not say)."""
    if created is None:
        return time.time()
    if (
        not isinstance(created, int | float)
        or isinstance(created, bool)
        or not 0 <= created <= LATEST_CREATED
    ):
        raise bad("its created time is not a number of seconds since 1970 (before year 10000)")
    return float(created)


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
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise bad(f"entry {number} has no valid size (a whole number of bytes)")
    info = {k: raw.get(k) for k in ("package", "version", "architecture", "suite")}
    for key, value in info.items():
        if value is not None and (not isinstance(value, str) or not value.isprintable()):
            raise bad(f"entry {number} has a {key} that is not one line of text")
    return Entry(upstream, path, sha256, size, **info)


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
    _check_stored_sizes(store, manifest, missing)
    try:
        if missing:
            failures = client.wait_for(
                _fetch_blobs(
                    config, store, client, manifest.id, list(missing.values()), source_url, progress
                )
            )
            if failures:
                raise import_failure(manifest, len(missing), failures, source_url)
        _check_stored_sizes(store, manifest, {})  # what arrived is what the entries say
        # Recomputed from the Release files, never taken from the lockfile: the id does
        # not cover them, and the pinned routes trust them.
        manifest = dataclasses.replace(manifest, releases=releases_of(store, manifest))
        created = save_manifest(db, manifest)
    except BaseException:
        _remove_fetched(db, store, list(missing))
        raise
    restored = sum(1 for e in manifest.entries if e.sha256 in missing)
    return Imported(created, restored, sum(e.size for e in missing.values()))


def _check_stored_sizes(store: FileStore, manifest: Manifest, missing: dict[str, Entry]) -> None:
    """Refuse a lockfile whose entry gives a size other than its blob's (stored blobs
    were hash-checked when stored, so it is the lockfile that is wrong)."""
    for entry in manifest.entries:
        if entry.sha256 in missing:
            continue
        try:
            actual = store.local_path(entry.sha256).stat().st_size
        except FileNotFoundError:  # gc removed it meanwhile: the fetch will say so
            continue
        if actual != entry.size:
            raise InvalidLockfile(
                f"entry {entry.upstream}/{entry.path} of manifest {manifest.short_id} says "
                f"{entry.size} bytes, but its content (sha256 {entry.sha256[:12]}) has {actual}",
                "nothing was imported; export it again with `debcache manifests export`",
            )


def _remove_fetched(db: sqlite_utils.Database, store: FileStore, fetched: list[str]) -> None:
    """A failed import leaves no blob it added, but one that the live cache or another
    manifest has come to use meanwhile (gc's lock: no promote picks one as it goes)."""
    with store.exclusive():
        for sha256 in fetched:
            if store.has(sha256) and not queries.paths_of_blob(db, sha256):
                store.delete(sha256)


def releases_of(store: FileStore, manifest: Manifest) -> dict[str, dict]:
    """What freeze records of each suite a manifest holds the Release of ("upstream
    suite" → date, valid_until, and the sha256 of its InRelease, else its Release),
    read from the manifest's own Release files; a suite marked unverified has none."""
    unverified = {u.partition(": ")[0] for u in manifest.unverified}
    forms: dict[tuple[str, str], dict[str, Entry]] = {}
    for entry in manifest.entries:
        located = suite_of(entry.path)
        if located and located[1] in ("InRelease", "Release"):
            forms.setdefault((entry.upstream, located[0]), {})[located[1]] = entry
    releases = {}
    for (upstream, suite), found in sorted(forms.items()):
        if any(f"{upstream}/{e.path}" in unverified for e in found.values()):
            continue
        main = found.get("InRelease") or found["Release"]
        text_of = found.get("Release") or main
        text = store.local_path(text_of.sha256).read_bytes()
        releases[f"{upstream} {suite}"] = release_summary(
            parse_release(_signed_text(text)), main.sha256
        )
    return releases


def _signed_text(content: bytes) -> bytes:
    """The text of a clearsigned file (RFC 4880 §7), else the content itself. Its sha256 is
    the manifest's, so only its dates are read from it, without a signature check."""
    if not content.startswith(CLEARSIGN_HEADER):
        return content
    body = content.replace(b"\r\n", b"\n").partition(b"\n\n")[2]  # after the armor headers
    text = body.partition(b"\n-----BEGIN PGP SIGNATURE-----")[0]
    return b"\n".join(line[2:] if line.startswith(b"- ") else line for line in text.split(b"\n"))


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
