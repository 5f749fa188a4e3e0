"""User story (the acceptance scenario): a release branch installs the same bytes forever.

Record an install with the real apt-get, freeze it and promote it to a branch;
then Debian publishes a point release. Through /pin/ apt still gets the old
versions byte for byte, through the live path the new ones; with the mirror
gone the pinned install still works; promote and rollback switch the set.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from apt import AptRoot, install_from
from archive_fixture import Archive, point_release
from debcache_server import DebcacheServer, make_config, write_config_file
from fake_mirror import FakeMirror, Fault
from http_client import get
from workflow import freeze_json, keyed_debcache_for, record_install, run

from debcache.config import Branch

PACKAGES = ("hello", "tool++", "bigpkg")
INSTALLER_FILES = (
    "netboot/debian-installer/amd64/linux",
    "netboot/debian-installer/amd64/initrd.gz",
    "SHA256SUMS",
)


def pinned_sources(server: DebcacheServer, archive: Archive, branch: str) -> list[str]:
    url = f"{server.url}/pin/{branch}/debian"
    return [f"deb [signed-by={archive.key.keyring}] {url} bookworm main"]


def freeze_and_promote(own_debcache: DebcacheServer, recording: str, branch: str) -> str:
    frozen = freeze_json(own_debcache, recording, "--promote", branch)
    assert frozen["promoted"] == branch
    return frozen["id"]


def test_a_pinned_branch_survives_a_point_release_and_a_dead_mirror(
    own_debcache: DebcacheServer,
    own_archive: Archive,
    own_mirror: FakeMirror,
    tmp_path: Path,
) -> None:
    recorded_apt = AptRoot(tmp_path / "recorded")
    record_install(own_debcache, recorded_apt, own_archive, own_mirror, "run-1", *PACKAGES)
    before = recorded_apt.downloaded()
    first = freeze_and_promote(own_debcache, "run-1", "b1")

    changes = point_release(own_archive)
    assert changes["hello"] == ("2.10-3", "2.10-3+deb12u1")

    # The pin hands out exactly what was recorded...
    pinned = install_from(
        AptRoot(tmp_path / "pinned"), pinned_sources(own_debcache, own_archive, "b1"), *PACKAGES
    )
    assert pinned == before
    # ...while the live path has moved on to the point release.
    live_sources = [
        f"deb [signed-by={own_archive.key.keyring}] {own_debcache.url}/debian bookworm main"
    ]
    live = install_from(AptRoot(tmp_path / "live"), live_sources, *PACKAGES)
    assert any("deb12u1" in name for name in live) and live != before

    # The mirror goes away entirely; the pinned install does not notice.
    own_mirror.stop()
    offline = install_from(
        AptRoot(tmp_path / "offline"), pinned_sources(own_debcache, own_archive, "b1"), *PACKAGES
    )
    assert offline == before
    rows = [r for r in own_debcache.fetches() if r["source"] == "pinned"]
    assert rows and all(r["upstream"] == "debian" for r in rows)
    assert first


def test_diff_names_exactly_what_the_point_release_changed(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(
        own_debcache, AptRoot(tmp_path / "a"), own_archive, own_mirror, "before", *PACKAGES
    )
    before = freeze_json(own_debcache, "before")["id"]
    changes = point_release(own_archive)
    record_install(
        own_debcache, AptRoot(tmp_path / "b"), own_archive, own_mirror, "after", *PACKAGES
    )
    after = freeze_json(own_debcache, "after")["id"]

    result = run(own_debcache, "diff", before[:12], after[:12], "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    (suite,) = document["suites"]
    assert (suite["upstream"], suite["suite"]) == ("debian", "bookworm")
    changed = {c["package"]: (c["old"], c["new"]) for c in suite["changed"]}
    installed_changes = {k: v for k, v in changes.items() if k in ("hello", "libgreet1")}
    assert changed == installed_changes
    assert suite["added"] == [] and suite["removed"] == []
    assert suite["release_date"]["a"] != suite["release_date"]["b"]

    text = run(own_debcache, "diff", before[:12], after[:12])
    assert "changed  hello" in text.output and "2.10-3 → 2.10-3+deb12u1" in text.output
    assert run(own_debcache, "diff", before[:12], after[:12], "--exit-code").exit_code == 1
    assert run(own_debcache, "diff", before[:12], before[:12], "--exit-code").exit_code == 0
    # A branch, a recording and a manifest compare the same way.
    assert run(own_debcache, "promote", "b1", before[:12]).exit_code == 0
    by_branch = json.loads(run(own_debcache, "diff", "b1", after[:12], "--json").output)
    assert by_branch["suites"] == document["suites"]
    assert run(
        own_debcache, "diff", "before", after[:12], "--json"
    ).output == result.output.replace(f'"name": "{before[:12]}"', '"name": "before"')


def test_promote_then_rollback_switches_what_the_pin_serves(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(own_debcache, AptRoot(tmp_path / "a"), own_archive, own_mirror, "old", *PACKAGES)
    old = freeze_and_promote(own_debcache, "old", "b1")
    point_release(own_archive)
    record_install(own_debcache, AptRoot(tmp_path / "b"), own_archive, own_mirror, "new", *PACKAGES)
    new = freeze_json(own_debcache, "new")["id"]

    promoted = run(own_debcache, "promote", "b1", new[:12], "--note", "after point release")
    assert promoted.exit_code == 0, promoted.output
    assert f"now serves manifest {new[:12]} (was {old[:12]})" in promoted.output
    release = get(own_debcache.url, "/pin/b1/debian/dists/bookworm/InRelease")
    assert release.header("X-Debcache-Manifest") == new
    assert release.body == own_archive.read("dists/bookworm/InRelease")

    rolled = run(own_debcache, "rollback", "b1")
    assert rolled.exit_code == 0, rolled.output
    release = get(own_debcache.url, "/pin/b1/debian/dists/bookworm/InRelease")
    assert release.header("X-Debcache-Manifest") == old
    pinned = install_from(
        AptRoot(tmp_path / "c"), pinned_sources(own_debcache, own_archive, "b1"), "hello"
    )
    assert any(name.startswith("hello_2.10-3_") for name in pinned)

    log = json.loads(run(own_debcache, "log", "b1", "--json").output)
    assert [(r["action"], r["manifest_id"]) for r in log] == [
        ("rollback", old),
        ("promote", new),
        ("promote", old),
    ]
    branches = json.loads(run(own_debcache, "branches", "--json").output)
    assert [(b["name"], b["manifest_id"]) for b in branches] == [("b1", old)]


def test_installer_images_and_udebs_stay_those_recorded(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    kernel_udeb = own_archive.pool_path("kernel-image-6.1.0-9-amd64-di")
    udeb_index = "dists/bookworm/main/debian-installer/binary-amd64/Packages.gz"
    paths = [own_archive.installer_path("bookworm", name) for name in INSTALLER_FILES]
    paths += ["dists/bookworm/InRelease", udeb_index, kernel_udeb]
    recorded = {}
    for path in paths:
        reply = get(own_debcache.url, f"/record/netboot/debian/{path}")
        assert reply.status == 200, path
        recorded[path] = reply.body
    own_debcache.wait_for_fetches(len(paths), recording="netboot")
    freeze_and_promote(own_debcache, "netboot", "di")

    point_release(own_archive)
    linux = own_archive.installer_path("bookworm", INSTALLER_FILES[0])
    assert get(own_debcache.url, f"/debian/{linux}").body != recorded[linux]  # the mirror moved on
    for path in paths:
        assert get(own_debcache.url, f"/pin/di/debian/{path}").body == recorded[path], path


def test_pinned_files_have_validators_and_manifest_urls_are_immutable(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(own_debcache, AptRoot(tmp_path / "a"), own_archive, own_mirror, "run", "hello")
    manifest = freeze_and_promote(own_debcache, "run", "b1")
    hello = own_archive.pool_path("hello", "2.10-3")
    body = own_archive.read(hello)

    pinned = get(own_debcache.url, f"/pin/b1/debian/{hello}")
    assert pinned.body == body and pinned.header("X-Debcache-Manifest") == manifest
    assert pinned.header("Cache-Control") == "no-cache"  # a promote must reach caches at once
    assert pinned.header("ETag") == f'"{own_archive.sha256(hello)}"'
    head = get(own_debcache.url, f"/pin/b1/debian/{hello}", method="HEAD")
    assert (
        head.status == 200 and head.body == b"" and head.header("Content-Length") == str(len(body))
    )
    ranged = get(own_debcache.url, f"/pin/b1/debian/{hello}", headers={"Range": "bytes=10-"})
    assert ranged.status == 206 and ranged.body == body[10:]
    since = get(
        own_debcache.url,
        f"/pin/b1/debian/{hello}",
        headers={"If-Modified-Since": pinned.header("Last-Modified")},
    )
    assert since.status == 304

    immutable = get(own_debcache.url, f"/manifest/{manifest}/debian/{hello}")
    assert immutable.body == body
    assert immutable.header("Cache-Control") == "public, max-age=31536000, immutable"
    for route in (f"/pin/b1/debian/{hello}", f"/manifest/{manifest}/debian/{hello}"):
        # An invalid Range is ignored; only a valid one that misses the file gets 416.
        ignored = get(own_debcache.url, route, headers={"Range": "bytes=5-2"})
        assert (ignored.status, ignored.body) == (200, body), route
        refused = get(own_debcache.url, route, headers={"Range": "bytes=-0"})
        assert refused.status == 416, route
        assert refused.header("Content-Range") == f"bytes */{len(body)}", route
    assert get(own_debcache.url, f"/manifest/{manifest[:12]}/debian/{hello}").status == 400
    requests_before = len(own_mirror.requests)
    assert get(own_debcache.url, f"/pin/b1/debian/{own_archive.pool_path('bigpkg')}").status == 404
    assert len(own_mirror.requests) == requests_before  # pinned paths never go upstream


def test_a_path_missing_from_the_pin_is_a_helpful_404(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(own_debcache, AptRoot(tmp_path / "a"), own_archive, own_mirror, "run", "hello")
    manifest = freeze_and_promote(own_debcache, "run", "b1")
    bigpkg = own_archive.pool_path("bigpkg")
    reply = get(own_debcache.url, f"/pin/b1/debian/{bigpkg}")
    assert reply.status == 404
    text = reply.body.decode()
    assert "b1" in text and manifest[:12] in text and bigpkg in text
    assert "freeze" in text and "--promote b1" in text
    unknown = get(own_debcache.url, f"/pin/nope/debian/{bigpkg}")
    assert unknown.status == 404 and "b1" in unknown.body.decode()
    assert get(own_debcache.url, f"/pin/b%2f1/debian/{bigpkg}").status == 400
    assert get(own_debcache.url, "/pin/b1/debian/../../etc/passwd").status == 400


def test_an_install_straddling_a_promote_is_served_from_the_previous_manifest(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(own_debcache, AptRoot(tmp_path / "a"), own_archive, own_mirror, "big", "bigpkg")
    big = freeze_and_promote(own_debcache, "big", "b1")
    record_install(own_debcache, AptRoot(tmp_path / "b"), own_archive, own_mirror, "small", "hello")
    freeze_and_promote(own_debcache, "small", "b1")
    bigpkg = own_archive.pool_path("bigpkg")
    # Within the grace period (1 h by default) the previous manifest fills the gap.
    reply = get(own_debcache.url, f"/pin/b1/debian/{bigpkg}")
    assert reply.status == 200 and reply.header("X-Debcache-Manifest") == big


def test_bad_promotes_and_rollbacks_change_nothing(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(own_debcache, AptRoot(tmp_path / "a"), own_archive, own_mirror, "run", "hello")
    manifest = freeze_json(own_debcache, "run")["id"]
    for branch in ("a/b", "..", "with space", ".hidden", "a..b"):
        result = run(own_debcache, "promote", branch, manifest[:12])
        assert result.exit_code == 1 and "not a valid branch name" in result.output
    assert "No manifest id starts with" in run(own_debcache, "promote", "b1", "ffff").output
    assert run(own_debcache, "promote", "b1", manifest[:12]).exit_code == 0
    no_history = run(own_debcache, "rollback", "b1")
    assert no_history.exit_code == 1 and "no earlier manifest" in no_history.output
    unknown = run(own_debcache, "rollback", "b2")
    assert unknown.exit_code == 1 and "No branch named 'b2'" in unknown.output
    assert "Traceback" not in no_history.output + unknown.output
    # A manifest with a corrupt blob is refused.
    hello = own_archive.pool_path("hello", "2.10-3")
    blob = (
        own_debcache.data_dir
        / "blobs"
        / "sha256"
        / own_archive.sha256(hello)[:2]
        / own_archive.sha256(hello)
    )
    blob.chmod(0o644)
    blob.write_bytes(b"bit rot")
    corrupt = run(own_debcache, "promote", "b3", manifest[:12])
    assert corrupt.exit_code == 1 and "missing or corrupt" in corrupt.output
    branches = json.loads(run(own_debcache, "branches", "--json").output)
    assert [b["name"] for b in branches] == ["b1"]


@pytest.fixture
def filling_cache(tmp_path: Path, own_mirror: FakeMirror, own_archive: Archive):
    """debcache whose branch `fill-me` has fill = "verified"."""
    server = keyed_debcache_for(
        tmp_path, own_mirror, own_archive, branches={"fill-me": Branch("fill-me", fill="verified")}
    )
    yield server
    server.stop()


def test_a_verified_fill_branch_serves_what_the_frozen_index_vouches_for(
    filling_cache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    own_debcache = filling_cache
    record_install(own_debcache, AptRoot(tmp_path / "a"), own_archive, own_mirror, "small", "hello")
    first = freeze_and_promote(own_debcache, "small", "fill-me")
    tool = own_archive.pool_path("tool++", "1.0~rc1+dfsg-1")
    bigpkg = own_archive.pool_path("bigpkg")

    # Not in the manifest, but in its frozen Packages: fetched, checked, served, recorded.
    own_mirror.set_fault(f"/debian/{bigpkg}", Fault.corrupt())
    apt = AptRoot(tmp_path / "b")
    pinned = install_from(
        apt, pinned_sources(own_debcache, own_archive, "fill-me"), "hello", "tool++"
    )
    assert own_archive.read(tool) in pinned.values()
    assert (
        get(own_debcache.url, f"/pin/fill-me/debian/{bigpkg}").status == 502
    )  # wrong bytes: refused
    assert own_archive.read(bigpkg) not in own_debcache.blobs().values()

    rows = own_debcache.wait_for_fetches(2, recording="fill-me")
    assert tool in {r["path"] for r in rows}
    refrozen = freeze_json(own_debcache, "fill-me", "small", "--promote", "fill-me")
    assert refrozen["id"] != first
    paths = {
        e["path"]
        for e in json.loads(
            run(own_debcache, "manifests", "show", refrozen["id"][:12], "--json").output
        )["entries"]
    }
    assert tool in paths and bigpkg not in paths


def test_a_strict_branch_never_fetches(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(own_debcache, AptRoot(tmp_path / "a"), own_archive, own_mirror, "small", "hello")
    freeze_and_promote(own_debcache, "small", "strict")
    before = len(own_mirror.requests)
    tool = own_archive.pool_path("tool++", "1.0~rc1+dfsg-1")
    assert get(own_debcache.url, f"/pin/strict/debian/{tool}").status == 404
    assert len(own_mirror.requests) == before


def test_a_fill_uses_the_upstreams_timeout_failover_and_metrics(
    own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    # The first mirror hangs on the file to fill: the fill gives up after the upstream's
    # own timeout (not a default), takes the next URL, counts both, and the next fill
    # skips the hung mirror while its failure penalty lasts.
    with FakeMirror(own_archive.root) as hung:
        config = make_config(
            tmp_path / "data",
            {"debian": [f"{hung.url}/debian", f"{own_mirror.url}/debian"]},
            keyring=own_archive.key.keyring,
            timeout=5,
            coalesce_window=0,
        )
        config = dataclasses.replace(
            config, branches={"fill-me": Branch("fill-me", fill="verified")}
        )
        server = DebcacheServer(config)
        server.config_file = write_config_file(config, tmp_path / "debcache.toml")
        with server:
            record_install(server, AptRoot(tmp_path / "a"), own_archive, hung, "small", "hello")
            freeze_and_promote(server, "small", "fill-me")
            tool = own_archive.pool_path("tool++", "1.0~rc1+dfsg-1")
            bigpkg = own_archive.pool_path("bigpkg")
            hung.set_fault(f"/debian/{tool}", Fault.hang(600))

            filled = get(server.url, f"/pin/fill-me/debian/{tool}", timeout=120)
            assert filled.status == 200 and filled.body == own_archive.read(tool)
            assert hung.count(f"/debian/{tool}") == 1 and own_mirror.count(f"/debian/{tool}") == 1
            assert get(server.url, f"/pin/fill-me/debian/{bigpkg}").status == 200
            assert hung.count(f"/debian/{bigpkg}") == 0

            metrics = get(server.url, "/_/metrics").body.decode()
            assert 'debcache_upstream_requests_total{outcome="timeout",upstream="debian"} 1.0' in (
                metrics
            )
