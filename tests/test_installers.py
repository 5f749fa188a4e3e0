"""User story: debootstrap installs through debcache: live, recorded, and pinned.

The real ``debootstrap --download-only --variant=minbase`` (GNU wget underneath,
one connection per file, gpgv on the InRelease) fetches the test archive's
minbase through debcache, as a mirror URL and as an HTTP proxy. A recorded run
is frozen and promoted; after a point release, and with the mirror gone, a
debootstrap from ``/pin/<branch>/debian`` gets the recorded .debs byte for byte.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from archive_fixture import MINBASE, Archive, build_test_archive, point_release
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from workflow import freeze_json, manifest_json

DEBOOTSTRAP_TIMEOUT = 120
# What debootstrap's minbase fetches from bookworm (MINBASE), with versions.
MINBASE_DEBS = {
    "apt": "2.6.1",
    "base-files": "12.4+deb12u1",
    "dpkg": "1.21.22",
    "libapt-pkg6.0": "2.6.1",
    "libc6": "2.36-9+deb12u1",
    "usr-is-merged": "37~deb12u1",
}


def debootstrap(
    archive: Archive, target: Path, url: str, *, proxy: str | None = None
) -> dict[str, bytes]:
    """``debootstrap --download-only --variant=minbase bookworm target url``, which must
    succeed; returns file name to bytes of the .debs it left in var/cache/apt/archives."""
    home = target.parent / f"{target.name}-home"
    home.mkdir(parents=True)
    # Nothing from the host: no proxy but ours, no wgetrc (the system one via
    # SYSTEM_WGETRC, the user's via HOME), the C locale for the messages.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",
        "SYSTEM_WGETRC": os.devnull,
    }
    if proxy is not None:
        env["http_proxy"] = proxy
    command = [
        "debootstrap",
        "--download-only",
        "--variant=minbase",
        "--arch=amd64",
        f"--keyring={archive.key.keyring}",
        "bookworm",
        str(target),
        url,
    ]
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEBOOTSTRAP_TIMEOUT,
        check=False,
    )
    # debootstrap logs wget's own messages (the failing URL, the status) only here.
    log = target / "debootstrap" / "debootstrap.log"
    assert result.returncode == 0, (
        f"{' '.join(command)} (http_proxy={proxy}) exited {result.returncode}\n"
        f"{result.stdout}{result.stderr}\n"
        f"--- {log}:\n{log.read_text(errors='replace') if log.exists() else '(none)'}"
    )
    archives = target / "var" / "cache" / "apt" / "archives"
    return {path.name: path.read_bytes() for path in sorted(archives.glob("*.deb"))}


def minbase_of(archive: Archive, versions: dict[str, str] = MINBASE_DEBS) -> dict[str, bytes]:
    """The .debs debootstrap should leave, as debootstrap names them, from the archive."""
    return {
        f"{name}_{version}_amd64.deb": archive.read(archive.pool_path(name, version))
        for name, version in versions.items()
    }


def pool_requests(mirror: FakeMirror) -> list[str]:
    return [r.decoded_path for r in mirror.requests if "/pool/" in r.decoded_path]


def test_minbase_matches_the_fixture() -> None:
    assert sorted(MINBASE_DEBS) == sorted(MINBASE)


def test_debootstrap_accepts_the_test_archive_from_the_plain_mirror(
    archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    # The baseline, without debcache: what debootstrap asks a mirror for.
    assert debootstrap(archive, tmp_path / "target", f"{mirror.url}/debian") == minbase_of(archive)
    paths = [r.decoded_path.removeprefix("/debian/") for r in mirror.requests]
    assert paths[0] == "dists/bookworm/InRelease"
    assert "/binary-amd64/by-hash/SHA256/" in paths[1]
    assert sorted(paths[2:]) == sorted(archive.pool_path(n, v) for n, v in MINBASE_DEBS.items())
    # GNU wget, straight to the mirror: no proxy from the host's environment.
    assert all(r.headers["User-Agent"].startswith("Wget/") for r in mirror.requests)
    assert not [r for r in mirror.requests if "Proxy-Authorization" in r.headers]


def test_debootstrap_through_the_mirror_url(
    archive: Archive, mirror: FakeMirror, debcache: DebcacheServer, tmp_path: Path
) -> None:
    debs = debootstrap(archive, tmp_path / "first", f"{debcache.url}/debian")
    assert debs == minbase_of(archive)
    rows = debcache.wait_for_fetches(len(mirror.requests))
    assert len(rows) == len(mirror.requests) == 2 + len(MINBASE_DEBS)
    assert all(r["complete"] and r["status"] == 200 and r["source"] == "miss" for r in rows)
    assert all(r["recording"] is None and r["upstream"] == "debian" for r in rows)
    assert "dists/bookworm/InRelease" in {r["path"] for r in rows}

    # A second bootstrap gets its pool files from the cache; indices are revalidated.
    fetched = pool_requests(mirror)
    again = debootstrap(archive, tmp_path / "second", f"{debcache.url}/debian")
    assert again == debs
    assert pool_requests(mirror) == fetched


def test_debootstrap_through_the_proxy_records_the_wget_user(
    archive: Archive, mirror: FakeMirror, debcache: DebcacheServer, tmp_path: Path
) -> None:
    # The mirror URL is the mirror's own; debcache is wget's proxy. GNU wget sends
    # Proxy-Authorization only for "user:@", not for "user@".
    proxy = f"http://boot-proxy:@127.0.0.1:{debcache.port}/"
    debs = debootstrap(archive, tmp_path / "target", f"{mirror.url}/debian", proxy=proxy)
    assert debs == minbase_of(archive)
    rows = debcache.wait_for_fetches(len(mirror.requests), recording="boot-proxy")
    assert len(rows) == len(debcache.fetches()) == len(mirror.requests)
    paths = {r["path"] for r in rows}
    assert "dists/bookworm/InRelease" in paths
    assert {archive.pool_path(n, v) for n, v in MINBASE_DEBS.items()} <= paths
    assert all(r["upstream"] == "debian" and r["complete"] and r["status"] == 200 for r in rows)


@pytest.fixture(params=["inrelease-by-hash", "release-gpg-plain"])
def own_archive(request: pytest.FixtureRequest, tmp_path: Path) -> Archive:
    """An archive this test may change (point releases), in two forms.

    inrelease-by-hash: as Debian publishes now. release-gpg-plain: no InRelease and
    no Acquire-By-Hash, so debootstrap takes its other path: InRelease (404), Release,
    Release.gpg, then the plain Packages.gz. point_release keeps the form.
    """
    archive = build_test_archive(tmp_path / "www")
    if request.param == "release-gpg-plain":
        archive.publish_suite(
            "bookworm",
            archive.packages("bookworm"),
            codename="bookworm",
            by_hash=False,
            signed_forms=("Release.gpg",),
        )
    return archive


def test_a_recorded_debootstrap_is_pinned_through_a_point_release_and_a_dead_mirror(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    recorded = debootstrap(
        own_archive, tmp_path / "recorded", f"{own_debcache.url}/record/boot-1/debian"
    )
    assert recorded == minbase_of(own_archive)
    rows = own_debcache.wait_for_fetches(len(own_mirror.requests), recording="boot-1")
    assert all(r["complete"] for r in rows)
    frozen = freeze_json(own_debcache, "boot-1", "--promote", "minbase")
    assert frozen["promoted"] == "minbase" and frozen["unverified"] == []
    entries = manifest_json(own_debcache, frozen["id"])["entries"]
    assert {e["package"]: e["version"] for e in entries if e["package"]} == MINBASE_DEBS

    changes = point_release(own_archive)
    assert changes["libc6"] == ("2.36-9+deb12u1", "2.36-9+deb12u2")
    # The live path follows the point release...
    live = debootstrap(own_archive, tmp_path / "live", f"{own_debcache.url}/debian")
    assert live == minbase_of(own_archive, {**MINBASE_DEBS, "libc6": "2.36-9+deb12u2"})

    # ...the pin does not, and needs no mirror.
    own_mirror.stop()
    before = len(own_mirror.requests)
    pinned = debootstrap(own_archive, tmp_path / "pinned", f"{own_debcache.url}/pin/minbase/debian")
    assert pinned == recorded
    assert len(own_mirror.requests) == before
    # The pin answered what the recording got, as the recording got it.
    served = {(r["path"], r["status"]) for r in own_debcache.fetches() if r["source"] == "pinned"}
    assert served == {(r["path"], r["status"]) for r in rows}
