"""`fill = "verified"`: a pool file the frozen Packages vouches for, fetched when a pin lacks it.

A branch with `fill = "verified"` serves a pool file that its manifest lacks but
whose frozen Packages lists it: fetched from the upstream (through the app's
`UpstreamClient`: its timeout, failover and metrics), kept only if its sha256
matches the frozen index. The server logs it under the branch's name, so that
`debcache freeze BRANCH` can take it into the next manifest.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from .archive import PathKind, classify_path, is_packages_index, packages_pool_entries
from .config import Config
from .errors import UpstreamUnavailable
from .inflight import SharedTasks
from .manifest import SHORT_ID
from .store import FileStore
from .upstream import DownloadFailure, UpstreamClient

CACHED_POOLS = 16
# (upstream, path) -> (sha256, size): a manifest's entries, or its frozen pool listing.
Listing = dict[tuple[str, str], tuple[str, int]]


class VerifiedFill:
    """Pool files fetched for fill branches; one download per blob, owned until `close()`."""

    def __init__(self, config: Config, store: FileStore, client: UpstreamClient) -> None:
        self.config, self.store, self.client = config, store, client
        self._frozen_pools: OrderedDict[str, Listing] = OrderedDict()
        self._downloads: SharedTasks[str, DownloadFailure | None] = SharedTasks()
        self._filled_from: set[tuple[str, str, str]] = set()  # (branch, manifest, upstream)

    async def close(self) -> None:
        await self._downloads.close()

    async def fill(
        self, manifest_id: str, files: Listing, upstream: str, path: str
    ) -> tuple[str, int] | None:
        """(sha256, size) of `path` stored, if the manifest's frozen Packages list it.

        `files` are the manifest's entries; raises UpstreamUnavailable when the
        listed file cannot be fetched with the listed hash.
        """
        if classify_path(path) is not PathKind.POOL:
            return None
        listed = (await self._frozen_pool(manifest_id, files)).get((upstream, path))
        if listed is None:
            return None
        sha256, size = listed
        if not self.store.has(sha256):
            await self._download(upstream, path, sha256, size)
        return sha256, size

    def first_fill(self, branch: str, manifest_id: str, upstream: str) -> bool:
        """True the first time (per server run) a branch fills from this manifest and upstream."""
        key = (branch, manifest_id, upstream)
        if key in self._filled_from:
            return False
        self._filled_from.add(key)
        return True

    async def _frozen_pool(self, manifest_id: str, files: Listing) -> Listing:
        """Pool Filename → (sha256, size) from the manifest's own Packages indices."""
        if manifest_id in self._frozen_pools:
            return self._frozen_pools[manifest_id]
        indices = {
            sha256: upstream
            for (upstream, path), (sha256, _) in files.items()
            if is_packages_index(path) and "/by-hash/" not in path
        }

        def parse() -> Listing:
            pool = {}
            for sha256, upstream in indices.items():
                for filename, size, digest in packages_pool_entries(self.store.local_path(sha256)):
                    pool[(upstream, filename)] = (digest, size)
            return pool

        pool = await asyncio.to_thread(parse)
        self._frozen_pools[manifest_id] = pool
        while len(self._frozen_pools) > CACHED_POOLS:
            self._frozen_pools.popitem(last=False)
        return pool

    async def _download(self, upstream: str, path: str, sha256: str, size: int) -> None:
        """Fetch a blob the frozen index vouches for; one download however many ask."""
        known = self.config.upstreams.get(upstream)

        async def download() -> DownloadFailure | None:
            if known is None:
                return DownloadFailure("no URL to fetch it from")  # an upstream since removed
            return await self.client.download_blob(known, path, self.store, sha256, size)

        failure = await self._downloads.run(sha256, download)
        if failure:
            raise UpstreamUnavailable(
                f"{upstream}/{path} is in the frozen Packages index but could not be fetched "
                f"with sha256 {sha256[:SHORT_ID]}: {failure}",
                "add a mirror or snapshot URL that still has it to the upstream's urls",
            )
