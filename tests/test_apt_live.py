"""User story: apt installs through debcache, as a mirror URL or as an HTTP proxy.

The real apt-get, with isolated state, against the real signed test archive.
Every file apt gets must be byte-identical to the archive's, a second install
must be served from the cache, and every request must land in the fetch log
with its recording tag.
"""

from __future__ import annotations

from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror

PACKAGES = ("hello", "tool++", "bigpkg")
# What apt-get install --download-only PACKAGES fetches from bookworm, with versions.
BOOKWORM_DEBS = {
    "hello": "2.10-3",
    "libgreet1": "1.0-1",
    "greet-data": "2.10-3",
    "tool++": "1.0~rc1+dfsg-1",
    "bigpkg": "1:3.0-1",
}


def assert_same_debs(apt: AptRoot, archive: Archive) -> None:
    """apt got hello with its dependencies, tool++ and bigpkg, byte for byte."""
    downloaded = apt.downloaded()
    assert len(downloaded) == len(BOOKWORM_DEBS), sorted(downloaded)
    expected = {archive.read(archive.pool_path(n, v)) for n, v in BOOKWORM_DEBS.items()}
    assert set(downloaded.values()) == expected


def test_apt_installs_through_the_mirror_url(
    apt: AptRoot, archive: Archive, mirror: FakeMirror, debcache: DebcacheServer
) -> None:
    apt.write_sources(
        [f"deb [signed-by={archive.key.keyring}] {debcache.url}/debian bookworm main"]
    )
    update = apt.update()
    assert update.returncode == 0, update.stdout + update.stderr
    assert "W:" not in update.stdout + update.stderr
    result = apt.download(*PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_debs(apt, archive)

    rows = debcache.wait_for_fetches(len(mirror.requests))
    assert {row["source"] for row in rows} == {"miss"}
    assert all(row["complete"] and row["status"] == 200 for row in rows)
    assert all(row["recording"] is None for row in rows)


def test_a_second_install_is_served_from_the_cache(
    apt: AptRoot, archive: Archive, mirror: FakeMirror, debcache: DebcacheServer, tmp_path
) -> None:
    sources = [f"deb [signed-by={archive.key.keyring}] {debcache.url}/debian bookworm main"]
    apt.write_sources(sources)
    assert apt.update().returncode == 0
    assert apt.download(*PACKAGES).returncode == 0
    pool_requests = [r for r in mirror.requests if "/pool/" in r.decoded_path]
    assert len(pool_requests) == 5

    second = AptRoot(tmp_path / "second")
    second.write_sources(sources)
    assert second.update().returncode == 0
    result = second.download(*PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_debs(second, archive)
    # Pool files never go upstream again; indices are revalidated, not re-downloaded.
    assert [r for r in mirror.requests if "/pool/" in r.decoded_path] == pool_requests
    revalidations = [r for r in mirror.requests[len(pool_requests) :] if "/dists/" in r.path]
    assert revalidations and all("If-Modified-Since" in r.headers for r in revalidations[-2:])


def test_apt_through_the_forward_proxy_records_the_proxy_user(
    apt: AptRoot, archive: Archive, mirror: FakeMirror, debcache: DebcacheServer
) -> None:
    # The sources name the mirror itself; debcache sits in between as apt's proxy.
    apt.write_sources([f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian bookworm main"])
    proxy = f"http://install-42@127.0.0.1:{debcache.port}/"
    update = apt.update(proxy=proxy)
    assert update.returncode == 0, update.stdout + update.stderr
    result = apt.download(*PACKAGES, proxy=proxy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_debs(apt, archive)

    rows = debcache.wait_for_fetches(len(mirror.requests), recording="install-42")
    paths = {row["path"] for row in rows}
    assert "dists/bookworm/InRelease" in paths
    assert archive.pool_path("tool++", BOOKWORM_DEBS["tool++"]) in paths
    assert all(row["upstream"] == "debian" and row["complete"] for row in rows)
    assert len(rows) == len(debcache.fetches())


def test_record_urls_tag_every_fetch_with_the_recording(
    apt: AptRoot, archive: Archive, mirror: FakeMirror, debcache: DebcacheServer
) -> None:
    apt.write_sources(
        [f"deb [signed-by={archive.key.keyring}] {debcache.url}/record/rec-1/debian bookworm main"]
    )
    assert apt.update().returncode == 0
    assert apt.download("hello").returncode == 0
    hello = archive.pool_path("hello", "2.10-3")
    rows = debcache.wait_for_rows(
        lambda rows: len(rows) >= 4 and hello in {row["path"] for row in rows},
        "hello's row",
        recording="rec-1",
    )
    by_path = {row["path"]: row for row in rows}
    assert by_path[hello]["sha256"] == archive.sha256(hello)
    assert by_path[hello]["size"] == len(archive.read(hello))
    assert by_path["dists/bookworm/InRelease"]["sha256"] == archive.sha256(
        "dists/bookworm/InRelease"
    )
