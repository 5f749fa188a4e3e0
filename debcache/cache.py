"""The live cache: which archive path is which blob, and when to ask the upstream.

Pool and by-hash files never change, so a cached copy is served as it is.
Everything else (InRelease, Packages, installer images) is revalidated with a
conditional GET on every request, coalesced with any revalidation under way or
finished within the upstream's `coalesce_window` (1 s), and the cached copy is
served stale only when no upstream URL answers.

Nothing here speaks HTTP to clients: `LiveCache.fetch` returns an outcome that
the server turns into a response.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from . import db as queries
from .archive import (
    ReleaseInfo,
    SignatureError,
    by_hash_sha256,
    classify_path,
    is_packages_index,
    packages_pool_entries,
    parse_release,
    suite_of,
    verify_signature,
)
from .config import Upstream
from .db import Database
from .errors import UnreadableIndex, UpstreamUnavailable
from .inflight import CompletedBody, Download, DownloadPlan, Downloads, ExpectedContent
from .store import FileStore
from .upstream import UpstreamClient, Validators, read_limited

log = logging.getLogger(__name__)
EXPECTED_SIZE_WAIT = 10.0  # seconds a by-hash download waits for its Release entry
INDEXING_WAIT = 10.0  # seconds a pool miss waits for a Packages index being read
INDEX_AGAIN_AFTER = 60.0  # seconds before another variant of one Packages directory is read


@dataclass(frozen=True)
class CachedFile:
    upstream: str
    path: str
    sha256: str
    size: int
    last_modified: str | None
    etag: str | None
    fetched_at: float
    validated_at: float | None = None  # the last 304 (wall clock), for worker processes

    def fresh_for(self, window: float) -> bool:
        """Fetched or validated less than `window` seconds ago (by any process)."""
        return time.time() - max(self.fetched_at, self.validated_at or 0.0) < window


@dataclass(frozen=True)
class FromStore:
    """Serve this blob: a hit, or a stale copy because no upstream answered."""

    file: CachedFile
    blob: Path
    source: str  # "hit" or "stale"
    warning: str | None = None


@dataclass(frozen=True)
class Streaming:
    """Stream this download to the client while it arrives."""

    download: Download
    source: str  # "miss" for the request that started it, "coalesced" for the others


@dataclass(frozen=True)
class PassedOn:
    """The upstream's own answer (4xx, or a 5xx with nothing cached), never cached."""

    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Relayed:
    """Not in this worker's reach: the fetcher process answers it (and logs it)."""

    source: str = "relayed"


NOT_MODIFIED = object()
RELAYED = Relayed()
Outcome = FromStore | Streaming | PassedOn | Relayed


