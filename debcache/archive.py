"""Debian archive knowledge: which paths exist, which never change, what an index lists.

Everything here is pure logic over archive-relative paths (`dists/bookworm/InRelease`,
`pool/main/h/hello/hello_2.10-3_amd64.deb`) and index files; no HTTP.
"""

from __future__ import annotations

import bz2
import enum
import gzip
import logging
import lzma
import re
import subprocess
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote, unquote

from debian import deb822

from .errors import InvalidArchivePath, UnreadableIndex

log = logging.getLogger(__name__)

# Characters found in Debian archive paths: package names [a-z0-9+.-], versions
# [A-Za-z0-9.+~-] (pool file names drop the epoch), suites, by-hash digests and
# installer image names. Anything else (%, \, NUL, spaces, quotes) is refused, so
# neither a traversal nor a double-encoded one can reach the upstream or the store.
SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9._+~:=,@-]+")
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
        raise InvalidArchivePath("the requested path is too long", "request an archive file path")
    # Split where the client put its slashes, then decode each segment: an encoded
    # slash (%2f) decodes inside a segment, where the pattern refuses it.
    try:
        segments = [unquote(segment, errors="strict") for segment in raw.split("/")]
    except UnicodeDecodeError:
        segments = ["\0"]  # refused below like any other bad character
    for segment in segments:
        if segment in ("", ".", "..") or not SEGMENT_PATTERN.fullmatch(segment):
            raise InvalidArchivePath(
                f"{raw!r} is not an archive path (empty, '.', '..' or unusual characters)",
                "request a file such as dists/SUITE/InRelease or pool/...",
            )
    return "/".join(segments)


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


