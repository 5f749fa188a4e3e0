"""The test archive's packages: real .debs that the Packages indices describe, the minbase
debootstrap reads, and builds cached per process but archives independent."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import subprocess
from pathlib import Path

import archive_installer
import archive_packages
import pytest
from archive_fixture import (
    MINBASE,
    Archive,
    build_test_archive,
    point_release,
)
from debian import deb822
from fixture_checks import (
    INITRD,
    gpgv,
)

# `archive` (session, read-only), `own_archive` (one per test, to change) and `mirror` (a
# FakeMirror per test) come from conftest.py.


def test_packages_indices_describe_the_pool(archive: Archive) -> None:
    def packages(index: str) -> dict[str, deb822.Packages]:
        with lzma.open(archive.path(f"dists/bookworm/main/{index}/Packages.xz")) as f:
            return {p["Package"]: p for p in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False)}

    amd64, arch_all, installer = (
        packages("binary-amd64"),
        packages("binary-all"),
        packages("debian-installer/binary-amd64"),
    )
    assert sorted(amd64) == sorted(["bigpkg", "hello", "libgreet1", "tool++", *MINBASE])
    assert sorted(arch_all) == ["greet-data"]
    assert sorted(installer) == ["kernel-image-6.1.0-9-amd64-di", "netcfg-test"]
    assert amd64["hello"]["Depends"] == "libgreet1 (>= 1.0), greet-data"
    assert amd64["bigpkg"]["Version"] == "1:3.0-1"
    # The epoch is not part of the file name; "lib" packages get a 4-letter prefix.
    assert amd64["bigpkg"]["Filename"] == "pool/main/b/bigpkg/bigpkg_3.0-1_amd64.deb"
    assert amd64["libgreet1"]["Filename"] == "pool/main/libg/libgreet1/libgreet1_1.0-1_amd64.deb"
    assert installer["netcfg-test"]["Filename"].endswith("_amd64.udeb")
    assert int(amd64["bigpkg"]["Size"]) > 3_000_000
    for stanza in [*amd64.values(), *arch_all.values(), *installer.values()]:
        content = archive.read(stanza["Filename"])
        assert int(stanza["Size"]) == len(content)
        assert stanza["SHA256"] == hashlib.sha256(content).hexdigest()
        assert stanza["MD5sum"] == hashlib.md5(content).hexdigest()
        fields = subprocess.run(
            [
                "dpkg-deb",
                "--field",
                str(archive.path(stanza["Filename"])),
                "Package",
                "Version",
                "Architecture",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        expected = [f"{name}: {stanza[name]}" for name in ("Package", "Version", "Architecture")]
        assert fields.splitlines() == expected
    assert archive.pool_path("greet-tools") == (
        "pool/main/g/greet-tools/greet-tools_1.1-1~deb12u1_amd64.deb"
    )
    assert archive.pool_path("hello", suite="bookworm") == amd64["hello"]["Filename"]
    with pytest.raises(KeyError):
        archive.pool_path("hello", suite="bookworm-updates")
    assert archive.pool_path("libgreet1", "1.0-1") == amd64["libgreet1"]["Filename"]


def test_minbase_is_listed_as_debootstrap_reads_it(archive: Archive) -> None:
    # debootstrap reads only binary-amd64/Packages (of the smallest form) with a
    # line-based parser that takes a stanza at the blank line after it.
    index = archive.read("dists/bookworm/main/binary-amd64/Packages")
    assert index.endswith(b"\n\n") and not index.endswith(b"\n\n\n")
    assert gzip.decompress(archive.read("dists/bookworm/main/binary-amd64/Packages.gz")) == index
    stanzas = {p["Package"]: p for p in deb822.Packages.iter_paragraphs(index, use_apt_pkg=False)}
    assert set(MINBASE) <= set(stanzas)
    required = sorted(name for name, p in stanzas.items() if p["Priority"] == "required")
    assert required == ["base-files", "dpkg"]
    assert [name for name, p in stanzas.items() if p.get("Essential") == "yes"] == [
        "base-files",
        "dpkg",
    ]
    assert stanzas["dpkg"]["Pre-Depends"] == "libc6 (>= 2.34)"
    assert stanzas["apt"]["Priority"] == "important"
    assert stanzas["usr-is-merged"]["Architecture"] == "amd64"
    assert all(stanzas[name]["Architecture"] == "amd64" for name in MINBASE)


def test_archives_per_test_are_independent(archive: Archive, tmp_path: Path) -> None:
    # The session archive has built every default package and installer image.
    built = set(archive_packages._built)
    images = set(archive_installer._installer_images)
    first = build_test_archive(tmp_path / "first")
    second = build_test_archive(tmp_path / "second")
    assert set(archive_packages._built) == built
    assert set(archive_installer._installer_images) == images

    assert len({archive.root, first.root, second.root}) == 3
    fingerprints = {a.key.fingerprint for a in (archive, first, second)}
    assert len(fingerprints) == 3
    assert first.key.keyring != second.key.keyring
    for path in (first.pool_path("hello"), first.installer_path("bookworm", INITRD)):
        assert first.read(path) == second.read(path) == archive.read(path)
    inrelease = first.path("dists/bookworm/InRelease")
    assert gpgv(first.key.keyring, inrelease).returncode == 0
    assert gpgv(second.key.keyring, inrelease).returncode != 0

    point_release(first)
    assert second.pool_path("hello") == "pool/main/h/hello/hello_2.10-3_amd64.deb"
    assert second.path(second.pool_path("hello")).is_file()
    assert archive.path(archive.pool_path("hello")).is_file()