class LiveCache:
    def __init__(
        self, store: FileStore, database: Database, downloads: Downloads, client: UpstreamClient
    ) -> None:
        self.store = store
        self.database = database
        self.downloads = downloads
        self.client = client
        self._files: dict[tuple[str, str], CachedFile] = {}
        self._indexing: dict[str, set[asyncio.Task]] = {}  # upstream -> Packages being indexed
        self._validated_at: dict[tuple[str, str], float] = {}  # volatile files, loop time
        self._indexed_at: dict[tuple[str, str], float] = {}  # Packages directories, loop time
        self._releases: dict[tuple[str, str], ReleaseInfo] = {}  # (upstream, signed sha256)

    async def load(self) -> None:
        """Read the path → blob map into memory, so hits need no database round trip."""
        rows = await self.database.read(queries.load_cached)
        self._files = {(r["upstream"], r["path"]): CachedFile(**r) for r in rows}

    def lookup(self, upstream: str, path: str) -> tuple[CachedFile, Path] | None:
        """The cached file and its blob, if both are there."""
        file = self._files.get((upstream, path))
        if file is None:
            return None
        blob = self.store.local_path(file.sha256)
        return (file, blob) if blob.is_file() else None

    def forget(self, upstream: str, path: str) -> None:
        """Nothing to forget: `lookup` checks that the blob is there each time."""

    async def fetch(self, upstream: Upstream, path: str) -> Outcome:
        """Where the body of `path` comes from for this request."""
        cached = self.lookup(upstream.name, path)
        key = (upstream.name, path)
        if cached and (classify_path(path).immutable or self._just_validated(upstream, key)):
            return FromStore(*cached, "hit")
        future = self.downloads.under_way(key)
        joined = future is not None
        if future is None:
            future = self.downloads.start(key, partial(self._request, upstream, path, cached))
        try:
            # shield: a client hanging up must not cancel what other clients wait for.
            outcome = await asyncio.shield(future)
        except UpstreamUnavailable as exc:
            if cached:
                return FromStore(*cached, "stale", warning=str(exc))
            raise
        if isinstance(outcome, Download):
            return Streaming(outcome, "coalesced" if joined else "miss")
        if outcome is NOT_MODIFIED:
            self._validated_at[key] = asyncio.get_running_loop().time()
            if upstream.coalesce_window > 0:  # worker processes serve it within the window too
                self.database.write_soon(queries.mark_validated, *key, time.time())
            return FromStore(*(self.lookup(upstream.name, path) or cached), "hit")
        if outcome.status >= 500 and cached:
            return FromStore(*cached, "stale", warning=f"upstream answered {outcome.status}")
        return outcome

    def _just_validated(self, upstream: Upstream, key: tuple[str, str]) -> bool:
        validated_at = self._validated_at.get(key)
        if validated_at is None:
            return False
        return asyncio.get_running_loop().time() - validated_at < upstream.coalesce_window

    async def _request(
        self, upstream: Upstream, path: str, cached: tuple[CachedFile, Path] | None
    ) -> object:
        validators = Validators(cached[0].last_modified, cached[0].etag) if cached else None
        # Looked up while the request and the body travel; needed only to verify the end.
        expected = asyncio.ensure_future(self.expected_content(upstream, path))
        try:
            response = await self.client.get(upstream, path, validators)
        except BaseException:
            expected.cancel()
            raise
        if response.status == 304 and cached:
            expected.cancel()
            response.release()
            return NOT_MODIFIED
        if response.status != 200:
            expected.cancel()
            body = await read_limited(response)
            response.release()
            return PassedOn(response.status, body, response.content_type or "text/plain")
        try:
            if by_hash_sha256(path):
                # A by-hash body stops at the size its Release entry gives: know it before
                # the first byte. The lookup ran while the request travelled (gpgv once
                # per Release content), so this is seldom a wait at all.
                await asyncio.wait([expected], timeout=EXPECTED_SIZE_WAIT)
            temp = self.store.create_temp()
        except BaseException:
            expected.cancel()
            response.release()
            raise
        download = Download(
            (upstream.name, path), response, temp, upstream.max_file_size, upstream.deadline
        )
        return DownloadPlan(download, expected, partial(self._commit, upstream, path, temp))

    async def expected_content(self, upstream: Upstream, path: str) -> ExpectedContent | None:
        """The sha256 a body must have: its by-hash name (with the size its suite's verified
        Release lists for it, when one is cached), or a cached Packages entry."""
        digest = by_hash_sha256(path)
        if digest:
            size = await asyncio.to_thread(self._listed_size, upstream, path, digest)
            return ExpectedContent(digest, size, "its by-hash name")
        name = upstream.name
        if classify_path(path).immutable:
            # A .deb asked for right after its Packages arrived is checked against it too,
            # if indexing finishes in reasonable time (a huge index must not stall installs).
            pending = self._indexing.get(name, set())
            if pending:
                await asyncio.wait(list(pending), timeout=INDEXING_WAIT)
            listed = await self.database.read(queries.pool_hash, name, path)
            if listed:
                return ExpectedContent(listed[0], listed[1], f"a cached Packages index of {name}")
        return None

    def _commit(self, upstream: Upstream, path: str, temp: Path, body: CompletedBody) -> Path:
        blob = self.store.commit(temp, body.sha256)
        name = upstream.name
        file = CachedFile(
            name, path, body.sha256, body.size, body.last_modified, body.etag, time.time()
        )
        self._files[(name, path)] = file
        self._validated_at[(name, path)] = asyncio.get_running_loop().time()
        self.database.write_soon(queries.upsert_cached, asdict(file))
        self.downloads.spawn(asyncio.to_thread(self.store.sync_directory, blob.parent))
        if is_packages_index(path) and self._worth_indexing(name, path):
            task = self.downloads.spawn(self._index_packages(upstream, path, body.sha256))
            pending = self._indexing.setdefault(name, set())
            pending.add(task)
            task.add_done_callback(pending.discard)
        return blob

    def _worth_indexing(self, upstream: str, path: str) -> bool:
        """One variant per directory: apt and debootstrap may fetch Packages.xz, .gz and the
        by-hash name of the same content within seconds of each other."""
        directory = _directory_of(path)
        now = asyncio.get_running_loop().time()
        if (
            now - self._indexed_at.get((upstream, directory), -INDEX_AGAIN_AFTER)
            < INDEX_AGAIN_AFTER
        ):
            return False
        self._indexed_at[(upstream, directory)] = now
        return True

    async def _index_packages(self, upstream: Upstream, path: str, sha256: str) -> None:
        """Remember what each pool file listed in a Packages index must hash to, if the
        verified Release of its suite lists it (see `_unverified`)."""
        try:
            why = await asyncio.to_thread(self._unverified, upstream, path, sha256)
            if why:
                log.warning("not indexing %s/%s: %s", upstream.name, path, why)
                self._indexed_at.pop((upstream.name, _directory_of(path)), None)  # try another
                return
            blob = self.store.local_path(sha256)
            entries = await asyncio.to_thread(lambda: list(packages_pool_entries(blob)))
            count = await self.database.write(queries.add_pool_hashes, upstream.name, entries)
            log.info("indexed %d pool files from %s/%s", count, upstream.name, path)
        except UnreadableIndex as exc:
            log.warning("could not index %s/%s: %s", upstream.name, path, exc)
        except Exception:
            log.exception("could not index %s/%s", upstream.name, path)

    def _listed_size(self, upstream: Upstream, path: str, sha256: str) -> int | None:
        """The size the verified Release of the suite lists for a by-hash file, so its
        download stops there (None: no verified Release cached; `max_file_size` bounds it).
        Runs gpgv the first time a Release content is seen: call it on a thread."""
        where = suite_of(path)
        info = self._verified_release(upstream, where[0]) if where else None
        if info is None or isinstance(info, str):
            return None
        listed = info.by_sha256(sha256, _directory_of(where[1]))
        return listed.size if listed else None

    def _unverified(self, upstream: Upstream, path: str, sha256: str) -> str | None:
        """Why a Packages index must not be indexed, or None: the cached InRelease (or
        Release + Release.gpg) of its suite verifies with the upstream's keyring and lists
        this content for its directory. A by-hash name alone proves nothing: anyone can
        name content by its own digest. Runs gpgv: call it on a thread."""
        where = suite_of(path)
        if where is None:
            return "not below dists/SUITE/"
        suite, below = where
        directory = _directory_of(below)
        info = self._verified_release(upstream, suite)
        if isinstance(info, str):
            return info
        if info.by_sha256(sha256, directory) is None:
            return f"the verified Release of {suite} does not list sha256 {sha256[:12]}"
        return None

    def _verified_release(self, upstream: Upstream, suite: str) -> ReleaseInfo | str:
        """The cached Release of a suite as its signature verifies it, or why there is none."""
        if upstream.keyring is None:
            return f"upstream {upstream.name} has no keyring to verify its Release"
        inrelease = self.lookup(upstream.name, f"dists/{suite}/InRelease")
        release = self.lookup(upstream.name, f"dists/{suite}/Release")
        signature = self.lookup(upstream.name, f"dists/{suite}/Release.gpg")
        if inrelease:
            signed, data = inrelease, None
        elif release and signature:
            signed, data = signature, release
        else:
            return f"no InRelease (or Release and Release.gpg) of {suite} cached"
        key = (upstream.name, (data or signed)[0].sha256)
        if key not in self._releases:
            try:
                text = verify_signature(upstream.keyring, signed[1], data and data[1])
            except (SignatureError, OSError, subprocess.SubprocessError) as exc:
                return f"its Release does not verify ({exc})"
            self._releases[key] = parse_release(text)
        return self._releases[key]


