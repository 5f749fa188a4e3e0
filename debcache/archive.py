"""Debian archive knowledge: which paths exist, which never change, what an index lists.

Everything here is pure logic over archive-relative paths (`dists/bookworm/InRelease`,
`pool/main/h/hello/hello_2.10-3_amd64.deb`) and index files; no HTTP.
"""

from __future__ import annotations

import bz2
import enum
import gzip
import lzma
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import quote, unquote

from debian import deb822

from .errors import BadRequest

# Characters found in Debian archive paths: package names [a-z0-9+.-], versions
# [A-Za-z0-9.+~-] (pool file names drop the epoch), suites, by-hash digests and
# installer image names. Anything else (%, \, NUL, spaces, quotes) is refused, so
# neither a traversal nor a double-encoded one can reach the upstream or the store.
SEGMENT_PATTERN = re.compile(r"^[A-Za-z0-9._+~:=,@-]+$")
MAX_PATH_LENGTH = 1024
UPSTREAM_SAFE_CHARACTERS = "/._-~+:=,@"


class PathKind(enum.Enum):
    POOL = "pool"  # immutable by name
    BY_HASH = "by-hash"  # immutable: the name is the digest
    VOLATILE = "volatile"  # InRelease, Packages, installer images...: revalidate

    @property
    def immutable(self) -> bool:
        return self is not PathKind.VOLATILE


def classify_path(path: str) -> PathKind:
    """Whether an archive path is immutable (pool, by-hash) or must be revalidated."""
    if path.startswith("pool/"):
        return PathKind.POOL
    if "/by-hash/" in path:
        return PathKind.BY_HASH
    return PathKind.VOLATILE


def parse_archive_path(raw: str) -> str:
    """Decode a percent-encoded archive path once, refusing anything that could escape it.

    `raw` is the request's path below the upstream name, still encoded as sent.
    """
    if len(raw) > MAX_PATH_LENGTH:
        raise BadRequest("the requested path is too long", "request an archive file path")
    try:
        path = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        path = "\0"  # refused below like any other bad character
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not SEGMENT_PATTERN.match(segment):
            raise BadRequest(
                f"{raw!r} is not an archive path (empty, '.', '..' or unusual characters)",
                "request a file such as dists/SUITE/InRelease or pool/...",
            )
    return path


def upstream_url(base_url: str, path: str) -> str:
    """The upstream URL of an archive path, re-encoded the way apt would send it."""
    return f"{base_url}/{quote(path, safe=UPSTREAM_SAFE_CHARACTERS)}"


def by_hash_sha256(path: str) -> str | None:
    """The digest a `by-hash/SHA256/<hex>` path names, so its content can be checked."""
    head, _, digest = path.rpartition("/")
    if head.endswith("/by-hash/SHA256") and re.fullmatch(r"[0-9a-f]{64}", digest):
        return digest
    return None


CONTENT_TYPES = {
    ".deb": "application/vnd.debian.binary-package",
    ".udeb": "application/vnd.debian.binary-package",
    ".gz": "application/gzip",
    ".xz": "application/x-xz",
    ".bz2": "application/x-bzip2",
    ".lzma": "application/x-lzma",
    ".zst": "application/zstd",
    ".gpg": "application/pgp-signature",
}


def content_type_for(path: str) -> str:
    """A Content-Type by file name; never a Content-Encoding (apt wants the bytes as named)."""
    name = path.rpartition("/")[2]
    suffix = name[name.rfind(".") :] if "." in name else ""
    return CONTENT_TYPES.get(suffix, "application/octet-stream")


# --- Packages indices -------------------------------------------------------------


def is_packages_index(path: str) -> bool:
    """A `Packages` file (any compression, or its by-hash name) of a binary-<arch> directory."""
    segments = path.split("/")
    if not any(s.startswith("binary-") for s in segments):
        return False
    return segments[-1].startswith("Packages") or by_hash_sha256(path) is not None


def open_decompressed(path: Path) -> IO[bytes]:
    """Open an index file, decompressing by its magic bytes (by-hash names have no suffix)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00") or magic.startswith(b"\x5d\x00\x00"):
        return lzma.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def packages_pool_entries(index_file: Path) -> Iterator[tuple[str, int, str]]:
    """Yield (Filename, Size, SHA256) for every stanza of a Packages file that has all three."""
    with open_decompressed(index_file) as f:
        fields = ["Filename", "Size", "SHA256"]
        for stanza in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False, fields=fields):
            filename, size, sha256 = (stanza.get(k) for k in fields)
            if filename and size and sha256 and size.isdigit():
                yield filename, int(size), sha256.lower()
