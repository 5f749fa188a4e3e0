"""Which blob a pinned or manifest path is: the resolver behind /pin/ and /manifest/.

A branch's pointer is read per request, so a promote takes effect for the next
request; during the branch's grace period a path the new manifest lacks comes
from the previous one; `by-hash` names resolve against every manifest in the
branch's recent history, being content-addressed. Nothing here asks an upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import sqlite_utils

from . import db as queries
from .archive import by_hash_sha256
from .config import Config
from .db import Database
from .errors import NotFound
from .manifest import SHORT_ID
from .store import FileStore

HISTORY_FOR_BY_HASH = 10
CACHED_MANIFESTS = 16


@dataclass(frozen=True)
class PinnedFile:
    sha256: str
    size: int
    manifest_id: str


class PinnedFiles:
    """Which blob a pinned or manifest path is; manifests are cached, branches are not."""

    def __init__(self, config: Config, database: Database, store: FileStore) -> None:
        self.config, self.database, self.store = config, database, store
        # Branch pointers are read on the loop from this connection: one indexed row,
        # microseconds, and always current (a promote is visible on the next request).
        self._loop_db: sqlite_utils.Database = queries.connect(database.path)
        self._manifests: OrderedDict[str, dict[tuple[str, str], tuple[str, int]]] = OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}

    def close(self) -> None:
        self._loop_db.conn.close()

    async def resolve_pinned(self, branch: str, upstream: str, path: str) -> PinnedFile:
        row = queries.branch_row(self._loop_db, branch)
        if row is None:
            names = [r["name"] for r in queries.branch_rows(self._loop_db)]
            raise NotFound(
                f"no branch named {branch!r} (branches: {', '.join(names) or 'none'})",
                "promote a manifest to it with `debcache promote BRANCH MANIFEST`",
            )
        current = row["manifest_id"]
        found = await self._lookup(current, upstream, path)
        if found is None and row["previous_id"] and self._in_grace(branch, row["changed"]):
            found = await self._lookup(row["previous_id"], upstream, path)
        if found is None and by_hash_sha256(path):
            found = await self._by_hash_in_history(branch, upstream, path)
        if found is None:
            raise NotFound(
                f"{upstream}/{path} is not in manifest {current[:SHORT_ID]} of branch {branch}",
                "record an install that fetches it (http://NAME@cache:3142/ as its proxy), then "
                f"`debcache freeze NAME --promote {branch}`",
            )
        return found

    async def resolve_manifest(self, manifest_id: str, upstream: str, path: str) -> PinnedFile:
        if queries.manifest_row(self._loop_db, manifest_id) is None:
            raise NotFound(
                f"no manifest {manifest_id}", "list them with `debcache manifests` (full ids only)"
            )
        found = await self._lookup(manifest_id, upstream, path)
        if found is None:
            raise NotFound(
                f"{upstream}/{path} is not in manifest {manifest_id[:SHORT_ID]}",
                "manifests never change; freeze a new one that includes it",
            )
        return found

    def _in_grace(self, branch: str, changed: float) -> bool:
        options = self.config.branches.get(branch)
        grace = options.grace if options else 3600.0
        return time.time() - changed < grace

    async def _by_hash_in_history(self, branch: str, upstream: str, path: str) -> PinnedFile | None:
        digest = by_hash_sha256(path)
        history = queries.branch_history(self._loop_db, branch, HISTORY_FOR_BY_HASH)
        for manifest_id in dict.fromkeys(row["manifest_id"] for row in history):
            files = await self._files(manifest_id)
            for (entry_upstream, _), (sha256, size) in files.items():
                if entry_upstream == upstream and sha256 == digest:
                    return PinnedFile(sha256, size, manifest_id)
        return None

    async def _lookup(self, manifest_id: str, upstream: str, path: str) -> PinnedFile | None:
        found = (await self._files(manifest_id)).get((upstream, path))
        return PinnedFile(found[0], found[1], manifest_id) if found else None

    async def _files(self, manifest_id: str) -> dict[tuple[str, str], tuple[str, int]]:
        """The manifest's entries; loaded once, off the loop, shared by concurrent requests."""
        if manifest_id in self._manifests:
            self._manifests.move_to_end(manifest_id)
            return self._manifests[manifest_id]
        if manifest_id not in self._loading:
            self._loading[manifest_id] = asyncio.ensure_future(
                self.database.read(queries.manifest_entries, manifest_id)
            )
        try:
            rows = await asyncio.shield(self._loading[manifest_id])
        finally:
            self._loading.pop(manifest_id, None)
        files = {(r["upstream"], r["path"]): (r["sha256"], r["size"]) for r in rows}
        self._manifests[manifest_id] = files
        while len(self._manifests) > CACHED_MANIFESTS:
            self._manifests.popitem(last=False)
        return files