def _directory_of(path: str) -> str:
    """The directory of an index, also for its by-hash name (`.../by-hash/SHA256/<hex>`)."""
    head, by_hash, _ = path.partition("/by-hash/")
    return head if by_hash else path.rpartition("/")[0]


class StoreHits:
    """A worker process's view of the live cache: what it may serve from the store.

    The fetcher process commits downloads to the store and the database; a worker
    finds them there (one indexed row, read on the loop). A pool or by-hash path
    always names the same content, so it is remembered; a volatile file (InRelease,
    Packages) is served only while the fetcher's last download or revalidation of
    it is younger than the upstream's coalesce_window, as the fetcher would serve
    it. Anything else is RELAYED: freshness beyond that is the fetcher's to decide.
    """

    REMEMBERED = 200_000  # paths, at most (about 60 MB): then it starts over

    def __init__(self, store: FileStore, database_path: Path) -> None:
        self.store = store
        self._db = queries.connect(database_path)
        self._files: dict[tuple[str, str], tuple[CachedFile, Path]] = {}

    def close(self) -> None:
        self._db.conn.close()

    def _stored(self, upstream: str, path: str) -> tuple[CachedFile, Path] | None:
        row = queries.cached_row(self._db, upstream, path)
        if row is None:
            return None
        file = CachedFile(**row)
        blob = self.store.local_path(file.sha256)
        return (file, blob) if blob.is_file() else None  # else evicted or quarantined

    def forget(self, upstream: str, path: str) -> None:
        self._files.pop((upstream, path), None)

    async def fetch(self, upstream: Upstream, path: str) -> Outcome:
        """A remembered path is served without a stat: opening its blob finds it gone
        (BlobGone), and then `forget` makes the next request read the database again."""
        key = (upstream.name, path)
        found = self._files.get(key)
        if found is not None:
            return FromStore(*found, "hit")
        found = self._stored(*key)
        if found is None:
            return RELAYED
        if classify_path(path).immutable:
            if len(self._files) >= self.REMEMBERED:
                self._files.clear()
            self._files[key] = found
            return FromStore(*found, "hit")
        return FromStore(*found, "hit") if found[0].fresh_for(upstream.coalesce_window) else RELAYED
