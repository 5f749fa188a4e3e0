"""Opening a blob to serve it: never a corrupt one as good.

Every open checks the file's size (an fstat of the descriptor that is sent from)
against the size the database or manifest knows, and the first serve of a blob
after each start hashes it, off the loop; blobs this process committed were
hashed while being written and count as checked. A mismatch moves the blob to
`<data>/quarantine/` and raises `CorruptBlob`: the live route then fetches the
file again, the pinned routes answer 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import BinaryIO

from .errors import BlobGone, CorruptBlob
from .inflight import SharedTasks
from .store import HASH_CHUNK, FileStore

log = logging.getLogger(__name__)
REMEDY = (
    "run `debcache verify` to fetch it again from the upstreams, or "
    "`debcache manifests import LOCKFILE --from` another site"
)


class CheckedBlobs:
    """Opens blobs for sending, checked; one hash per blob and start, shared by requests."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self._hashing: SharedTasks[tuple[str, int], str] = SharedTasks()

    async def open(self, sha256: str, size: int | None) -> BinaryIO:
        """The blob, open for reading, of `size` bytes (if known) and hashing to `sha256`."""
        try:
            blob_file = open(self.store.blob_name(sha256), "rb")  # noqa: SIM115 (the caller's)
        except FileNotFoundError:
            raise BlobGone(
                f"blob {sha256} is not in the store (evicted by gc, or quarantined as corrupt)",
                REMEDY,
            ) from None
        try:
            stat = os.fstat(blob_file.fileno())
            if size is not None and stat.st_size != size:
                await self._reject(sha256, stat.st_ino, f"{stat.st_size} bytes, not {size}")
            if sha256 not in self.store.verified:
                fd = blob_file.fileno()
                # The descriptor is duplicated now, while it is open: the hash outlives a
                # request whose client hangs up.
                actual = await self._hashing.run(
                    (sha256, stat.st_ino), lambda: asyncio.to_thread(_hash_and_close, os.dup(fd))
                )
                if actual != sha256:
                    await self._reject(sha256, stat.st_ino, f"its content hashes to {actual}")
                self.store.verified.add(sha256)
        except BaseException:
            blob_file.close()
            raise
        return blob_file

    async def close(self) -> None:
        await self._hashing.close()

    async def _reject(self, sha256: str, inode: int, why: str) -> None:
        moved = await asyncio.to_thread(self.store.move_to_quarantine, sha256, inode)
        where = f"moved to {self.store.quarantine}" if moved else "replaced meanwhile"
        log.error("blob %s is corrupt (%s); %s", sha256, why, where)
        raise CorruptBlob(f"blob {sha256} in the store is corrupt ({why}); {where}", REMEDY)


def _hash_and_close(fd: int) -> str:
    """The sha256 of an open file, read with pread (the caller's offset is untouched)."""
    try:
        hasher, offset = hashlib.sha256(), 0
        while chunk := os.pread(fd, HASH_CHUNK, offset):
            hasher.update(chunk)
            offset += len(chunk)
        return hasher.hexdigest()
    finally:
        os.close(fd)
