"""User story: the store stays within its size and heals, and pinned branches never break.

gc evicts live-cache blobs least recently used first but never a blob of a
manifest a branch points at; verify finds corrupt blobs, quarantines them and
fetches them again.
"""

from __future__ import annotations

import json
from pathlib import Path

from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import freeze_json, record_install, run


def test_gc_evicts_the_live_cache_but_never_a_pinned_manifest(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(keyed_debcache, AptRoot(tmp_path / "a"), archive, mirror, "pinned", "hello")
    manifest = freeze_json(keyed_debcache, "pinned", "--promote", "b1")["id"]
    bigpkg = archive.pool_path("bigpkg")
    assert get(keyed_debcache.url, f"/debian/{bigpkg}").status == 200  # live only, not pinned
    before = keyed_debcache.blobs()

    dry = json.loads(run(keyed_debcache, "gc", "--max-size", "0", "--dry-run", "--json").output)
    assert dry["evicted"] >= 1 and keyed_debcache.blobs() == before

    result = run(keyed_debcache, "gc", "--max-size", "0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kept_protected"] >= 1
    remaining = keyed_debcache.blobs()
    assert archive.sha256(bigpkg) not in remaining
    entries = json.loads(run(keyed_debcache, "manifests", "show", manifest[:12], "--json").output)[
        "entries"
    ]
    assert {e["sha256"] for e in entries} <= set(remaining)

    # The pinned branch still installs with nothing from upstream; the live path refetches.
    mirror.reset()
    pinned = AptRoot(tmp_path / "b")
    pinned.write_sources(
        [f"deb [signed-by={archive.key.keyring}] {keyed_debcache.url}/pin/b1/debian bookworm main"]
    )
    assert pinned.update().returncode == 0
    assert pinned.download("hello").returncode == 0
    assert mirror.requests == []
    again = get(keyed_debcache.url, f"/debian/{bigpkg}")
    assert again.body == archive.read(bigpkg) and again.header("X-Debcache") == "miss"


def test_gc_keeps_what_fits_least_recently_used_last(
    keyed_debcache: DebcacheServer, archive: Archive
) -> None:
    small = archive.pool_path("hello", "2.10-3")
    big = archive.pool_path("bigpkg")
    assert get(keyed_debcache.url, f"/debian/{big}").status == 200
    assert get(keyed_debcache.url, f"/debian/{small}").status == 200  # used last
    keyed_debcache.wait_for_fetches(2)
    limit = str(len(archive.read(small)) + 10)
    assert run(keyed_debcache, "gc", "--max-size", limit).exit_code == 0
    assert set(keyed_debcache.blobs()) == {archive.sha256(small)}


def test_verify_quarantines_corrupt_blobs_and_fetches_them_again(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror
) -> None:
    hello = archive.pool_path("hello", "2.10-3")
    assert get(keyed_debcache.url, f"/debian/{hello}").status == 200
    keyed_debcache.wait_for_fetches(1)  # its row is committed after the path → blob mapping
    sha256 = archive.sha256(hello)
    blob = keyed_debcache.data_dir / "blobs" / "sha256" / sha256[:2] / sha256
    blob.write_bytes(b"bit rot")
    result = run(keyed_debcache, "verify", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["corrupt"] == [sha256] and report["refetched"] == [sha256]
    assert blob.read_bytes() == archive.read(hello)
    assert (keyed_debcache.data_dir / "quarantine" / sha256).read_bytes() == b"bit rot"


def test_a_bad_size_is_a_one_line_error(keyed_debcache: DebcacheServer) -> None:
    result = run(keyed_debcache, "gc", "--max-size", "lots")
    assert result.exit_code == 1 and "is not a size" in result.output
