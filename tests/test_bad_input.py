"""User story: bad requests and bad mirrors get a clear error and never corrupt the store.

Traversal in every encoding, foreign hosts, CONNECT, oversize headers, and
upstreams that truncate, corrupt or die mid-body: the client always sees an
error (never a complete-looking 200) and nothing wrong enters the store.
"""

from __future__ import annotations

import hashlib

import pytest
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror, Fault
from http_client import get, request

HELLO = ("hello", "2.10-3")

TRAVERSALS = [
    "/debian/../../etc/passwd",
    "/debian/dists/../../../etc/passwd",
    "/debian/%2e%2e/%2e%2e/etc/passwd",
    "/debian/%2E%2E/%2E%2E/etc/passwd",
    "/debian/pool%2f..%2f..%2fetc%2fpasswd",
    "/debian/pool/..%5c..%5cetc%5cpasswd",
    "/debian/pool\\..\\..\\etc\\passwd",
    "/debian/pool/a%00b.deb",
    "/debian/pool/a%0Ab.deb",
    "/debian/%252e%252e/%252e%252e/etc/passwd",
    "/debian/pool//main/x.deb",
    "/debian/./dists/bookworm/InRelease",
    "/debian/pool/%c0%ae%c0%ae/x",
    "/%2e%2e/etc/passwd",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_in_any_encoding_is_refused(
    debcache: DebcacheServer, mirror: FakeMirror, target: str
) -> None:
    reply = get(debcache.url, target)
    assert reply.status in (400, 404), reply
    assert b"root:" not in reply.body
    assert reply.body.count(b"\n") == 1  # one line: cause and remedy
    assert mirror.requests == []


@pytest.mark.parametrize("target", TRAVERSALS[:6])
def test_path_traversal_through_the_forward_proxy_is_refused(
    debcache: DebcacheServer, mirror: FakeMirror, target: str
) -> None:
    reply = get(debcache.url, f"http://127.0.0.1:{mirror.port}{target}")
    assert reply.status in (400, 403, 404), reply
    assert mirror.requests == []


def test_an_unknown_upstream_is_a_404_that_lists_the_configured_ones(
    debcache: DebcacheServer,
) -> None:
    reply = get(debcache.url, "/ubuntu/dists/noble/InRelease")
    assert reply.status == 404
    assert b"'ubuntu'" in reply.body and b"debian" in reply.body


def test_debcache_is_not_an_open_proxy(debcache: DebcacheServer, mirror: FakeMirror) -> None:
    reply = get(debcache.url, "http://mirror.example.org/debian/dists/bookworm/InRelease")
    assert reply.status == 403
    assert b"mirror.example.org" in reply.body and b"proxy_hosts" in reply.body
    # The right host but a port that no upstream names is foreign too.
    other_port = get(debcache.url, "http://127.0.0.1:1/debian/dists/bookworm/InRelease")
    assert other_port.status == 403
    # A path outside every upstream's base path on an upstream host, likewise.
    outside = get(debcache.url, f"http://127.0.0.1:{mirror.port}/private/file")
    assert outside.status == 403
    assert mirror.requests == []


def test_connect_is_refused_with_advice(debcache: DebcacheServer) -> None:
    reply = request(debcache.url, "mirror.example.org:443", method="CONNECT")
    assert reply.status == 405
    assert b"http://" in reply.body


def test_other_methods_are_refused(debcache: DebcacheServer, mirror: FakeMirror) -> None:
    assert request(debcache.url, "/debian/dists/bookworm/InRelease", method="POST").status == 405
    proxied = request(debcache.url, f"{mirror.url}/debian/dists/bookworm/InRelease", "DELETE")
    assert proxied.status == 405
    assert mirror.requests == []


def test_oversize_headers_are_refused(debcache: DebcacheServer) -> None:
    reply = get(debcache.url, "/debian/dists/bookworm/InRelease", headers={"X-Big": "a" * 20000})
    assert reply.status in (400, 431)


def test_bad_recording_names_are_refused(debcache: DebcacheServer, mirror: FakeMirror) -> None:
    assert get(debcache.url, "/record/..%2fx/debian/dists/bookworm/InRelease").status == 400
    bad_credentials = {"Proxy-Authorization": "Basic !!!"}
    target = f"{mirror.url}/debian/dists/bookworm/InRelease"
    assert get(debcache.url, target, headers=bad_credentials).status == 400
    assert mirror.requests == []


# --- mirrors that misbehave ---------------------------------------------------------


def assert_nothing_stored(debcache: DebcacheServer, wrong: bytes) -> None:
    assert wrong not in debcache.blobs().values()
    for sha256, blob in debcache.blobs().items():
        assert hashlib.sha256(blob).hexdigest() == sha256
    assert debcache.temp_files() == []


def test_a_mirror_that_dies_mid_body_gives_the_client_an_error_and_caches_nothing(
    debcache: DebcacheServer, mirror: FakeMirror, archive: Archive
) -> None:
    path = archive.pool_path(*HELLO)
    mirror.set_fault(f"/debian/{path}", Fault.truncate(1000, times=1))
    reply = get(debcache.url, f"/debian/{path}")
    assert reply.broken is not None, "a truncated body must not look complete"
    assert len(reply.body) < len(archive.read(path))
    assert_nothing_stored(debcache, reply.body)
    rows = debcache.wait_for_fetches(1)
    assert rows[0]["complete"] == 0

    retry = get(debcache.url, f"/debian/{path}")
    assert retry.status == 200 and retry.body == archive.read(path)
    assert retry.header("X-Debcache") == "miss"


def test_a_deb_that_does_not_match_the_cached_packages_index_is_never_served_whole(
    keyed_debcache: DebcacheServer, mirror: FakeMirror, archive: Archive
) -> None:
    debcache = keyed_debcache  # indexed only with the verified InRelease that lists it
    assert get(debcache.url, "/debian/dists/bookworm/InRelease").status == 200
    packages = "dists/bookworm/main/binary-amd64/Packages.gz"
    assert get(debcache.url, f"/debian/{packages}").status == 200
    path = archive.pool_path(*HELLO)
    mirror.set_fault(f"/debian/{path}", Fault.corrupt(times=1))
    reply = get(debcache.url, f"/debian/{path}")
    assert reply.broken is not None
    assert len(reply.body) == len(archive.read(path)) - 1  # the last byte is held back
    assert_nothing_stored(debcache, reply.body)
    assert get(debcache.url, f"/debian/{path}").body == archive.read(path)


def test_a_by_hash_file_that_does_not_match_its_name_is_never_served_whole(
    debcache: DebcacheServer, mirror: FakeMirror, archive: Archive
) -> None:
    digest = archive.sha256("dists/bookworm/main/binary-amd64/Packages.xz")
    path = f"dists/bookworm/main/binary-amd64/by-hash/SHA256/{digest}"
    mirror.set_fault(f"/debian/{path}", Fault.corrupt(times=1))
    reply = get(debcache.url, f"/debian/{path}")
    assert reply.broken is not None
    assert_nothing_stored(debcache, reply.body)
    assert get(debcache.url, f"/debian/{path}").body == archive.read(path)


def test_a_chunked_upstream_body_is_streamed_and_cached(
    debcache: DebcacheServer, mirror: FakeMirror, archive: Archive
) -> None:
    packages = "dists/bookworm/main/binary-amd64/Packages.gz"
    assert get(debcache.url, f"/debian/{packages}").status == 200
    path = archive.pool_path(*HELLO)
    mirror.set_fault(f"/debian/{path}", Fault.chunked(times=1))
    good = get(debcache.url, f"/debian/{path}")
    assert good.broken is None and good.body == archive.read(path)


def test_a_hung_mirror_costs_seconds_not_minutes(
    debcache: DebcacheServer, mirror: FakeMirror, archive: Archive
) -> None:
    # The mirror hangs for 60 s; a 504 that says so can only come from debcache's own
    # timeout (5 s here), not from the mirror closing the connection.
    mirror.set_fault("/debian/dists/bookworm/InRelease", Fault.hang(60))
    reply = get(debcache.url, "/debian/dists/bookworm/InRelease", timeout=60)
    assert reply.status == 504
    assert b"timed out" in reply.body
