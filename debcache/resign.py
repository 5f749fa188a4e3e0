"""debcache's own archive key, and Release files re-signed with it for `resign = true` branches.

A frozen `-updates` or `-security` Release carries a `Valid-Until` about a week
ahead; afterwards apt and d-i refuse it. For a branch with `resign = true` the
pinned `InRelease`, `Release` and `Release.gpg` are the frozen Release text with
only the `Valid-Until` line removed (every checksum untouched), signed with
debcache's key. They are made once per manifest and suite and kept as blobs, so
every request gets the same bytes. Clients trust `debcache key export`.

gpg-agent puts its sockets in GNUPGHOME when /run/user/<uid> is missing and
fails when that path is long, so every gpg run gets a short temporary home into
which the key is imported; the data dir only keeps the exported key files.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, SigningError

KEY_UID = "debcache archive signing key <debcache@{host}>"
GPG_TIMEOUT = 120
VALID_UNTIL_LINE = re.compile(rb"^Valid-Until:[^\n]*\n", re.MULTILINE)


@dataclass(frozen=True)
class ArchiveKey:
    fingerprint: str
    secret_key: Path  # armoured secret key, mode 0600
    public_keyring: Path  # binary, for apt's signed-by and d-i's keyring


def key_directory(data_dir: Path) -> Path:
    return data_dir / "signing"


def require_gpg() -> None:
    """Refuse to start a re-signing server on a machine without gpg."""
    if shutil.which("gpg") is None:
        raise ConfigError(
            "a branch has resign = true but gpg is not installed",
            "install it (apt-get install gpg) or set resign = false",
        )


def ensure_key(data_dir: Path) -> ArchiveKey:
    """debcache's signing key, generated on first use and kept in `<data>/signing/`."""
    directory = key_directory(data_dir)
    key = ArchiveKey(
        (directory / "fingerprint").read_text().strip()
        if (directory / "fingerprint").exists()
        else "",
        directory / "secret-key.asc",
        directory / "debcache-archive-keyring.gpg",
    )
    if key.fingerprint and key.secret_key.exists() and key.public_keyring.exists():
        return key
    require_gpg()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with gpg_home() as home:
        uid = KEY_UID.format(host=socket.gethostname() or "localhost")
        run_gpg(home, "--passphrase", "", "--quick-gen-key", uid, "rsa3072", "sign", "never")
        fingerprint = _fingerprint(home)
        secret = run_gpg(home, "--armor", "--export-secret-keys", fingerprint)
        public = run_gpg(home, "--export", fingerprint)
    _write_private(key.secret_key, secret)
    key.public_keyring.write_bytes(public)
    (directory / "fingerprint").write_text(fingerprint + "\n")
    return ArchiveKey(fingerprint, key.secret_key, key.public_keyring)


def export_public_key(data_dir: Path, armor: bool) -> bytes:
    key = ensure_key(data_dir)
    if not armor:
        return key.public_keyring.read_bytes()
    with gpg_home() as home:
        run_gpg(home, "--import", str(key.public_keyring))
        return run_gpg(home, "--armor", "--export", key.fingerprint)


@dataclass(frozen=True)
class ResignedRelease:
    in_release: bytes
    release: bytes
    release_gpg: bytes

    def by_name(self) -> dict[str, bytes]:
        return {
            "InRelease": self.in_release,
            "Release": self.release,
            "Release.gpg": self.release_gpg,
        }


def resign_release(data_dir: Path, release_text: bytes) -> ResignedRelease:
    """The Release text without Valid-Until, clearsigned and detached-signed with our key."""
    key = ensure_key(data_dir)
    text = VALID_UNTIL_LINE.sub(b"", release_text)
    with gpg_home() as home:
        run_gpg(home, "--import", str(key.secret_key))
        source = home / "Release"
        source.write_bytes(text)
        signing = ["--local-user", key.fingerprint, "--digest-algo", "SHA512"]
        in_release = run_gpg(home, *signing, "--clearsign", "--output", "-", str(source))
        detached = run_gpg(home, *signing, "--armor", "--detach-sign", "--output", "-", str(source))
    return ResignedRelease(in_release, text, detached)


@contextmanager
def gpg_home() -> Iterator[Path]:
    """A short-lived GNUPGHOME with a short path; its agent is stopped afterwards."""
    home = Path(tempfile.mkdtemp(prefix="dcgpg-"))
    try:
        yield home
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"],
            capture_output=True,
            check=False,
            timeout=30,
        )
        shutil.rmtree(home, ignore_errors=True)


def run_gpg(home: Path, *args: str) -> bytes:
    command = ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback"]
    try:
        result = subprocess.run(
            [*command, *args], capture_output=True, timeout=GPG_TIMEOUT, check=False
        )
    except FileNotFoundError:
        require_gpg()
        raise
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
        raise SigningError(
            f"gpg {args[-1] if args else ''}: {reason[0]}",
            "check gpg and the key in <data>/signing/",
        )
    return result.stdout


def _fingerprint(home: Path) -> str:
    listing = run_gpg(home, "--with-colons", "--list-secret-keys").decode()
    for line in listing.splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    raise SigningError("gpg made no key", "check that gpg works on this machine")


def _write_private(path: Path, content: bytes) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.touch(mode=0o600)
    temp.chmod(0o600)
    temp.write_bytes(content)
    temp.replace(path)
