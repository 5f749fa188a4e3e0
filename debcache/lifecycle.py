"""Keeping the store healthy: gc evicts live-cache blobs, verify finds and repairs bit rot.

Blobs of manifests that a branch points at, or pointed at within its last
`PROTECTED_HISTORY` changes, are never evicted: a pinned branch must keep
working offline. Everything else is a cache, least recently used first.
"""

from __future__ import annotations

import time
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
    missing: list[str] = field(default_factory=list)  # referenced by a branch, not stored
    refetched: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    # Branches that serve (or may roll back to) a lost blob: broken until repaired.
    broken_branches: dict[str, list[str]] = field(default_factory=dict)


def verify_store(
    config: Config,
    db: sqlite_utils.Database,
    store: FileStore,
    client: UpstreamClient,
    progress: Callable[[int], None] | None = None,
    more_work: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Re-hash every blob; quarantine the corrupt ones, check that every blob a branch
    (or its history gc keeps) references is there, and fetch back what is not.

    more_work(n): n blobs to hash; progress(n): n more hashed. Runs on a worker thread;
    `client` downloads on its event loop.
    """
    report = VerifyReport()
    blobs = list(store.iterate())
    if more_work:
        more_work(len(blobs))
    for sha256 in blobs:
        report.checked += 1
        if file_sha256(store.local_path(sha256)) != sha256:
            store.move_to_quarantine(sha256)
            report.corrupt.append(sha256)
        if progress:
            progress(1)
    referenced = _branch_blobs(db)
    report.missing = sorted(
        sha256 for sha256 in referenced if sha256 not in report.corrupt and not store.has(sha256)
    )
    wanted = report.corrupt + report.missing
    sources = {sha256: _upstream_paths(config, db, sha256) for sha256 in wanted}
    if sources:
        refetches = (_refetch(client, store, *item) for item in sources.items())
        fetched = client.wait_for(client.bounded(refetches))
        for sha256, ok in zip(sources, fetched, strict=True):
            (report.refetched if ok else report.lost).append(sha256)
    for sha256 in report.lost:
        for branch in sorted(referenced.get(sha256, ())):
            report.broken_branches.setdefault(branch, []).append(sha256)
    _save_branch_checks(db, set(report.lost))
    return report


def _save_branch_checks(db: sqlite_utils.Database, lost: set[str]) -> None:
    """Per branch, whether every blob of the manifest it serves is there now: what the
    status page shows until the next verify."""
    now = time.time()
    rows = []
    for branch in queries.branch_rows(db):
        blobs = {entry["sha256"] for entry in queries.manifest_entries(db, branch["manifest_id"])}
        rows.append(
            {
                "branch": branch["name"],
                "manifest_id": branch["manifest_id"],
                "time": now,
                "blobs": len(blobs),
                "lost": len(blobs & lost),
            }
        )
    queries.save_branch_checks(db, rows)


def _branch_blobs(db: sqlite_utils.Database) -> dict[str, set[str]]:
    """sha256 → the branches whose manifest, previous manifest or recent history (what gc
    keeps: PROTECTED_HISTORY changes) lists it."""
    entries: dict[str, set[str]] = {}  # manifest → its blobs, read once each
    referenced: dict[str, set[str]] = {}
    for row in queries.branch_rows(db):
        branch = row["name"]
        history = queries.branch_history(db, branch, PROTECTED_HISTORY)
        manifests = {row["manifest_id"], row["previous_id"], *(h["manifest_id"] for h in history)}
        for manifest_id in manifests - {None}:
            if manifest_id not in entries:
                rows = queries.manifest_entries(db, manifest_id)
                entries[manifest_id] = {entry["sha256"] for entry in rows}
            for sha256 in entries[manifest_id]:
                referenced.setdefault(sha256, set()).add(branch)
    return referenced


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