@contextmanager
def _reading(index_file: Path) -> Iterator[None]:
    """Turn what a corrupt compressed stream or a malformed stanza raises into one error."""
    try:
        yield
    except (EOFError, lzma.LZMAError, zlib.error, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the file system's (missing file, I/O error), not the content's
        raise UnreadableIndex(
            f"{index_file.name}: not a readable Packages index ({exc})",
            "the mirror is corrupt or mid-sync; retry later or fix the mirror",
        ) from None


def packages_pool_entries(index_file: Path) -> Iterator[tuple[str, int, str]]:
    """Yield (Filename, Size, SHA256) for every stanza of a Packages file that has all three.

    Raises UnreadableIndex if the file does not decompress. A stanza with a line or a
    total length over the limits (`MAX_INDEX_LINE`, `MAX_INDEX_STANZA`) is skipped, with
    one log line for the whole file: memory stays bounded whatever the file holds.

    The live cache reads every Packages index it caches, 60,000 stanzas for Debian's
    main, while installs wait: this scans only the three fields, about ten times faster
    than deb822. Freeze, which verifies, parses with python-debian (`packages_stanzas`).
    """
    filename = size = sha256 = None
    skipped = 0
    with _reading(index_file), open_decompressed(index_file) as f:
        for line in _bounded_lines(f):
            if line is None:
                skipped += 1
                filename = size = sha256 = None
            elif line.startswith(b"Filename:"):
                filename = line[9:].strip().decode("utf-8", "replace")
            elif line.startswith(b"Size:"):
                size = line[5:].strip()
            elif line.startswith(b"SHA256:"):
                sha256 = line[7:].strip().decode("ascii", "replace").lower()
            elif not line.strip():
                if filename and size and size.isdigit() and sha256:
                    yield filename, int(size), sha256
                filename = size = sha256 = None
    if skipped:
        log.warning("%s: skipped %d stanzas over the size limits", index_file.name, skipped)
    if filename and size and size.isdigit() and sha256:
        yield filename, int(size), sha256


# Limits of a Packages index. Debian's longest stanzas are a few kB (a long Description
# or Depends); these are a thousand times that, so they only catch a broken or hostile
# file (a decompression bomb of one endless line) before it costs memory.
MAX_INDEX_LINE = 1 << 20  # 1 MiB
MAX_INDEX_STANZA = 4 << 20  # 4 MiB
READ_CHUNK = 1 << 16


def _bounded_lines(f: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of `f`, read in chunks: `for line in f` would keep a line without a
    newline whole, however long. A stanza that grows past a limit yields one None, and
    its remaining lines are dropped unread up to the blank line that ends it."""
    pending = bytearray()  # the start of a line whose newline has not come yet
    stanza = 0  # bytes of the current stanza so far
    skipping = False
    while chunk := f.read(READ_CHUNK):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line = bytes(pending) + chunk[start : end + 1] if pending else chunk[start : end + 1]
            pending.clear()
            start = end + 1
            stanza += len(line)
            blank = not line.strip()
            if skipping:
                skipping = not blank
            elif len(line) > MAX_INDEX_LINE or stanza > MAX_INDEX_STANZA:
                skipping = not blank
                yield None
            else:
                yield line
            if blank:
                stanza = 0
        if skipping:
            continue  # the rest of the chunk belongs to a line being dropped
        pending += chunk[start:]
        if len(pending) > MAX_INDEX_LINE or stanza + len(pending) > MAX_INDEX_STANZA:
            pending.clear()
            skipping = True
            yield None
    if pending and not skipping:
        yield bytes(pending)


# --- suites, Release files and signatures -----------------------------------------

RELEASE_NAMES = ("InRelease", "Release", "Release.gpg")
CLEARSIGN_HEADER = b"-----BEGIN PGP SIGNED MESSAGE-----"


def suite_of(path: str) -> tuple[str, str] | None:
    """(`suite`, path below `dists/<suite>/`) for a dists path, else None."""
    parts = path.split("/", 2)
    if len(parts) == 3 and parts[0] == "dists":
        return parts[1], parts[2]
    return None


@dataclass(frozen=True)
class ReleaseEntry:
    name: str  # relative to dists/<suite>/, e.g. main/binary-amd64/Packages.xz
    sha256: str
    size: int


@dataclass(frozen=True)
class ReleaseInfo:
    """What a verified Release file says: its date and the indices it authenticates."""

    date: str | None
    valid_until: str | None
    suite: str | None
    codename: str | None
    entries: dict[str, ReleaseEntry]
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    by_hash: bool = False  # "Acquire-By-Hash: yes": apt asks for by-hash/SHA256/<digest>
    # "No-Support-for-Architecture-all: Packages": arch-all packages are in every
    # binary-<arch> as well, and apt does not fetch binary-all (Debian's suites say so).
    binary_all_repeated: bool = False

    def by_sha256(self, sha256: str, directory: str) -> ReleaseEntry | None:
        """The entry of `directory` (e.g. main/binary-amd64) with this digest."""
        for entry in self.entries.values():
            if entry.sha256 == sha256 and entry.name.rpartition("/")[0] == directory:
                return entry
        return None


def parse_release(verified: bytes) -> ReleaseInfo:
    """Parse the *verified* text of a Release file (never the raw InRelease).

    A malformed SHA256 line, or one naming a file outside the suite's directory, is
    left out: the file it names is then not authenticated, as if it were not listed.
    """
    release = deb822.Release(verified.decode("utf-8", "replace"))
    entries = {}
    for item in release.get("SHA256", []):
        entry = _release_entry(item)
        if entry is not None:
            entries[entry.name] = entry
    return ReleaseInfo(
        release.get("Date"),
        release.get("Valid-Until"),
        release.get("Suite"),
        release.get("Codename"),
        entries,
        tuple(release.get("Components", "").split()),
        tuple(release.get("Architectures", "").split()),
        release.get("Acquire-By-Hash", "").strip().lower() == "yes",
        "Packages" in release.get("No-Support-for-Architecture-all", "").split(),
    )


def _release_entry(item: object) -> ReleaseEntry | None:
    if not isinstance(item, Mapping):  # "SHA256: text" on one line: not a list of files
        return None
    name, sha256, size = (item.get(key) or "" for key in ("name", "sha256", "size"))
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256) or not re.fullmatch(r"[0-9]+", size):
        return None
    if name.startswith("/") or any(s in ("", ".", "..") for s in name.split("/")):
        return None
    return ReleaseEntry(name, sha256.lower(), int(size))


class SignatureError(Exception):
    """gpgv did not accept a signature; the message says why."""


def verify_signature(keyring: Path, signed: Path, data: Path | None = None) -> bytes:
    """The verified content of a clearsigned file, or of `data` with a detached signature.

    gpgv happily verifies an InRelease with unsigned text around the signed block and
    `deb822` would then parse that text, so only gpgv's `--output` is trusted, and a
    clearsigned file must start with the signed block (apt refuses anything else).
    """
    if not keyring.is_absolute():
        keyring = keyring.absolute()  # gpgv looks a bare name up in $GNUPGHOME
    if not keyring.is_file():
        raise SignatureError(f"keyring {keyring} does not exist")
    if data is None and not _starts_with(signed, CLEARSIGN_HEADER):
        raise SignatureError("text before the signed block (apt rejects this as NOSPLIT)")
    with tempfile.TemporaryDirectory(prefix="debcache-gpgv-") as home:
        output = Path(home) / "verified"
        command = ["gpgv", "--homedir", home, "--keyring", str(keyring), "--status-fd", "1"]
        if data is None:
            command += ["--output", str(output), str(signed)]
        else:
            command += [str(signed), str(data)]
        result = subprocess.run(command, capture_output=True, timeout=60, check=False)
        status = result.stdout.decode(errors="replace")
        if result.returncode != 0 or "[GNUPG:] VALIDSIG" not in status:
            raise SignatureError(_gpgv_reason(status, result.stderr.decode(errors="replace")))
        return output.read_bytes() if data is None else data.read_bytes()


def _starts_with(path: Path, prefix: bytes) -> bool:
    # Not read_bytes(): the live cache verifies whatever InRelease a mirror sent.
    with open(path, "rb") as f:
        return f.read(len(prefix)) == prefix


def _gpgv_reason(status: str, stderr: str) -> str:
    for line in status.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in ("BADSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG"):
            return f"{words[1]} {words[2]}"
        if len(words) >= 2 and words[1] == "NODATA":
            return "not signed"
    return (stderr.strip().splitlines() or ["gpgv failed"])[-1]


def parse_checksums_file(text: str) -> dict[str, str]:
    """`SHA256SUMS` of installer images: {path relative to its directory: sha256}."""
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.strip().partition("  ")
        if re.fullmatch(r"[0-9a-f]{64}", digest) and name:
            sums[name.removeprefix("./")] = digest
    return sums


def installer_images_dir(path: str) -> str | None:
    """`dists/S/main/installer-amd64/current/images` for a file below such a directory."""
    match = re.fullmatch(r"(dists/[^/]+/[^/]+/installer-[^/]+/[^/]+/images)/.+", path)
    return match.group(1) if match else None


def packages_stanzas(index_file: Path) -> Iterator[deb822.Deb822]:
    """Every stanza of a Packages index (any compression) with the fields freeze needs.

    Raises UnreadableIndex if the file does not decompress, a stanza is malformed or
    over the size limits (`MAX_INDEX_LINE`, `MAX_INDEX_STANZA`): freeze verifies, so a
    file it cannot read whole is refused, never read into memory.
    """
    fields = ["Package", "Version", "Architecture", "Filename", "Size", "SHA256"]
    with _reading(index_file), open_decompressed(index_file) as f:
        # Not UTF-8 (a broken index): python-debian's guess may fail; such bytes are
        # replaced, so a mangled Filename simply matches no requested path.
        text = (
            piece
            for line in _whole(_bounded_lines(f))
            # newlines as a text file reads them: \r\n and a lone \r end a line too
            for piece in _text_lines(line.decode("utf-8", "replace"))
        )
        yield from deb822.Deb822.iter_paragraphs(text, use_apt_pkg=False, fields=fields)


def _text_lines(line: str) -> list[str]:
    """A line split as a text file would (`\r\n` and a lone `\r` end one too)."""
    if "\r" not in line:
        return [line]
    pieces = line.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def _whole(lines: Iterator[bytes | None]) -> Iterator[bytes]:
    # python-debian takes an EOFError for the end of its input: a truncated gzip or xz
    # stream would read as a shorter index.
    try:
        for line in lines:
            if line is None:
                raise ValueError(
                    f"a stanza has a line over {MAX_INDEX_LINE} bytes "
                    f"or is over {MAX_INDEX_STANZA} bytes"
                )
            yield line
    except EOFError as exc:
        raise ValueError(f"truncated ({exc})") from None


# --- what a fresh client fetches of a suite -----------------------------------------

COMPRESSION_SUFFIX = r"(\.(gz|xz|bz2|lzma|lz4|zst))?"
_FRESH_INDEX = re.compile(
    rf"(?P<index>(?P<component>.+?)/(?:(?P<installer>debian-installer/)?binary-(?P<arch>[^/]+)"
    rf"/Packages|i18n/Translation-en)){COMPRESSION_SUFFIX}"
)
_ARCHITECTURE_IN_PATH = re.compile(r"/(?:binary|installer)-([a-z0-9-]+)/")
_POOL_ARCHITECTURE = re.compile(r"_([a-z0-9-]+)\.(u?deb)\Z")


def by_hash_path(name: str, sha256: str) -> str:
    """The `by-hash/SHA256/<digest>` name apt asks for instead of `name` (same directory)."""
    return f"{name.rpartition('/')[0]}/by-hash/SHA256/{sha256}"


def host_architecture(path: str) -> tuple[str, bool] | None:
    """(architecture, whether debian-installer used it) that fetching `path` shows, if any.

    `all` shows no architecture: every host fetches arch-all packages.
    """
    if path.startswith("pool/"):
        match = _POOL_ARCHITECTURE.search(path)
        found = (match.group(1), match.group(2) == "udeb") if match else None
    else:
        match = _ARCHITECTURE_IN_PATH.search(path)
        installer = "/installer-" in path or "/debian-installer/" in path
        found = (match.group(1), installer) if match else None
    return found if found and found[0] != "all" else None


def fresh_update_indices(
    info: ReleaseInfo, architectures: set[str], installer_architectures: set[str]
) -> dict[str, list[ReleaseEntry]]:
    """The indices of a suite that a fresh apt, debootstrap or d-i may fetch: uncompressed
    name -> the Release entries of each of its compressions.

    Every component the Release lists (a sources line may name any of them; the
    security archive lists `updates/main` for the `main/` directory); `binary-<arch>`
    for these architectures and `binary-all` where apt fetches it;
    `debian-installer/binary-<arch>` for the installer's; `i18n/Translation-en` (apt
    fetches it by default).
    """
    components = set(info.components) | {c.rpartition("/")[2] for c in info.components}
    # apt fetches binary-all only when Architectures names `all` (the security archive's
    # does not) and the Release does not say the binary-<arch> indices repeat it.
    binary_all = not info.binary_all_repeated and (
        "all" in info.architectures or not info.architectures
    )
    wanted: dict[str, list[ReleaseEntry]] = {}
    for name, entry in info.entries.items():
        match = _FRESH_INDEX.fullmatch(name)
        if match is None or match.group("component") not in components:
            continue
        arch = match.group("arch")
        if match.group("installer"):
            needed = arch in installer_architectures
        elif arch is not None:
            needed = binary_all if arch == "all" else arch in architectures
        else:
            needed = True  # i18n/Translation-en
        if needed:
            wanted.setdefault(match.group("index"), []).append(entry)
    return wanted
