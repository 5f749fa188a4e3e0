"""Keeping the store healthy: gc evicts live-cache blobs, verify finds and repairs bit rot.

Blobs of manifests that a branch points at, or pointed at within its last
`PROTECTED_HISTORY` changes, are never evicted: a pinned branch must keep
working offline. Everything else is a cache, least recently used first.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from . import db as queries
from .config import Config, Upstream
from .store import FileStore, file_sha256
from .upstream import UpstreamClient

PROTECTED_HISTORY = 5


@dataclass
class GcReport:
    evicted: list[tuple[str, int]] = field(default_factory=list)  # (sha256, size)
    kept_protected: int = 0
    size_before: int = 0

    @property
    def freed(self) -> int:
        return sum(size for _, size in self.evicted)


def collect_garbage(
    db: sqlite_utils.Database, store: FileStore, max_size: int, dry_run: bool = False
) -> GcReport:
    """Evict unprotected blobs, least recently used first, until the store fits max_size."""
    with store.exclusive():  # no promote may pick a blob between choosing and deleting
        return _collect_garbage(db, store, max_size, dry_run)


def _collect_garbage(
    db: sqlite_utils.Database, store: FileStore, max_size: int, dry_run: bool
) -> GcReport:
    protected = queries.protected_sha256s(db, PROTECTED_HISTORY)
    last_used = queries.blob_last_used(db)
    blobs = []
    for sha256 in store.iterate():
        stat = store.local_path(sha256).stat()
        blobs.append((last_used.get(sha256, stat.st_mtime), sha256, stat.st_size))
    report = GcReport(size_before=sum(size for _, _, size in blobs))
    size = report.size_before
    for _, sha256, blob_size in sorted(blobs):
        if size <= max_size:
            break
        if sha256 in protected:
            report.kept_protected += 1
            continue
        report.evicted.append((sha256, blob_size))
        size -= blob_size
    if not dry_run and report.evicted:
        # The database first: a crash in between leaves a blob no path points at, never
        # a path that points at a missing blob.
        queries.forget_cached_blobs(db, [sha256 for sha256, _ in report.evicted])
        for sha256, _ in report.evicted:
            store.delete(sha256)
    return report


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    refetched: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def verify_store(
    config: Config,
    db: sqlite_utils.Database,
    store: FileStore,
    client: UpstreamClient,
    progress: Callable[[int], None] | None = None,
    more_work: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Re-hash every blob; quarantine the corrupt ones and fetch them again where possible.

    more_work(n): n blobs to hash; progress(n): n more hashed. Runs on a worker thread;
    `client` downloads on its event loop.
    """
    report = VerifyReport()
    quarantine = config.data_dir / "quarantine"
    blobs = list(store.iterate())
    if more_work:
        more_work(len(blobs))
    for sha256 in blobs:
        blob = store.local_path(sha256)
        report.checked += 1
        if file_sha256(blob) != sha256:
            quarantine.mkdir(exist_ok=True)
            shutil.move(blob, quarantine / sha256)
            report.corrupt.append(sha256)
        if progress:
            progress(1)
    sources = {sha256: _upstream_paths(config, db, sha256) for sha256 in report.corrupt}
    if sources:
        refetches = (_refetch(client, store, *item) for item in sources.items())
        fetched = client.wait_for(client.bounded(refetches))
        for sha256, ok in zip(sources, fetched, strict=True):
            (report.refetched if ok else report.lost).append(sha256)
    return report


def _upstream_paths(
    config: Config, db: sqlite_utils.Database, sha256: str
) -> list[tuple[Upstream, str]]:
    """Where the upstreams still configured had this blob."""
    return [
        (config.upstreams[upstream], path)
        for upstream, path in queries.paths_of_blob(db, sha256)
        if upstream in config.upstreams
    ]


async def _refetch(
    client: UpstreamClient, store: FileStore, sha256: str, sources: list[tuple[Upstream, str]]
) -> bool:
    """Fetch a blob again from the first upstream path that has it; False if none did."""
    for upstream, path in sources:
        # The corrupt copy's size says nothing (it may be truncated): the hash decides.
        if await client.download_blob(upstream, path, store, sha256, None) is None:
            return True
    return False
