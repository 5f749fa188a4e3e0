"""Re-signed Releases of frozen manifests: made once per manifest and suite, kept as blobs.

For a branch with `resign = true` the pinned `InRelease`, `Release` and
`Release.gpg` are the frozen Release re-signed by `resign.resign_release`. The
frozen signature is verified again first, never trusted; the three files are
stored and listed in the database, so every request gets the same bytes.
"""

from __future__ import annotations

import asyncio

from . import db as queries
from .archive import SignatureError, verify_signature
from .config import Config, toml_table
from .db import Database
from .errors import MissingKeyring, NotInManifest, UnverifiableRelease
from .inflight import SharedTasks
from .manifest import SHORT_ID
from .resign import resign_release
from .store import FileStore

# (upstream, path) -> (sha256, size): a manifest's entries.
Listing = dict[tuple[str, str], tuple[str, int]]
# Release file name -> (sha256, size) of its re-signed blob.
Resigned = dict[str, tuple[str, int]]


class ResignedReleases:
    """The re-signed Release files of (manifest, upstream, suite); made once, then stored."""

    def __init__(self, config: Config, database: Database, store: FileStore) -> None:
        self.config, self.database, self.store = config, database, store
        self._making: SharedTasks[tuple[str, str, str], Resigned] = SharedTasks()

    async def close(self) -> None:
        await self._making.close()

    async def release(
        self, manifest_id: str, files: Listing, upstream: str, suite: str, name: str
    ) -> tuple[str, int]:
        """(sha256, size) of the suite's `name` (InRelease, Release, Release.gpg) re-signed."""
        made = await self.database.read(queries.resigned_files, manifest_id, upstream, suite)
        if not made:
            made = await self._making.run(
                (manifest_id, upstream, suite),
                lambda: self._make(manifest_id, files, upstream, suite),
            )
        if name not in made:
            raise NotInManifest(
                f"manifest {manifest_id[:SHORT_ID]} has no Release for {upstream} {suite}",
                "freeze a recording that fetched dists/SUITE/InRelease",
            )
        return made[name]

    async def _make(self, manifest_id: str, files: Listing, upstream: str, suite: str) -> Resigned:
        prefix = f"dists/{suite}/"
        in_release, release, release_gpg = (
            files.get((upstream, prefix + name)) for name in ("InRelease", "Release", "Release.gpg")
        )
        if in_release is None and release is None:
            return {}
        keyring = (
            self.config.upstreams[upstream].keyring if upstream in self.config.upstreams else None
        )

        def make() -> Resigned:
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
        # Another server process may have signed the same Release at the same time: the
        # first stored wins, so every process serves the same bytes.
        return await self.database.read(queries.resigned_files, manifest_id, upstream, suite)
