"""Branches: mutable names that point at one manifest each, with every change kept.

`promote` and `rollback` are single SQLite transactions, so a reader sees the
old pointer or the new one, never a mix, and the server sees the change on the
next request. The previous manifest stays reachable for the branch's grace
period, so an install that straddles a promote does not fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from . import db as queries
from .config import NAME_PATTERN
from .errors import BlobsMissing, InvalidName, NoEarlierManifest, UnknownBranch
from .manifest import SHORT_ID, Manifest, load_manifest, near_matches, resolve_manifest_id
from .store import FileStore, file_sha256


@dataclass(frozen=True)
class Change:
    branch: str
    manifest_id: str
    previous_id: str | None


def check_branch_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"{name!r} is not a valid branch name",
            "use up to 64 letters, digits, '.', '_', '+' and '-' (no '/', '..' or spaces)",
        )
    return name


def promote(
    db: sqlite_utils.Database,
    store: FileStore,
    branch: str,
    manifest_ref: str,
    note: str | None = None,
    progress: Callable[[int], None] | None = None,
    more_work: Callable[[int], None] | None = None,
) -> Change:
    """Point `branch` at a manifest whose blobs are all present and intact.

    more_work(n): n blobs to check; progress(n): n more checked.
    """
    check_branch_name(branch)
    manifest = load_manifest(db, resolve_manifest_id(db, manifest_ref))
    with store.exclusive():
        check_blobs_intact(store, manifest, progress, more_work)
        previous = queries.set_branch(db, branch, "promote", manifest.id, note, time.time())
    return Change(branch, manifest.id, previous)


def rollback(
    db: sqlite_utils.Database,
    store: FileStore,
    branch: str,
    to: str | None = None,
    note: str | None = None,
) -> Change:
    """Point `branch` back at the manifest before its current one, or at `to`."""
    current = current_manifest_id(db, branch)
    if to is None:
        earlier = [
            row["manifest_id"]
            for row in queries.branch_history(db, branch)
            if row["manifest_id"] != current
        ]
        if not earlier:
            raise NoEarlierManifest(
                f"branch {branch} has no earlier manifest to roll back to",
                f"promote another one with `debcache promote {branch} ID`",
            )
        target = earlier[0]
    else:
        target = resolve_manifest_id(db, to)
    manifest = load_manifest(db, target)
    with store.exclusive():
        check_blobs_intact(store, manifest)
        previous = queries.set_branch(db, branch, "rollback", manifest.id, note, time.time())
    return Change(branch, manifest.id, previous)


def current_manifest_id(db: sqlite_utils.Database, branch: str) -> str:
    row = queries.branch_row(db, check_branch_name(branch))
    if row is None:
        names = [r["name"] for r in queries.branch_rows(db)]
        raise UnknownBranch(
            f"no branch named {branch!r}{near_matches(branch, names)}"
            f" (branches: {', '.join(names) or 'none'})",
            f"create it with `debcache promote {branch} MANIFEST`",
        )
    return row["manifest_id"]


def check_blobs_intact(
    store: FileStore,
    manifest: Manifest,
    progress: Callable[[int], None] | None = None,
    more_work: Callable[[int], None] | None = None,
) -> None:
    """Re-hash every blob of the manifest; refuse if one is missing or corrupt."""
    missing, corrupt = [], []
    blobs = sorted({e.sha256 for e in manifest.entries})
    if more_work:
        more_work(len(blobs))
    for sha256 in blobs:
        blob = store.local_path(sha256)
        if not blob.is_file():
            missing.append(f"{sha256[:SHORT_ID]} missing")
        elif file_sha256(blob) != sha256:
            corrupt.append(f"{sha256[:SHORT_ID]} corrupt")
        if progress:
            progress(1)
    if missing or corrupt:
        problems = missing + corrupt
        raise BlobsMissing(
            f"manifest {manifest.short_id} has {len(problems)} blob(s) missing or corrupt "
            f"({', '.join(problems[:5])})",
            restore_remedy(manifest.short_id, bool(missing), bool(corrupt)),
        )


def restore_remedy(short_id: str, missing: bool, corrupt: bool) -> str:
    """How to get a manifest's blobs back: gc evicts (import fetches them again from the
    upstreams or another debcache); verify only re-fetches blobs it finds corrupt."""
    lockfile = f"{short_id}.lock.json"
    remedies = []
    if missing:
        remedies.append(
            f"fetch the missing ones with `debcache manifests export {short_id} > {lockfile} "
            f"&& debcache manifests import {lockfile}` (from the upstreams while they still "
            "have those files; --from URL takes them from another debcache)"
        )
    if corrupt:
        remedies.append("run `debcache verify` to quarantine and re-fetch the corrupt ones")
    return "; ".join(remedies) + "; or record the install again and freeze it"
