"""Publishing suites: Release lists every index with matching hashes, publish options, point
releases, the security archive beside the main one, expired suites."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import archive_packages
import pytest
from apt import AptRoot
from archive_fixture import (
    Archive,
    InstallerSpec,
    PackageSpec,
    build_security_archive,
    build_test_archive,
    default_packages,
    point_release,
)
from fake_mirror import FakeMirror
from fixture_checks import (
    INITRD,
    INSTALLER,
    LINUX,
    NETBOOT,
    fetch,
    gpgv,
    index_versions,
    read_sums,
    release_date,
    release_of,
)

# `archive` (session, read-only), `own_archive` (one per test, to change) and `mirror` (a
# FakeMirror per test) come from conftest.py.


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


def test_publish_options(tmp_path: Path, own_archive: Archive) -> None:
    date = datetime(2023, 6, 10, 8, 53, 51, tzinfo=UTC)
    own_archive.publish_suite(
        "stable",
        [PackageSpec("hello", "2.10-3", depends="libgreet1 (>= 1.0), greet-data")],
        codename="bookworm",
        date=date,
        valid_until=date + timedelta(days=7),
        by_hash=False,
        compressions=(".xz",),
        signed_forms=("Release.gpg",),
    )
    release_text = own_archive.read("dists/stable/Release").decode()
    assert "Date: Sat, 10 Jun 2023 08:53:51 UTC\n" in release_text
    assert "Valid-Until: Sat, 17 Jun 2023 08:53:51 UTC\n" in release_text
    assert "Acquire-By-Hash" not in release_text
    assert (
        "Codename: bookworm\nSuite" not in release_text
        and "Suite: stable\nCodename: bookworm\n" in release_text
    )
    suite_files = [p for p in own_archive.files() if p.startswith("dists/stable/")]
    assert "dists/stable/InRelease" not in suite_files
    assert not [p for p in suite_files if "by-hash" in p]
    # Like Debian: the uncompressed index is listed in Release but not on disk.
    assert "main/binary-amd64/Packages" in {
        e["name"] for e in release_of(own_archive, "stable")["SHA256"]
    }
    assert "dists/stable/main/binary-amd64/Packages" not in suite_files
    assert "dists/stable/main/binary-amd64/Packages.xz" in suite_files
    signature = own_archive.path("dists/stable/Release.gpg")
    assert (
        gpgv(
            own_archive.key.keyring, signature, own_archive.path("dists/stable/Release")
        ).returncode
        == 0
    )


def test_point_release_keeps_by_hash_and_bumps_mtime(
    own_archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = own_archive
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
    monkeypatch.setattr(archive_packages, "_built", {})
    archive.publish_suite("bookworm", default_packages())
    assert archive.sha256(old_hello) == old_sha256


def test_point_release(own_archive: Archive, tmp_path: Path) -> None:
    archive = own_archive
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
