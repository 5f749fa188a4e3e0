"""Blobs by sha256, written once: temp file, hash while writing, fsync, rename.

The store knows bytes and digests only; which archive path holds which digest
is the database's business. A blob is visible under its final name only once
complete and checked, so a crash or a full disk leaves at worst a stray file
in `tmp/`, which `FileStore.open` sweeps away.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
HASH_CHUNK = 1024 * 1024


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks (use a thread from async code)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


class FileStore:
    """`<data>/blobs/sha256/<2 hex>/<64 hex>`, with `<data>/tmp/` on the same file system."""

    def __init__(self, data_dir: Path) -> None:
        self.blobs = data_dir / "blobs" / "sha256"
        self._blobs_prefix = f"{self.blobs}/"
        self.tmp = data_dir / "tmp"
        self.quarantine = data_dir / "quarantine"
        # Blobs hashed since this process started: what it committed (hashed while
        # writing) and what it hashed before serving it the first time.
        self.verified: set[str] = set()

    def open(self) -> FileStore:
        """Create the directories and remove partial downloads left by a crash.

        Only the server calls this at start: a command run beside a running server
        uses `create_directories`, so it never deletes the server's downloads.
        """
        self.create_directories()
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        return self

    def create_directories(self) -> FileStore:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self

    def local_path(self, sha256: str) -> Path:
        return Path(self.blob_name(sha256))

    def blob_name(self, sha256: str) -> str:
        """local_path as a string: what opening a blob on every hit needs, without Path's cost."""
        if not SHA256_PATTERN.fullmatch(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return f"{self._blobs_prefix}{sha256[:2]}/{sha256}"

    def has(self, sha256: str) -> bool:
        return self.local_path(sha256).is_file()

    def create_temp(self) -> Path:
        """A new, empty temp file to download into."""
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="partial-")
        os.close(fd)
        return Path(name)

    def commit(self, temp: Path, sha256: str) -> Path:
        """Move a complete, checked temp file into place; the temp must already be fsynced.

        A blob that exists already is left untouched: its bytes are the same by name.
        """
        final = self.local_path(sha256)
        if final.exists() and final.stat().st_size == temp.stat().st_size:
            temp.unlink(missing_ok=True)
            return final  # the same bytes by name (a truncated blob would be replaced)
        final.parent.mkdir(exist_ok=True)
        os.chmod(temp, 0o644)
        os.replace(temp, final)
        self.verified.add(sha256)  # the caller hashed it while writing
        return final

    def put(self, content: bytes) -> tuple[str, Path]:
        """Store bytes made here (not downloaded); (sha256, blob path)."""
        sha256 = hashlib.sha256(content).hexdigest()
        temp = self.create_temp()
        with open(temp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        blob = self.commit(temp, sha256)
        self.sync_directory(blob.parent)
        return sha256, blob

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held by whatever decides which blobs must stay (promote, rollback) and whatever
        deletes blobs (gc), so a branch never points at a blob gc has just chosen."""
        self.blobs.parent.parent.mkdir(parents=True, exist_ok=True)
        with open(self.blobs.parent.parent / "store.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def sync_directory(directory: Path) -> None:
        """Make a rename in `directory` survive a power loss (it may block: use a thread)."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def move_to_quarantine(self, sha256: str, inode: int | None = None) -> bool:
        """Move a corrupt blob to `<data>/quarantine/`; False if it is gone already, or if
        `inode` is given and the blob's name holds another file by now (a good copy)."""
        blob = self.local_path(sha256)
        try:
            if inode is not None and blob.stat().st_ino != inode:
                return False
            self.quarantine.mkdir(exist_ok=True)
            shutil.move(blob, self.quarantine / sha256)
        except FileNotFoundError:
            return False
        self.verified.discard(sha256)
        return True

    def delete(self, sha256: str) -> None:
        self.local_path(sha256).unlink(missing_ok=True)

    def totals(self) -> tuple[int, int]:
        """Blobs and bytes in the store: the live cache's and those freeze fetched."""
        blobs = size = 0
        if not self.blobs.is_dir():  # a data dir no server has opened yet
            return 0, 0
        for sha256 in self.iterate():
            try:
                size += self.local_path(sha256).stat().st_size
            except FileNotFoundError:  # gc removed it meanwhile
                continue
            blobs += 1
        return blobs, size

    def iterate(self) -> Iterator[str]:
        """Every blob's digest."""
        for prefix in self.blobs.iterdir():
            for blob in prefix.iterdir():
                if SHA256_PATTERN.fullmatch(blob.name):
                    yield blob.name
