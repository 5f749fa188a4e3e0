"""Which blob a pinned or manifest path is: the resolver behind /pin/ and /manifest/.

A branch's pointer is read per request, so a promote takes effect for the next
request; during the branch's grace period a path the new manifest lacks comes
from the previous one; `by-hash` names resolve against every manifest in the
branch's recent history, being content-addressed. Nothing here asks an upstream,
except for a branch with `fill = "verified"`: a pool file that the frozen
Packages lists but the manifest lacks is fetched, and served only if its sha256
matches the frozen index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp
import sqlite_utils

from . import db as queries
from .archive import (
    RELEASE_NAMES,
    PathKind,
    SignatureError,
    by_hash_sha256,
    classify_path,
    is_packages_index,
    packages_pool_entries,
    suite_of,
    verify_signature,
)
from .archive import upstream_url as url_of
from .config import Config, toml_table
from .db import Database
from .errors import (
    MissingKeyring,
    NotInManifest,
    UnknownBranch,
    UnknownManifest,
    UnknownUpstream,
    UnverifiableRelease,
    UpstreamUnavailable,
)
from .http_dates import http_date_timestamp
from .manifest import SHORT_ID
from .resign import resign_release
from .store import FileStore
from .upstream import download_blob

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
    """Which blob a pinned or manifest path is; manifests are cached, branches are not."""

    def __init__(
        self,
        config: Config,
        database: Database,
        store: FileStore,
        session: aiohttp.ClientSession,
    ) -> None:
        self.config, self.database, self.store, self.session = config, database, store, session
        # Branch pointers are read on the loop from this connection: one indexed row,
        # microseconds, and always current (a promote is visible on the next request).
        self._loop_db: sqlite_utils.Database = queries.connect(database.path)
        self._manifests: OrderedDict[str, dict[tuple[str, str], tuple[str, int]]] = OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}
        self._frozen_pools: OrderedDict[str, dict[tuple[str, str], tuple[str, int]]] = OrderedDict()
        self._filling: dict[str, asyncio.Future] = {}  # sha256 -> its download
        self._filled_from: set[tuple[str, str, str]] = set()  # (branch, manifest, upstream)
        self._resigning: dict[tuple[str, str, str], asyncio.Future] = {}

    def close(self) -> None:
        for download in self._filling.values():
            download.cancel()
        self._loop_db.conn.close()

    def _branch_row(self, branch: str) -> dict:
        row = queries.branch_row(self._loop_db, branch)
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
            found = await self._resigned(current, upstream, located[0], located[1])
            return dataclasses.replace(found, last_modified=row["changed"])
        found = await self._lookup(current, upstream, path)
        if found is None and row["previous_id"] and self._in_grace(branch, row["changed"]):
            found = await self._lookup(row["previous_id"], upstream, path)
        if found is None and by_hash_sha256(path):
            found = await self._by_hash_in_history(branch, upstream, path)
        if found is None and options and options.fill == "verified":
            found = await self._fill(current, upstream, path)
        if found is None:
            await self._check_upstream_in(current, upstream, path, f"/pin/{branch}/")
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

    async def _resigned(self, manifest_id: str, upstream: str, suite: str, name: str) -> PinnedFile:
        """The suite's Release re-signed by debcache; made once per manifest, then stored."""
        made = await self.database.read(queries.resigned_files, manifest_id, upstream, suite)
        if not made:
            key = (manifest_id, upstream, suite)
            if key not in self._resigning:
                self._resigning[key] = asyncio.ensure_future(
                    self._make_resigned(manifest_id, upstream, suite)
                )
                self._resigning[key].add_done_callback(lambda _: self._resigning.pop(key, None))
            made = await asyncio.shield(self._resigning[key])
        if name not in made:
            raise NotInManifest(
                f"manifest {manifest_id[:SHORT_ID]} has no Release for {upstream} {suite}",
                "freeze a recording that fetched dists/SUITE/InRelease",
            )
        return PinnedFile(made[name][0], made[name][1], manifest_id)

    async def _make_resigned(
        self, manifest_id: str, upstream: str, suite: str
    ) -> dict[str, tuple[str, int]]:
        files = await self._files(manifest_id)
        prefix = f"dists/{suite}/"
        in_release, release, release_gpg = (
            files.get((upstream, prefix + name)) for name in ("InRelease", "Release", "Release.gpg")
        )
        if in_release is None and release is None:
            return {}
        keyring = (
            self.config.upstreams[upstream].keyring if upstream in self.config.upstreams else None
        )

        def make() -> dict[str, tuple[str, int]]:
            # Verified again, never trusted: a manifest may hold a Release let in by
            # --allow-unverified or an imported lockfile, and debcache's signature is
            # one that clients trust.
            if keyring is None:
                raise MissingKeyring(
                    f"no keyring for upstream {upstream} to check its frozen Release",
                    f"configure keyring in {toml_table('upstreams', upstream)}",
                )
            blob = self.store.local_path
            try:
                if in_release is not None:
                    text = verify_signature(keyring, blob(in_release[0]))
                elif release_gpg is not None:
                    text = verify_signature(keyring, blob(release_gpg[0]), blob(release[0]))
                else:
                    raise SignatureError("the manifest has Release but no Release.gpg")
            except SignatureError as exc:
                raise UnverifiableRelease(
                    f"the frozen Release of {upstream} {suite} in manifest "
                    f"{manifest_id[:SHORT_ID]} does not verify ({exc}); debcache won't re-sign it",
                    "freeze a recording whose Release verifies with the upstream's keyring",
                ) from None
            signed = resign_release(self.config.data_dir, text)
            return {
                name: (self.store.put(content)[0], len(content))
                for name, content in signed.by_name().items()
            }

        made = await asyncio.to_thread(make)
        rows = [
            {"manifest_id": manifest_id, "upstream": upstream, "suite": suite, "name": name,
             "sha256": sha256, "size": size}
            for name, (sha256, size) in made.items()
        ]  # fmt: skip
        await self.database.write(queries.insert_resigned, rows)
        return made

    def first_fill(self, branch: str, manifest_id: str, upstream: str) -> bool:
        """True the first time (per server run) a branch fills from this manifest and upstream."""
        key = (branch, manifest_id, upstream)
        if key in self._filled_from:
            return False
        self._filled_from.add(key)
        return True

    async def _fill(self, manifest_id: str, upstream: str, path: str) -> PinnedFile | None:
        if classify_path(path) is not PathKind.POOL:
            return None
        listed = (await self._frozen_pool(manifest_id)).get((upstream, path))
        if listed is None:
            return None
        sha256, size = listed
        if not self.store.has(sha256):
            await self._download(upstream, path, sha256, size)
        return PinnedFile(sha256, size, manifest_id, filled=True)

    async def _frozen_pool(self, manifest_id: str) -> dict[tuple[str, str], tuple[str, int]]:
        """Pool Filename → (sha256, size) from the manifest's own Packages indices."""
        if manifest_id in self._frozen_pools:
            return self._frozen_pools[manifest_id]
        files = await self._files(manifest_id)
        indices = {
            sha256: upstream
            for (upstream, path), (sha256, _) in files.items()
            if is_packages_index(path) and "/by-hash/" not in path
        }

        def parse() -> dict[tuple[str, str], tuple[str, int]]:
            pool = {}
            for sha256, upstream in indices.items():
                for filename, size, digest in packages_pool_entries(self.store.local_path(sha256)):
                    pool[(upstream, filename)] = (digest, size)
            return pool

        pool = await asyncio.to_thread(parse)
        self._frozen_pools[manifest_id] = pool
        while len(self._frozen_pools) > CACHED_MANIFESTS:
            self._frozen_pools.popitem(last=False)
        return pool

    async def _download(self, upstream: str, path: str, sha256: str, size: int) -> None:
        """Fetch a blob the frozen index vouches for; one download however many ask."""
        if sha256 not in self._filling:
            known = self.config.upstreams.get(upstream)
            urls = [url_of(base, path) for base in known.urls] if known else []
            self._filling[sha256] = asyncio.ensure_future(
                download_blob(self.session, urls, sha256, size, self.store)
            )
            self._filling[sha256].add_done_callback(lambda _: self._filling.pop(sha256, None))
        failure = await asyncio.shield(self._filling[sha256])
        if failure:
            raise UpstreamUnavailable(
                f"{upstream}/{path} is in the frozen Packages index but could not be fetched "
                f"with sha256 {sha256[:SHORT_ID]}: {failure}",
                "add a mirror or snapshot URL that still has it to the upstream's urls",
            )

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
