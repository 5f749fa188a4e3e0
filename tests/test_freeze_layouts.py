"""User story: freeze accepts the layouts real Debian archives and installers produce.

Release + Release.gpg beside InRelease (d-i and debootstrap next to apt),
installer checksum files the Release lists itself, and the security archive's
pool/updates/main/ file names. (Found in review: each failed once.)
"""

from __future__ import annotations

from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import freeze_json, manifest_json, record_install


def test_release_and_release_gpg_recorded_beside_inrelease_are_frozen(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    # apt fetches InRelease; d-i / debootstrap-era tools fetch Release + Release.gpg.
    # Both in one recording: the replay needs both, so both must be in the manifest.
    record_install(keyed_debcache, apt, archive, mirror, "mixed", "hello")
    before, rows_before = len(mirror.requests), len(keyed_debcache.fetches("mixed"))
    for name in ("Release", "Release.gpg"):
        reply = get(keyed_debcache.url, f"/record/mixed/debian/dists/bookworm/{name}")
        assert reply.status == 200
    keyed_debcache.wait_for_fetches(rows_before + len(mirror.requests) - before, recording="mixed")
    frozen = freeze_json(keyed_debcache, "mixed")
    paths = {e["path"] for e in manifest_json(keyed_debcache, frozen["id"])["entries"]}
    assert "dists/bookworm/InRelease" in paths
    assert "dists/bookworm/Release" in paths
    assert "dists/bookworm/Release.gpg" in paths


def test_installer_md5sums_listed_in_release_freezes(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    # The Release lists images/MD5SUMS (as Debian's does); freeze checks every file under
    # images/ against SHA256SUMS only, which does not list MD5SUMS.
    before = len(mirror.requests)
    images = "dists/bookworm/main/installer-amd64/current/images"
    for path in ("dists/bookworm/InRelease", f"{images}/SHA256SUMS", f"{images}/MD5SUMS"):
        assert get(keyed_debcache.url, f"/record/sums/debian/{path}").status == 200
    keyed_debcache.wait_for_fetches(len(mirror.requests) - before, recording="sums")
    freeze_json(keyed_debcache, "sums")


def test_security_pool_paths_under_pool_updates_find_their_packages() -> None:
    # security.debian.org: Filename: pool/updates/main/o/openssl/..., index main/binary-amd64.
    from debcache.archive import ReleaseEntry, ReleaseInfo
    from debcache.freeze import PackagesListings

    entry = ReleaseEntry("main/binary-amd64/Packages.xz", "0" * 64, 1)
    info = ReleaseInfo(None, None, None, None, {entry.name: entry})
    listings = PackagesListings(None, None, {"bookworm-security": info}, {})  # type: ignore[arg-type]
    deb = "pool/updates/main/o/openssl/libssl3_3.0.11-1~deb12u2_amd64.deb"
    assert listings._directories_for(deb) == [("bookworm-security", "main/binary-amd64")]


def test_netboot_images_fetched_without_their_checksums_still_freeze(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror
) -> None:
    # A lab's image-update script fetches just the kernel and initrd (and InRelease).
    paths = [
        "dists/bookworm/InRelease",
        archive.installer_path("bookworm", "netboot/debian-installer/amd64/linux"),
        archive.installer_path("bookworm", "netboot/debian-installer/amd64/initrd.gz"),
    ]
    for path in paths:
        assert get(keyed_debcache.url, f"/record/netboot-only/debian/{path}").status == 200
    keyed_debcache.wait_for_fetches(len(paths), recording="netboot-only")
    frozen = freeze_json(keyed_debcache, "netboot-only")
    entries = {e["path"] for e in manifest_json(keyed_debcache, frozen["id"])["entries"]}
    sums = archive.installer_path("bookworm", "SHA256SUMS")
    assert set(paths) | {sums} <= entries
