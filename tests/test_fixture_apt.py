"""AptRoot: the real apt-get installs from the plain mirror, isolated from the host's packages
and proxy settings, and sends absolute URIs through a proxy."""

from __future__ import annotations

from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import (
    Archive,
)
from fake_mirror import FakeMirror, Fault
from fixture_checks import (
    HELLO,
    TOOL,
)

# `archive` (session, read-only), `own_archive` (one per test, to change) and `mirror` (a
# FakeMirror per test) come from conftest.py.


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
