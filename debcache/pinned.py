"""Which blob a pinned or manifest path is: the resolver behind /pin/ and /manifest/.

A branch's pointer is read per request, so a promote takes effect for the next
request; during the branch's grace period a path the new manifest lacks comes
from the previous one; `by-hash` names resolve against every manifest in the
branch's recent history, being content-addressed. Nothing here asks an upstream:
a `fill = "verified"` branch's missing pool files come from `fill.py`, the
Releases of a `resign = true` branch from `resigned.py`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from dataclasses import dataclass

import sqlite_utils

from . import db as queries
from .archive import RELEASE_NAMES, by_hash_sha256, suite_of
from .config import Config, toml_table
from .db import Database
from .errors import NotInManifest, UnknownBranch, UnknownManifest, UnknownUpstream
from .fill import Listing, VerifiedFill
from .http_dates import http_date_timestamp
from .inflight import SharedTasks
from .manifest import SHORT_ID
from .resigned import ResignedReleases
from .store import FileStore
from .upstream import UpstreamClient

HISTORY_FOR_BY_HASH = 10
CACHED_MANIFESTS = 16


@dataclass(frozen=True)
class PinnedFile:
    sha256: str
    size: int
    manifest_id: str
    filled: bool = False  # fetched by fill = "verified", not in the manifest
    last_modified: float = 0.0  # for If-Modified-Since: when this path last changed here
    warning: str | None = None  # e.g. an expired Release served as frozen


class PinnedFiles:
    """Which blob a pinned or manifest path is; manifests are cached, branch rows until the
    database changes."""

    def __init__(
        self, config: Config, database: Database, store: FileStore, client: UpstreamClient
    ) -> None:
        self.config, self.database, self.store = config, database, store
        # Branch pointers are read on the loop from this connection: one indexed row,
        # microseconds, and always current (a promote is visible on the next request).
        self._loop_db: sqlite_utils.Database = queries.connect(database.path)
        # Branch rows as of the database's data_version: read again once any other
        # connection (a promote by the API or the command line, another process)
        # commits, which a PRAGMA tells in a fraction of a query's cost.
        self._current_branch_rows: dict[str, dict] = {}
        self._branches_seen_at = -1
        self._manifests: OrderedDict[str, Listing] = OrderedDict()
        self._loading: SharedTasks[str, Listing] = SharedTasks()
        self.fill = VerifiedFill(config, store, client)
        self.resigned = ResignedReleases(config, database, store)

    async def close(self) -> None:
        """Cancel and await the fills, re-signings and loads under way; before the
        HTTP session and the database close."""
        await self.fill.close()
        await self.resigned.close()
        await self._loading.close()
        self._loop_db.conn.close()

    def _branch_row(self, branch: str) -> dict:
        row = self._current_branch_rows.get(branch)
        version = queries.data_version(self._loop_db)
        if row is None or version != self._branches_seen_at:
            row = queries.branch_row(self._loop_db, branch)
            if version != self._branches_seen_at:
                self._current_branch_rows.clear()
                self._branches_seen_at = version
            if row is not None:
                self._current_branch_rows[branch] = row
        if row is None:
            names = [r["name"] for r in queries.branch_rows(self._loop_db)]
            raise UnknownBranch(
                f"no branch named {branch!r} (branches: {', '.join(names) or 'none'})",
                f"promote a manifest to it with `debcache promote {branch} MANIFEST`",
            )
        return row

    async def pinned_suites(self, branch: str, upstream: str) -> tuple[str, list[str]]:
        """The manifest `branch` serves and the suites of `upstream` frozen in it."""
        current = self._branch_row(branch)["manifest_id"]
        await self._check_upstream_in(current, upstream, "", f"/pin/{branch}/")
        row = queries.manifest_row(self._loop_db, current)
        releases = json.loads(row["releases"]) if row and row["releases"] else {}
        suites = sorted(key.split(" ", 1)[1] for key in releases if key.startswith(f"{upstream} "))
        return current, suites

    async def resolve_pinned(self, branch: str, upstream: str, path: str) -> PinnedFile:
        row = self._branch_row(branch)
        current = row["manifest_id"]
        options = self.config.branches.get(branch)
        located = suite_of(path)
        if options and options.resign and located and located[1] in RELEASE_NAMES:
            files = await self._files(current)
            sha256, size = await self.resigned.release(current, files, upstream, *located)
            return PinnedFile(sha256, size, current, last_modified=row["changed"])
        found = await self._lookup(current, upstream, path)
        if found is None and row["previous_id"] and self._in_grace(branch, row["changed"]):
            found = await self._lookup(row["previous_id"], upstream, path)
        if found is None and by_hash_sha256(path):
            found = await self._by_hash_in_history(branch, upstream, path)
        if found is None and options and options.fill == "verified":
            filled = await self.fill.fill(current, await self._files(current), upstream, path)
            if filled is not None:
                found = PinnedFile(*filled, current, filled=True)
        if found is None:
            await self._check_upstream_in(current, upstream, path, f"/pin/{branch}/")
            self._check_left_out(current, branch, upstream, path)
            raise NotInManifest(
                f"{upstream}/{path} is not in manifest {current[:SHORT_ID]} of branch {branch}",
                "record an install that fetches it (http://NAME@cache:3142/ as its proxy), then "
                f"`debcache freeze NAME --promote {branch}`",
            )
        # A promote or rollback may put older content under the same path, so a pinned
        # path is dated by the branch's last change (each change has a second of its own).
        warning = None
        if located and located[1] in RELEASE_NAMES:
            warning = self._expiry_warning(branch, found.manifest_id, upstream, located[0])
        return dataclasses.replace(found, last_modified=row["changed"], warning=warning)

    def _check_left_out(self, manifest_id: str, branch: str, upstream: str, path: str) -> None:
        """NotInManifest with freeze's reason when a recording fetched the file but freeze left
        it out (a probe it could not verify): recording it again would not help."""
        row = queries.manifest_row(self._loop_db, manifest_id)
        named = f"{upstream}/{path}: "
        warnings = json.loads(row.get("warnings") or "[]") if row else []
        probes = [w for w in warnings if w.startswith(named) and "a suite probe" in w]
        reason = probes[0][len(named) :] if probes else None
        if reason is not None:
            raise NotInManifest(
                f"{upstream}/{path} is not in manifest {manifest_id[:SHORT_ID]} of branch "
                f"{branch}: a recording fetched it, but freeze could not verify it ({reason})",
                "fix the upstream's signature or keyring and freeze again, or freeze with "
                "--allow-unverified to include it marked unverified",
            )

    def _expiry_warning(
        self, branch: str, manifest_id: str, upstream: str, suite: str
    ) -> str | None:
        """Why apt will refuse this frozen Release, and the remedies, if it has expired."""
        row = queries.manifest_row(self._loop_db, manifest_id)
        releases = json.loads(row["releases"]) if row else {}
        valid_until = releases.get(f"{upstream} {suite}", {}).get("valid_until")
        expires = http_date_timestamp(valid_until)
        if expires is None or expires > time.time():
            return None
        # A probe (the Release alone): d-i's mirror check ignores Valid-Until.
        if not queries.suite_beyond_release(self._loop_db, manifest_id, upstream, suite):
            return None
        return (
            f"branch {branch} serves the Release of {upstream} {suite} frozen in manifest "
            f"{manifest_id[:SHORT_ID]}, which expired on {valid_until}: apt refuses it unless "
            "the source has [check-valid-until=no]; or set resign = true in "
            f"{toml_table('branches', branch)}"
        )

    async def resolve_manifest(self, manifest_id: str, upstream: str, path: str) -> PinnedFile:
        manifest = queries.manifest_row(self._loop_db, manifest_id)
        if manifest is None:
            raise UnknownManifest(
                f"no manifest {manifest_id}", "list them with `debcache manifests` (full ids only)"
            )
        found = await self._lookup(manifest_id, upstream, path)
        if found is None:
            await self._check_upstream_in(manifest_id, upstream, path, f"/manifest/{manifest_id}/")
            raise NotInManifest(
                f"{upstream}/{path} is not in manifest {manifest_id[:SHORT_ID]}",
                "manifests never change; freeze a new one that includes it",
            )
        return dataclasses.replace(found, last_modified=manifest["created"])

    async def _check_upstream_in(
        self, manifest_id: str, upstream: str, path: str, prefix: str
    ) -> None:
        """UnknownUpstream naming the manifest's upstreams when `upstream` is none of them: then
        the URL is mistyped, and recording an install would not help."""
        upstreams = sorted({name for name, _ in await self._files(manifest_id)})
        if upstream in upstreams:
            return
        remedy = f"write one of them after {prefix}"
        if len(upstreams) == 1:
            remedy = f"write {prefix}{upstreams[0]}/{path}"
        raise UnknownUpstream(
            f"no upstream named {upstream!r} in manifest {manifest_id[:SHORT_ID]}, which "
            f"holds files of {', '.join(upstreams) or 'none'}",
            remedy,
        )

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

    async def authenticating_entries(
        self, manifest_id: str, upstream: str
    ) -> list[tuple[str, str, int]]:
        """(path, sha256, size) of the manifest's dists/ files of one upstream."""
        files = await self._files(manifest_id)
        return [
            (path, sha256, size)
            for (entry_upstream, path), (sha256, size) in sorted(files.items())
            if entry_upstream == upstream and path.startswith("dists/")
        ]

    async def _lookup(self, manifest_id: str, upstream: str, path: str) -> PinnedFile | None:
        found = (await self._files(manifest_id)).get((upstream, path))
        return PinnedFile(found[0], found[1], manifest_id) if found else None

    async def _files(self, manifest_id: str) -> Listing:
        """The manifest's entries; loaded once, off the loop, shared by concurrent requests."""
        if manifest_id in self._manifests:
            self._manifests.move_to_end(manifest_id)
            return self._manifests[manifest_id]
        return await self._loading.run(manifest_id, lambda: self._load(manifest_id))

    async def _load(self, manifest_id: str) -> Listing:
        rows = await self.database.read(queries.manifest_entries, manifest_id)
        files = {(r["upstream"], r["path"]): (r["sha256"], r["size"]) for r in rows}
        self._manifests[manifest_id] = files
        while len(self._manifests) > CACHED_MANIFESTS:
            self._manifests.popitem(last=False)
        return files
