"""Throwaway gpg signing keys for the test archives: one gpg home (and agent) per key."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Unix socket paths are limited to 108 bytes; gpg-agent puts its sockets in
# the home directory when /run/user/<uid> is missing (as for root in a
# container) and fails to start when that path is too long.
_MAX_GNUPGHOME = 80


@dataclass
class SigningKey:
    """A throwaway gpg key without passphrase and its binary public keyring."""

    gnupghome: Path
    fingerprint: str
    keyring: Path

    def gpg(self, *args: str, stdin: bytes | None = None) -> bytes:
        """Run gpg on this key's home directory and return its stdout."""
        return _gpg(self.gnupghome, *args, stdin=stdin)


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    command = ["gpg", "--batch", "--quiet", "--no-tty", "--homedir", str(home)]
    command += ["--pinentry-mode", "loopback", "--passphrase", "", *args]
    result = subprocess.run(command, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def _stop_agent(home: Path, remove: bool) -> None:
    # Each home directory gets its own gpg-agent daemon; without this they
    # outlive the test run.
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False
    )
    if remove:
        shutil.rmtree(home, ignore_errors=True)


def make_signing_key(
    directory: Path, uid: str = "debcache test archive <archive@example.org>"
) -> SigningKey:
    """Create a passphrase-less signing key and export ``directory/keyring.gpg``."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    home = directory / "gnupg"
    temporary = len(str(home)) > _MAX_GNUPGHOME
    if temporary:
        home = Path(tempfile.mkdtemp(prefix="dcgpg-"))
    home.mkdir(mode=0o700, exist_ok=True)
    # Without this each agent holds two inotify instances until the run ends, and a
    # full run's agents use up root's 128 (fs.inotify.max_user_instances): a
    # systemd booted by tests/booted_systemd.py could then not start.
    (home / "gpg-agent.conf").write_text("disable-check-own-socket\n")
    atexit.register(_stop_agent, home, temporary)
    try:
        _gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "never")
    except RuntimeError:
        _gpg(home, "--quick-gen-key", uid, "rsa2048", "sign", "never")
    listing = _gpg(home, "--with-colons", "--list-secret-keys", uid).decode()
    fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
    )
    keyring = directory / "keyring.gpg"
    # `gpg --export` writes plain OpenPGP packets, the format gpgv and apt's
    # signed-by= want; a keybox (.kbx) or armoured file would not do.
    keyring.write_bytes(_gpg(home, "--export", fingerprint))
    return SigningKey(gnupghome=home, fingerprint=fingerprint, keyring=keyring)
