"""The test archive's signatures: gpgv verifies every suite with the archive's keyring,
and a suite signed by another key is refused by gpgv and apt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import (
    Archive,
    default_packages,
    make_signing_key,
)
from fake_mirror import FakeMirror
from fixture_checks import (
    gpgv,
)

# `archive` (session, read-only), `own_archive` (one per test, to change) and `mirror` (a
# FakeMirror per test) come from conftest.py.


@pytest.mark.parametrize("suite", ["bookworm", "bookworm-updates"])
def test_signatures_verify_with_gpgv(archive: Archive, suite: str, tmp_path: Path) -> None:
    dists = archive.path(f"dists/{suite}")
    verified = tmp_path / "verified"
    result = gpgv(archive.key.keyring, dists / "InRelease", output=verified)
    assert result.returncode == 0, result.stderr
    assert verified.read_bytes() == (dists / "Release").read_bytes()
    detached = gpgv(archive.key.keyring, dists / "Release.gpg", dists / "Release")
    assert detached.returncode == 0, detached.stderr

    tampered = tmp_path / "InRelease"
    tampered.write_bytes((dists / "InRelease").read_bytes().replace(b"Suite: ", b"Suite: x"))
    assert gpgv(archive.key.keyring, tampered).returncode == 1


def test_suite_signed_by_another_key(own_archive: Archive, tmp_path: Path) -> None:
    archive = own_archive
    other = make_signing_key(tmp_path / "other-key", uid="someone else <other@example.org>")
    assert other.fingerprint != archive.key.fingerprint
    archive.publish_suite("bookworm", default_packages(), signing_key=other)
    dists = archive.path("dists/bookworm")
    assert gpgv(archive.key.keyring, dists / "InRelease").returncode != 0
    assert gpgv(archive.key.keyring, dists / "Release.gpg", dists / "Release").returncode != 0
    assert gpgv(other.keyring, dists / "InRelease").returncode == 0
    assert gpgv(other.keyring, dists / "Release.gpg", dists / "Release").returncode == 0
    # Other suites keep the archive key.
    updates = archive.path("dists/bookworm-updates/InRelease")
    assert gpgv(archive.key.keyring, updates).returncode == 0

    apt = AptRoot(tmp_path / "apt")
    with FakeMirror(archive.root) as mirror:
        apt.write_sources(
            [f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian bookworm main"]
        )
        result = apt.update()
    assert result.returncode == 100
    assert "NO_PUBKEY" in result.stderr

    archive.publish_suite("bookworm", default_packages())
    assert gpgv(archive.key.keyring, dists / "InRelease").returncode == 0


def test_a_keys_gpg_agent_holds_no_inotify_instance(tmp_path: Path) -> None:
    """A run makes dozens of keys whose agents live until it ends: two inotify instances
    each would use up root's 128 (a systemd booted by a later test could not start)."""
    key = make_signing_key(tmp_path / "key")
    key.gpg("--clearsign", "--output", "-", stdin=b"signed\n")  # the agent signs
    agents = [
        process for process in Path("/proc").glob("[0-9]*") if agent_of(process, key.gnupghome)
    ]
    assert agents, f"no gpg-agent runs for {key.gnupghome}"
    watches = [
        fd
        for process in agents
        for fd in (process / "fd").iterdir()
        if fd_target(fd) == "anon_inode:inotify"
    ]
    assert not watches


def agent_of(process: Path, home: Path) -> bool:
    try:
        arguments = (process / "cmdline").read_bytes().split(b"\0")
    except OSError:  # it ended
        return False
    return Path(arguments[0].decode()).name == "gpg-agent" and str(home).encode() in arguments


def fd_target(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:
        return ""
