"""The test archive, FakeMirror and AptRoot themselves, checked without debcache.

Every later test trusts these helpers, so they are tested against the real
tools: gpgv verifies the signatures, apt-get installs from the archive, and
plain http.client talks to the misbehaving mirror.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.client
import io
import lzma
import subprocess
import tarfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import archive_fixture
import pytest
from apt import AptRoot
from archive_fixture import (
    MINBASE,
    Archive,
    InstallerSpec,
    PackageSpec,
    build_security_archive,
    build_test_archive,
    default_packages,
    make_signing_key,
    point_release,
)
from debian import deb822
from fake_mirror import FakeMirror, Fault

HELLO = "/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
TOOL = "/debian/pool/main/t/tool++/tool++_1.0~rc1+dfsg-1_amd64.deb"
INSTALLER = "dists/bookworm/main/installer-amd64"
LINUX = "netboot/debian-installer/amd64/linux"
INITRD = "netboot/debian-installer/amd64/initrd.gz"
NETBOOT = "netboot/netboot.tar.gz"


# `archive` (session, read-only) and `mirror` (a FakeMirror per test) come
# from conftest.py.


@pytest.fixture
def fresh_archive(tmp_path: Path) -> Archive:
    """An archive of its own, for tests that republish or delete files."""
    return build_test_archive(tmp_path / "www")


def gpgv(
    keyring: Path, *files: Path, output: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["gpgv", "--keyring", str(keyring)]
    if output is not None:
        command += ["--output", str(output)]
    return subprocess.run([*command, *map(str, files)], capture_output=True, text=True, check=False)


def fetch(
    mirror: FakeMirror,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=timeout)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    return response, response.read()


def release_of(archive: Archive, suite: str) -> deb822.Release:
    return deb822.Release(archive.read(f"dists/{suite}/Release"))


# -- the archive -----------------------------------------------------------


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


@pytest.mark.parametrize("suite", ["bookworm", "bookworm-updates"])
def test_release_lists_every_index_with_matching_hashes(archive: Archive, suite: str) -> None:
    release = release_of(archive, suite)
    assert release["Suite"] == release["Codename"] == suite
    assert release["Architectures"].split() == ["amd64", "all"]
    assert release["Acquire-By-Hash"] == "yes"
    assert datetime.now(UTC) - release_date(release) < timedelta(hours=1)
    listed = {entry["name"] for entry in release["SHA256"]}
    prefix = f"dists/{suite}/"
    # Of the installer images only the checksum files are listed, as in Debian.
    on_disk = {
        path.removeprefix(prefix)
        for path in archive.files()
        if path.startswith(prefix + "main/")
        and "/by-hash/" not in path
        and ("/installer-" not in path or path.endswith("SUMS"))
    }
    assert listed == on_disk
    assert "main/debian-installer/binary-amd64/Packages.xz" in listed
    for algorithm, key, hasher in (
        ("SHA256", "sha256", hashlib.sha256),
        ("MD5Sum", "md5sum", hashlib.md5),
    ):
        assert {entry["name"] for entry in release[algorithm]} == listed
        for entry in release[algorithm]:
            content = archive.read(f"dists/{suite}/{entry['name']}")
            assert int(entry["size"]) == len(content)
            assert entry[key] == hasher(content).hexdigest()
            by_hash = (
                archive.path(f"dists/{suite}/{entry['name']}").parent
                / "by-hash"
                / algorithm
                / entry[key]
            )
            # dak makes no by-hash copies of the installer's checksum files.
            if entry["name"].endswith("SUMS"):
                assert not by_hash.exists()
            else:
                assert by_hash.read_bytes() == content


def release_date(release: deb822.Release) -> datetime:
    return email.utils.parsedate_to_datetime(release["Date"])


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


def test_publish_options(tmp_path: Path, fresh_archive: Archive) -> None:
    date = datetime(2023, 6, 10, 8, 53, 51, tzinfo=UTC)
    fresh_archive.publish_suite(
        "stable",
        [PackageSpec("hello", "2.10-3", depends="libgreet1 (>= 1.0), greet-data")],
        codename="bookworm",
        date=date,
        valid_until=date + timedelta(days=7),
        by_hash=False,
        compressions=(".xz",),
        signed_forms=("Release.gpg",),
    )
    release_text = fresh_archive.read("dists/stable/Release").decode()
    assert "Date: Sat, 10 Jun 2023 08:53:51 UTC\n" in release_text
    assert "Valid-Until: Sat, 17 Jun 2023 08:53:51 UTC\n" in release_text
    assert "Acquire-By-Hash" not in release_text
    assert (
        "Codename: bookworm\nSuite" not in release_text
        and "Suite: stable\nCodename: bookworm\n" in release_text
    )
    suite_files = [p for p in fresh_archive.files() if p.startswith("dists/stable/")]
    assert "dists/stable/InRelease" not in suite_files
    assert not [p for p in suite_files if "by-hash" in p]
    # Like Debian: the uncompressed index is listed in Release but not on disk.
    assert "main/binary-amd64/Packages" in {
        e["name"] for e in release_of(fresh_archive, "stable")["SHA256"]
    }
    assert "dists/stable/main/binary-amd64/Packages" not in suite_files
    assert "dists/stable/main/binary-amd64/Packages.xz" in suite_files
    signature = fresh_archive.path("dists/stable/Release.gpg")
    assert (
        gpgv(
            fresh_archive.key.keyring, signature, fresh_archive.path("dists/stable/Release")
        ).returncode
        == 0
    )


def test_point_release_keeps_by_hash_and_bumps_mtime(
    fresh_archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = fresh_archive
    old_files = set(archive.files())
    old_release = archive.path("dists/bookworm/Release").stat().st_mtime
    old_hello = archive.pool_path("hello")
    old_sha256 = archive.sha256(old_hello)

    packages = [p for p in default_packages() if p.name != "hello"]
    packages.append(
        PackageSpec("hello", "2.10-3+deb12u1", depends="libgreet1 (>= 1.0), greet-data")
    )
    archive.publish_suite("bookworm", packages)
    archive.remove_pool_file(old_hello)

    new_files = set(archive.files())
    assert old_hello not in new_files
    assert archive.pool_path("hello") == "pool/main/h/hello/hello_2.10-3+deb12u1_amd64.deb"
    # Old by-hash files stay servable for clients mid-update; plain ones are replaced.
    assert {p for p in old_files if "/by-hash/" in p} < {p for p in new_files if "/by-hash/" in p}
    assert archive.path("dists/bookworm/Release").stat().st_mtime >= old_release + 1
    assert (
        "hello_2.10-3+deb12u1" in archive.read("dists/bookworm/main/binary-amd64/Packages").decode()
    )

    # A removed package published again is rebuilt byte-identical (not just
    # taken from the in-process cache of built packages).
    monkeypatch.setattr(archive_fixture, "_built", {})
    archive.publish_suite("bookworm", default_packages())
    assert archive.sha256(old_hello) == old_sha256


def index_versions(archive: Archive, suite: str) -> dict[str, str]:
    """{package: version} over the suite's deb, arch-all and udeb indices."""
    versions = {}
    for index in ("binary-amd64", "binary-all", "debian-installer/binary-amd64"):
        with lzma.open(archive.path(f"dists/{suite}/main/{index}/Packages.xz")) as f:
            for stanza in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False):
                versions[stanza["Package"]] = stanza["Version"]
    return versions


