"""Broken storage: a corrupt or truncated blob is never served as a complete 200.

The size is checked on every open, the hash on the first serve after each start;
a bad blob goes to `<data>/quarantine/`. The live route fetches it again; the
pinned routes answer 503 with the remedy; `verify` finds what branches lack.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import Reply, get
from workflow import freeze_json, record_install, run


@pytest.fixture
def restarts(keyed_debcache: DebcacheServer) -> Iterator[list[DebcacheServer]]:
    """Servers started on keyed_debcache's data directory after it stopped; stopped after."""
    started: list[DebcacheServer] = []
    yield started
    for server in started:
        server.stop()


def restart(server: DebcacheServer, started: list[DebcacheServer]) -> DebcacheServer:
    """A fresh server process state (nothing hashed yet) on the same data and config."""
    server.stop()
    again = DebcacheServer(server.config)
    started.append(again)
    return again.start()


def blob_of(server: DebcacheServer, sha256: str) -> Path:
    return server.data_dir / "blobs" / "sha256" / sha256[:2] / sha256


def flip_a_byte(blob: Path) -> None:
    content = bytearray(blob.read_bytes())
    content[len(content) // 2] ^= 0x01
    blob.write_bytes(bytes(content))


def truncate(blob: Path) -> None:
    content = blob.read_bytes()
    blob.write_bytes(content[: min(1000, len(content) // 2)])


def never_wrong(reply: Reply, right: bytes) -> None:
    """Not a complete 200 with wrong bytes: an error, or a transfer that visibly failed."""
    if reply.status == 200 and reply.broken is None:
        assert reply.body == right, "a corrupt blob was served as a complete 200"
    if reply.status != 200:
        assert reply.status == 503, reply
        line = reply.body.decode()
        assert line.count("\n") <= 1 and "debcache verify" in line, line


@pytest.mark.parametrize("damage", [flip_a_byte, truncate], ids=["flipped", "truncated"])
def test_a_corrupt_live_blob_is_fetched_again(
    keyed_debcache: DebcacheServer,
    archive: Archive,
    mirror: FakeMirror,
    restarts: list[DebcacheServer],
    damage,
) -> None:
    bigpkg = archive.pool_path("bigpkg")
    assert get(keyed_debcache.url, f"/debian/{bigpkg}").status == 200
    keyed_debcache.wait_for_fetches(1)
    sha256 = archive.sha256(bigpkg)
    damage(blob_of(keyed_debcache, sha256))
    server = restart(keyed_debcache, restarts)

    mirror.reset()
    again = get(server.url, f"/debian/{bigpkg}")
    assert again.status == 200 and again.broken is None
    assert again.body == archive.read(bigpkg)
    assert again.header("X-Debcache") == "miss" and mirror.count(f"/debian/{bigpkg}") == 1
    assert blob_of(server, sha256).read_bytes() == archive.read(bigpkg)
    assert (server.data_dir / "quarantine" / sha256).is_file()


def test_a_truncated_blob_is_caught_without_a_restart(
    keyed_debcache: DebcacheServer, archive: Archive
) -> None:
    """The size check is on every open, not only the first after a start."""
    bigpkg = archive.pool_path("bigpkg")
    assert get(keyed_debcache.url, f"/debian/{bigpkg}").status == 200
    truncate(blob_of(keyed_debcache, archive.sha256(bigpkg)))
    again = get(keyed_debcache.url, f"/debian/{bigpkg}")
    assert again.status == 200 and again.body == archive.read(bigpkg)


@pytest.mark.parametrize("damage", [flip_a_byte, truncate], ids=["flipped", "truncated"])
def test_a_corrupt_pinned_blob_is_an_error_never_a_wrong_200(
    keyed_debcache: DebcacheServer,
    archive: Archive,
    mirror: FakeMirror,
    restarts: list[DebcacheServer],
    tmp_path: Path,
    damage,
) -> None:
    record_install(keyed_debcache, AptRoot(tmp_path / "a"), archive, mirror, "rec", "hello")
    manifest = freeze_json(keyed_debcache, "rec", "--promote", "b1")["id"]
    hello = archive.pool_path("hello", "2.10-3")
    in_release = "dists/bookworm/InRelease"
    for path in (hello, in_release):
        damage(blob_of(keyed_debcache, archive.sha256(path)))
    server = restart(keyed_debcache, restarts)

    for path, route in ((hello, f"/manifest/{manifest}"), (in_release, "/pin/b1")):
        reply = get(server.url, f"{route}/debian/{path}")
        never_wrong(reply, archive.read(path))
        assert reply.status == 503
        assert (server.data_dir / "quarantine" / archive.sha256(path)).is_file()
        # Quarantined: the next request is still an error, never a 200 nor a 404.
        assert get(server.url, f"{route}/debian/{path}").status == 503


def test_verify_names_the_branch_a_lost_blob_breaks_and_the_remedy(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(keyed_debcache, AptRoot(tmp_path / "a"), archive, mirror, "rec", "hello")
    freeze_json(keyed_debcache, "rec", "--promote", "b1")
    hello = archive.pool_path("hello", "2.10-3")
    sha256 = archive.sha256(hello)
    blob_of(keyed_debcache, sha256).unlink()
    mirror.stop()  # the upstream is gone: nothing to fetch it again from

    for _ in range(2):  # non-zero until repaired, however often it runs
        result = run(keyed_debcache, "verify")
        assert result.exit_code == 1, result.output
        assert f"lost: {sha256}" in result.output
        assert "branch b1 cannot serve 1 file(s)" in result.output
        assert "debcache manifests import LOCK --from" in result.output
    report = json.loads(run(keyed_debcache, "verify", "--json").output)
    assert report["missing"] == [sha256] and report["broken_branches"] == {"b1": [sha256]}
    # The status (and the status page) says so until the next verify.
    status = json.loads(run(keyed_debcache, "status", "--json").output)
    (branch,) = status["branches"]
    assert branch["verified"]["lost"] == 1 and branch["verified"]["blobs"] > 1
    page = get(keyed_debcache.url, "/_/").body.decode()
    assert f"<td>1 of {branch['verified']['blobs']} blobs missing (verify of " in page


def test_verify_fetches_a_missing_pinned_blob_again(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(keyed_debcache, AptRoot(tmp_path / "a"), archive, mirror, "rec", "hello")
    freeze_json(keyed_debcache, "rec", "--promote", "b1")
    hello = archive.pool_path("hello", "2.10-3")
    blob_of(keyed_debcache, archive.sha256(hello)).unlink()

    result = run(keyed_debcache, "verify")
    assert result.exit_code == 0, result.output
    assert blob_of(keyed_debcache, archive.sha256(hello)).read_bytes() == archive.read(hello)
    assert get(keyed_debcache.url, f"/pin/b1/debian/{hello}").body == archive.read(hello)
