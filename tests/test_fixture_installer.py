"""The test archive's debian-installer images: checksummed like Debian's, `current` a real
copy matching the kernel udeb, the sums listed in Release."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import tarfile

import pytest
from archive_fixture import (
    Archive,
    InstallerSpec,
)
from debian import deb822
from fake_mirror import FakeMirror
from fixture_checks import (
    INITRD,
    INSTALLER,
    LINUX,
    NETBOOT,
    fetch,
    read_sums,
    release_of,
)

# `archive` (session, read-only), `own_archive` (one per test, to change) and `mirror` (a
# FakeMirror per test) come from conftest.py.


@pytest.mark.parametrize("version", ["20230607+deb12u1", "current"])
def test_installer_images_match_their_checksums(archive: Archive, version: str) -> None:
    images = f"{INSTALLER}/{version}/images"
    assert archive.installer_path("bookworm", LINUX, version=version) == f"{images}/{LINUX}"
    on_disk = {p.removeprefix(images + "/") for p in archive.files() if p.startswith(images)}
    assert on_disk == {"MD5SUMS", "SHA256SUMS", LINUX, INITRD, NETBOOT}
    for sums, hasher in (("SHA256SUMS", hashlib.sha256), ("MD5SUMS", hashlib.md5)):
        listed = read_sums(archive.read(f"{images}/{sums}"))
        # Sorted by path, like Debian's.
        assert list(listed) == [f"./{INITRD}", f"./{LINUX}", f"./{NETBOOT}"]
        for name, digest in listed.items():
            assert hasher(archive.read(f"{images}/{name[2:]}")).hexdigest() == digest, name
    linux = archive.read(f"{images}/{LINUX}")
    initrd_gz = archive.read(f"{images}/{INITRD}")
    initrd = gzip.decompress(initrd_gz)
    assert 190_000 < len(linux) < 220_000 and 290_000 < len(initrd_gz) < 330_000
    assert linux.startswith(b"Linux version 6.1.0-9-amd64 ")
    assert b"lib/modules/6.1.0-9-amd64/" in initrd[:200]
    with tarfile.open(fileobj=io.BytesIO(archive.read(f"{images}/{NETBOOT}"))) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        assert sorted(members) == [
            "./debian-installer/amd64/initrd.gz",
            "./debian-installer/amd64/linux",
        ]
        for name, content in (("linux", linux), ("initrd.gz", initrd_gz)):
            extracted = tar.extractfile(members[f"./debian-installer/amd64/{name}"])
            assert extracted is not None and extracted.read() == content


def test_installer_current_is_a_real_copy_and_matches_the_kernel_udeb(
    archive: Archive, mirror: FakeMirror
) -> None:
    assert archive.installer("bookworm") == InstallerSpec("20230607+deb12u1", "6.1.0-9")
    current = archive.path(f"{INSTALLER}/current")
    assert current.is_dir() and not current.is_symlink()
    for name in ("SHA256SUMS", "MD5SUMS", LINUX, INITRD, NETBOOT):
        assert archive.read(f"{INSTALLER}/current/images/{name}") == archive.read(
            f"{INSTALLER}/20230607+deb12u1/images/{name}"
        )
        response, body = fetch(mirror, "/debian/" + archive.installer_path("bookworm", name))
        assert response.status == 200 and body == archive.read(
            archive.installer_path("bookworm", name)
        )
    with lzma.open(
        archive.path("dists/bookworm/main/debian-installer/binary-amd64/Packages.xz")
    ) as f:
        udebs = {p["Package"]: p for p in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False)}
    kernel = udebs["kernel-image-6.1.0-9-amd64-di"]
    assert kernel["Version"] == "6.1.38-1"
    assert kernel["Kernel-Version"] == "6.1.0-9-amd64"
    assert kernel["Filename"].endswith("_amd64.udeb")
    initrd = gzip.decompress(archive.read(archive.installer_path("bookworm", INITRD)))
    assert f"lib/modules/{kernel['Kernel-Version']}/".encode() in initrd
    assert archive.installer("bookworm-updates") is None
    with pytest.raises(KeyError):
        archive.installer_path("bookworm-updates", LINUX)


def test_installer_checksums_are_listed_in_release(archive: Archive) -> None:
    release = release_of(archive, "bookworm")
    expected = sorted(
        f"main/installer-amd64/{version}/images/{sums}"
        for version in ("20230607+deb12u1", "current")
        for sums in ("MD5SUMS", "SHA256SUMS")
    )
    for algorithm, key, hasher in (
        ("SHA256", "sha256", hashlib.sha256),
        ("MD5Sum", "md5sum", hashlib.md5),
    ):
        entries = {e["name"]: e for e in release[algorithm] if "/installer-" in e["name"]}
        assert sorted(entries) == expected
        for name, entry in entries.items():
            content = archive.read(f"dists/bookworm/{name}")
            assert int(entry["size"]) == len(content)
            assert entry[key] == hasher(content).hexdigest()
    assert not [e for e in release_of(archive, "bookworm-updates")["SHA256"] if "SUMS" in e["name"]]