def read_sums(content: bytes) -> dict[str, str]:
    """{"./path": hex} of an installer MD5SUMS/SHA256SUMS."""
    sums = {}
    for line in content.decode().splitlines():
        digest, separator, name = line.partition("  ")
        assert separator and name.startswith("./"), line
        sums[name] = digest
    return sums


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


def test_point_release(fresh_archive: Archive, tmp_path: Path) -> None:
    archive = fresh_archive
    before = index_versions(archive, "bookworm")
    old_pool = {spec.name: spec.pool_path() for spec in archive.packages("bookworm")}
    old_release = release_of(archive, "bookworm")
    old_images = f"{INSTALLER}/20230607+deb12u1/images/"
    old_image_bytes = {
        name: archive.read(old_images + name) for name in ("SHA256SUMS", LINUX, INITRD, NETBOOT)
    }
    updates_inrelease = archive.read("dists/bookworm-updates/InRelease")
    apt = AptRoot(tmp_path / "apt")

    with FakeMirror(archive.root) as mirror:
        apt.write_sources(
            [f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian bookworm main"]
        )
        assert apt.update().returncode == 0

        changes = point_release(archive)

        assert changes == {
            "hello": ("2.10-3", "2.10-3+deb12u1"),
            "libgreet1": ("1.0-1", "1.0-1+deb12u1"),
            "libc6": ("2.36-9+deb12u1", "2.36-9+deb12u2"),
            "kernel-image-6.1.0-9-amd64-di": ("6.1.38-1", ""),
            "kernel-image-6.1.0-10-amd64-di": ("", "6.1.38-2"),
        }
        after = index_versions(archive, "bookworm")
        assert {
            name: (before.get(name, ""), after.get(name, ""))
            for name in before.keys() | after.keys()
            if before.get(name) != after.get(name)
        } == changes
        release = release_of(archive, "bookworm")
        assert release_date(release) > release_date(old_release)
        assert gpgv(archive.key.keyring, archive.path("dists/bookworm/InRelease")).returncode == 0
        assert archive.read("dists/bookworm-updates/InRelease") == updates_inrelease

        # `current` now serves the new build, over HTTP too.
        assert archive.installer("bookworm") == InstallerSpec(
            "20230607+deb12u2", "6.1.0-10", kernel_udeb_version="6.1.38-2"
        )
        response, linux = fetch(mirror, "/debian/" + archive.installer_path("bookworm", LINUX))
        assert response.status == 200 and linux.startswith(b"Linux version 6.1.0-10-amd64 ")
        initrd_gz = fetch(mirror, "/debian/" + archive.installer_path("bookworm", INITRD))[1]
        assert b"lib/modules/6.1.0-10-amd64/" in gzip.decompress(initrd_gz)
        sums = read_sums(
            fetch(mirror, "/debian/" + archive.installer_path("bookworm", "SHA256SUMS"))[1]
        )
        assert sums[f"./{LINUX}"] == hashlib.sha256(linux).hexdigest()
        assert sums[f"./{INITRD}"] == hashlib.sha256(initrd_gz).hexdigest()
        assert linux != old_image_bytes[LINUX]
        # The old version directory stays as it was, and Release lists all three.
        for name, content in old_image_bytes.items():
            assert archive.read(old_images + name) == content
        assert sorted(e["name"] for e in release["SHA256"] if e["name"].endswith("SHA256SUMS")) == [
            f"main/installer-amd64/{version}/images/SHA256SUMS"
            for version in ("20230607+deb12u1", "20230607+deb12u2", "current")
        ]

        # Superseded pool files are gone; the unchanged ones stay where they were.
        for name in ("hello", "libgreet1", "libc6", "kernel-image-6.1.0-9-amd64-di"):
            assert not archive.path(old_pool[name]).exists()
            assert fetch(mirror, "/debian/" + old_pool[name])[0].status == 404
        new_pool = {spec.name: spec.pool_path() for spec in archive.packages("bookworm")}
        for name in ("bigpkg", "tool++", "greet-data", "netcfg-test"):
            assert new_pool[name] == old_pool[name]
        assert all(archive.path(path).is_file() for path in new_pool.values())
        assert archive.pool_path("hello") == "pool/main/h/hello/hello_2.10-3+deb12u1_amd64.deb"

        # apt follows: the Release Date (up to a second ahead) is accepted.
        update = apt.update()
        assert update.returncode == 0 and "W:" not in update.stderr, update.stderr
        download = apt.download("hello")
        assert download.returncode == 0, download.stderr
        assert sorted(apt.downloaded()) == [
            "greet-data_2.10-3_all.deb",
            "hello_2.10-3+deb12u1_amd64.deb",
            "libgreet1_1.0-1+deb12u1_amd64.deb",
        ]

    # Another point release continues the numbering.
    again = point_release(archive)
    assert again["hello"] == ("2.10-3+deb12u1", "2.10-3+deb12u2")
    assert again["kernel-image-6.1.0-11-amd64-di"] == ("", "6.1.38-3")
    assert archive.installer("bookworm").version == "20230607+deb12u3"


def test_suite_signed_by_another_key(fresh_archive: Archive, tmp_path: Path) -> None:
    archive = fresh_archive
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


def test_security_archive_shares_the_web_root_and_the_mirror(tmp_path: Path) -> None:
    main = build_test_archive(tmp_path / "www")
    security = build_security_archive(tmp_path / "www", key=main.key)
    assert security.root == main.root and security.base == "debian-security"
    assert security.path("") == tmp_path / "www" / "debian-security"
    assert not [p for p in main.files() if "security" in p]
    release = release_of(security, "bookworm-security")
    assert (release["Origin"], release["Label"]) == ("Debian", "Debian-Security")
    assert release["Suite"] == release["Codename"] == "bookworm-security"
    dists = security.path("dists/bookworm-security")
    assert gpgv(main.key.keyring, dists / "InRelease").returncode == 0
    fix = security.pool_path("libgreet1")
    assert fix == "pool/main/libg/libgreet1/libgreet1_1.0-1+deb12u2_amd64.deb"
    # bookworm's indices are untouched: still Label Debian, still libgreet1 1.0-1.
    assert release_of(main, "bookworm")["Label"] == "Debian"
    assert main.pool_path("libgreet1") == "pool/main/libg/libgreet1/libgreet1_1.0-1_amd64.deb"

    apt = AptRoot(tmp_path / "apt")
    with FakeMirror(main.root) as mirror:
        keyring = main.key.keyring
        apt.write_sources(
            [
                f"deb [signed-by={keyring}] {mirror.url}/debian bookworm main",
                f"deb [signed-by={keyring}] {mirror.url}/debian-security bookworm-security main",
            ]
        )
        update = apt.update()
        assert update.returncode == 0, update.stdout + update.stderr
        assert "W:" not in update.stderr
        download = apt.download("hello", "greet-sandbox")
        assert download.returncode == 0, download.stdout + download.stderr
    downloaded = apt.downloaded()
    assert sorted(downloaded) == [
        "greet-data_2.10-3_all.deb",
        "greet-sandbox_1.0-1~deb12u1_amd64.deb",
        "hello_2.10-3_amd64.deb",
        "libgreet1_1.0-1+deb12u2_amd64.deb",
    ]
    assert downloaded["libgreet1_1.0-1+deb12u2_amd64.deb"] == security.read(fix)
    assert mirror.count(f"/debian-security/{fix}") == 1

    # Without a key, the security archive gets one of its own.
    alone = build_security_archive(tmp_path / "other")
    assert alone.key.fingerprint != main.key.fingerprint
    assert alone.key.keyring == tmp_path / "other-security-key" / "keyring.gpg"
    inrelease = alone.path("dists/bookworm-security/InRelease")
    assert gpgv(alone.key.keyring, inrelease).returncode == 0
    assert gpgv(main.key.keyring, inrelease).returncode != 0


def test_an_expired_suite_is_refused_by_apt_unless_told_otherwise(tmp_path: Path) -> None:
    archive = build_test_archive(tmp_path / "www", expired_updates=True)
    release = release_of(archive, "bookworm-updates")
    now = datetime.now(UTC)
    valid_until = email.utils.parsedate_to_datetime(release["Valid-Until"])
    assert release_date(release) < valid_until < now - timedelta(days=6)
    assert "Valid-Until" not in release_of(archive, "bookworm")
    # Still properly signed: only the date is wrong.
    assert (
        gpgv(archive.key.keyring, archive.path("dists/bookworm-updates/InRelease")).returncode == 0
    )

    apt = AptRoot(tmp_path / "apt")
    with FakeMirror(archive.root) as mirror:
        apt.write_sources(
            [
                f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian {suite} main"
                for suite in ("bookworm", "bookworm-updates")
            ]
        )
        refused = apt.update()
        assert refused.returncode == 100, refused.stdout + refused.stderr
        expired = [line for line in refused.stderr.splitlines() if "is expired" in line]
        assert len(expired) == 1, refused.stderr
        assert "dists/bookworm-updates/InRelease is expired (invalid since 7d" in expired[0]
        # apt stopped there: no index of the expired suite was fetched.
        assert not [r for r in mirror.requests if "bookworm-updates/main" in r.decoded_path]

        unchecked = {"Acquire::Check-Valid-Until": "false"}
        accepted = apt.update(options=unchecked)
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        download = apt.download("greet-tzdata", options=unchecked)
        assert download.returncode == 0, download.stdout + download.stderr
    assert list(apt.downloaded()) == ["greet-tzdata_2026a-0+deb12u1_all.deb"]


def test_archives_per_test_are_independent(archive: Archive, tmp_path: Path) -> None:
    # The session archive has built every default package and installer image.
    built = set(archive_fixture._built)
    images = set(archive_fixture._installer_images)
    first = build_test_archive(tmp_path / "first")
    second = build_test_archive(tmp_path / "second")
    assert set(archive_fixture._built) == built
    assert set(archive_fixture._installer_images) == images

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


# -- apt against the plain mirror ------------------------------------------


def test_apt_installs_from_the_plain_mirror(
    archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    apt = AptRoot(tmp_path / "apt")
    keyring = archive.key.keyring
    apt.write_sources(
        [
            f"deb [signed-by={keyring}] {mirror.url}/debian bookworm main",
            f"deb [signed-by={keyring}] {mirror.url}/debian bookworm-updates main",
        ]
    )
    update = apt.update()
    assert update.returncode == 0, update.stdout + update.stderr
    assert "W:" not in update.stderr and "E:" not in update.stderr
    # Only our sources: nothing from the host's sources.list(.d).
    fetched = [line for line in update.stdout.splitlines() if line.startswith(("Get:", "Hit:"))]
    assert len(fetched) == 6 and all(mirror.url in line for line in fetched), update.stdout
    # Acquire-By-Hash: apt asks for the by-hash name of Packages.xz only.
    packages_xz = "dists/bookworm/main/binary-amd64/Packages.xz"
    by_hash = (
        f"/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{archive.sha256(packages_xz)}"
    )
    assert mirror.count(by_hash, "GET") == 1
    assert mirror.count(f"/debian/{packages_xz}") == 0

    download = apt.download("hello", "bigpkg", "tool++", "greet-tools")
    assert download.returncode == 0, download.stdout + download.stderr
    expected = {
        "hello_2.10-3_amd64.deb": archive.pool_path("hello"),
        "libgreet1_1.0-1_amd64.deb": archive.pool_path("libgreet1"),
        "greet-data_2.10-3_all.deb": archive.pool_path("greet-data"),
        "greet-tools_1.1-1~deb12u1_amd64.deb": archive.pool_path("greet-tools"),
        # apt quotes the epoch colon in its local file name.
        "bigpkg_1%3a3.0-1_amd64.deb": archive.pool_path("bigpkg"),
        "tool++_1.0~rc1+dfsg-1_amd64.deb": archive.pool_path("tool++"),
    }
    downloaded = apt.downloaded()
    assert sorted(downloaded) == sorted(expected)
    for name, pool_path in expected.items():
        assert downloaded[name] == archive.read(pool_path), name
    # apt percent-quotes "+" and "~"; the mirror matched the decoded path.
    raw = [r.path for r in mirror.requests if r.decoded_path == TOOL]
    assert raw == ["/debian/pool/main/t/tool%2b%2b/tool%2b%2b_1.0%7erc1%2bdfsg-1_amd64.deb"]

    # The second update is conditional and gets 304s.
    mirror.reset()
    again = apt.update()
    assert again.returncode == 0, again.stderr
    assert "Hit:1" in again.stdout
    inrelease = [r for r in mirror.requests if r.decoded_path == "/debian/dists/bookworm/InRelease"]
    assert len(inrelease) == 1 and "If-Modified-Since" in inrelease[0].headers
    assert [
        r for r in mirror.requests if "Packages" in r.decoded_path or "by-hash" in r.decoded_path
    ] == []


def test_apt_rejects_a_corrupt_package(
    archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    apt = AptRoot(tmp_path / "apt")
    apt.write_sources([f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian bookworm main"])
    assert apt.update().returncode == 0
    mirror.set_fault(HELLO, Fault.corrupt())
    result = apt.download("hello")
    assert result.returncode == 100
    assert "Hash Sum mismatch" in result.stderr
    assert "hello_2.10-3_amd64.deb" not in apt.downloaded()


def test_apt_root_sees_no_host_packages(tmp_path: Path) -> None:
    # With the host's dpkg status apt would know dpkg is installed.
    result = AptRoot(tmp_path / "apt").run("-s", "remove", "dpkg")
    assert result.returncode == 100
    assert "Unable to locate package dpkg" in result.stderr


def test_apt_ignores_host_proxy_settings(
    archive: Archive, mirror: FakeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dead proxy in the environment would make every fetch fail.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9/")
    apt = AptRoot(tmp_path / "apt")
    apt.write_sources([f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian bookworm main"])
    assert apt.update().returncode == 0


def test_apt_through_a_proxy_sends_absolute_uris(
    archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    # FakeMirror answers absolute-URI requests too, so it can stand in for a proxy.
    apt = AptRoot(tmp_path / "apt")
    apt.write_sources(
        [f"deb [signed-by={archive.key.keyring}] http://mirror.example.org/debian bookworm main"]
    )
    result = apt.update(proxy=mirror.url + "/")
    assert result.returncode == 0, result.stderr
    request = mirror.requests[0]
    assert request.path == "http://mirror.example.org/debian/dists/bookworm/InRelease"
    assert request.headers["Host"] == "mirror.example.org"


# -- FakeMirror ------------------------------------------------------------


def test_mirror_serves_files_plainly(archive: Archive, mirror: FakeMirror) -> None:
    response, body = fetch(
        mirror,
        "/debian/dists/bookworm/main/binary-amd64/Packages",
        headers={"Accept-Encoding": "gzip"},
    )
    assert response.status == 200
    assert body == archive.read("dists/bookworm/main/binary-amd64/Packages")
    assert response.getheader("Content-Length") == str(len(body))
    assert response.getheader("Content-Type") == "application/octet-stream"
    assert response.getheader("Content-Encoding") is None
    last_modified = response.getheader("Last-Modified")
    assert last_modified is not None

    head, head_body = fetch(mirror, HELLO, method="HEAD")
    assert (head.status, head_body) == (200, b"")
    assert head.getheader("Content-Length") == str(
        len(archive.read(HELLO.removeprefix("/debian/")))
    )

    quoted, quoted_body = fetch(
        mirror, "/debian/pool/main/t/tool%2b%2b/tool%2b%2b_1.0%7erc1%2bdfsg-1_amd64.deb"
    )
    assert quoted.status == 200 and quoted_body == archive.read(TOOL.removeprefix("/debian/"))

    not_modified, _ = fetch(
        mirror, "/debian/dists/bookworm/InRelease", headers={"If-Modified-Since": last_modified}
    )
    assert not_modified.status == 304
    old = "Sat, 10 Jun 2023 08:53:51 GMT"
    modified, _ = fetch(
        mirror, "/debian/dists/bookworm/InRelease", headers={"If-Modified-Since": old}
    )
    assert modified.status == 200

    assert fetch(mirror, "/debian/pool/main/n/nothing.deb")[0].status == 404
    assert fetch(mirror, "/debian/dists")[0].status == 404
    assert fetch(mirror, "/debian/%2e%2e/%2e%2e/etc/passwd")[0].status in (403, 404)
    assert fetch(mirror, HELLO, headers={"Range": "bytes=100-"})[0].status == 200

    assert mirror.count(HELLO) == 2
    assert mirror.count(HELLO, "HEAD") == 1
    assert mirror.count(TOOL) == 1
    assert mirror.requests[0].headers["accept-encoding"] == "gzip"


def test_status_fault_permanent_and_one_shot(mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.status(500))
    assert [fetch(mirror, HELLO)[0].status for _ in range(2)] == [500, 500]
    mirror.set_fault(HELLO, Fault.status(503, times=1))
    assert [fetch(mirror, HELLO)[0].status for _ in range(2)] == [503, 200]
    mirror.set_fault(HELLO, Fault.status(404))
    mirror.clear_fault(HELLO)
    assert fetch(mirror, HELLO)[0].status == 200
    mirror.set_fault(HELLO, Fault.status(500))
    mirror.reset()
    assert fetch(mirror, HELLO)[0].status == 200
    assert mirror.count(HELLO) == 1


def test_truncate_fault_sends_a_short_body(archive: Archive, mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.truncate(100))
    connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=10)
    connection.request("GET", HELLO)
    response = connection.getresponse()
    assert response.getheader("Content-Length") == str(
        len(archive.read(HELLO.removeprefix("/debian/")))
    )
    with pytest.raises(http.client.IncompleteRead) as error:
        response.read()
    assert len(error.value.partial) == 100


def test_corrupt_fault_flips_bytes(archive: Archive, mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.corrupt(times=1))
    response, body = fetch(mirror, HELLO)
    good = archive.read(HELLO.removeprefix("/debian/"))
    assert response.status == 200
    assert len(body) == len(good) and body != good
    assert fetch(mirror, HELLO)[1] == good


def test_hang_fault_times_out_on_the_client(mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.hang(30))
    with pytest.raises(TimeoutError):
        fetch(mirror, HELLO, timeout=0.3)


def test_stop_ends_a_hang_at_once(archive: Archive) -> None:
    mirror = FakeMirror(archive.root).start()
    mirror.set_fault(HELLO, Fault.hang(60))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            fetch(mirror, HELLO, timeout=30)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    mirror.wait_for_requests(HELLO)
    mirror.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], http.client.RemoteDisconnected)


def test_slow_fault_overlaps_concurrent_clients(archive: Archive, mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.slow(chunk=512, delay=0.02))
    results: dict[int, tuple[bytes, float]] = {}

    def client(number: int) -> None:
        body = fetch(mirror, HELLO)[1]
        results[number] = (body, time.monotonic())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    good = archive.read(HELLO.removeprefix("/debian/"))
    assert [body for body, _ in results.values()] == [good, good]
    arrivals = [r.time for r in mirror.requests if r.decoded_path == HELLO]
    assert len(arrivals) == 2
    # Both requests were being served at the same time.
    assert max(arrivals) < min(finished for _, finished in results.values())


def test_redirect_fault(archive: Archive, mirror: FakeMirror) -> None:
    target = "/debian/dists/bookworm/Release"
    mirror.set_fault(HELLO, Fault.redirect(target))
    response, _ = fetch(mirror, HELLO)
    assert response.status == 302
    assert response.getheader("Location") == target
    with urllib.request.urlopen(mirror.url + HELLO, timeout=10) as followed:
        assert followed.read() == archive.read("dists/bookworm/Release")
    assert mirror.count(target) == 1


def test_chunked_fault(archive: Archive, mirror: FakeMirror) -> None:
    mirror.set_fault(TOOL, Fault.chunked())
    response, body = fetch(mirror, TOOL)
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Length") is None
    assert body == archive.read(TOOL.removeprefix("/debian/"))
