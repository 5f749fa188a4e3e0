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

from debcache.cli import size


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


def test_a_manifest_gc_evicted_is_restored_by_import_as_promote_says(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(keyed_debcache, AptRoot(tmp_path / "a"), archive, mirror, "later", "hello")
    manifest = freeze_json(keyed_debcache, "later")["id"]  # frozen, not yet pinned
    short = manifest[:12]
    entries = json.loads(run(keyed_debcache, "manifests", "show", short, "--json").output)[
        "entries"
    ]
    blobs = sorted({e["sha256"] for e in entries})
    assert run(keyed_debcache, "gc", "--max-size", "0").exit_code == 0
    assert not set(blobs) & set(keyed_debcache.blobs())

    refused = run(keyed_debcache, "promote", "b1", short)
    assert refused.exit_code == 1
    lockfile = f"{short}.lock.json"
    assert refused.output == (
        f"Error: Manifest {short} has {len(blobs)} blob(s) missing or corrupt "
        f"({', '.join(f'{sha[:12]} missing' for sha in blobs[:5])}). "
        f"Fetch the missing ones with `debcache manifests export {short} > {lockfile} "
        f"&& debcache manifests import {lockfile}` (from the upstreams while they still have "
        "those files; --from URL takes them from another debcache); "
        "or record the install again and freeze it.\n"
    )

    # The remedy, as written: without --from the files come from the upstreams.
    exported = run(keyed_debcache, "manifests", "export", short)
    (tmp_path / lockfile).write_text(exported.output)
    restored = run(keyed_debcache, "manifests", "import", str(tmp_path / lockfile))
    assert restored.exit_code == 0, restored.output
    restored_bytes = sum({e["sha256"]: e["size"] for e in entries}.values())
    assert restored.output == (
        f"Manifest {short} was already known; restored {len(entries)} missing file(s) "
        f"({size(restored_bytes)}).\n"
        f"Pin it with: debcache promote BRANCH {short}\n"
    )
    assert set(blobs) <= set(keyed_debcache.blobs())
    again = run(keyed_debcache, "manifests", "import", str(tmp_path / lockfile))
    assert again.output == (
        f"Manifest {short} was already known, with all {len(entries)} files stored.\n"
        f"Pin it with: debcache promote BRANCH {short}\n"
    )
    assert run(keyed_debcache, "promote", "b1", short).exit_code == 0
