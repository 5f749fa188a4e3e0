"""User story: many installs share one cache that is never stale while the mirror answers.

Caching semantics of the live path, against a real loopback mirror that the
tests change and break on purpose: one upstream download per file for a herd,
conditional revalidation of volatile files, stale copies only when every
upstream URL fails, failover, redirects, and HTTP validators on hits.
"""

from __future__ import annotations

import gzip
import os
import socket
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from debcache_server import DebcacheServer, make_config
from fake_mirror import FakeMirror, Fault
from http_client import Reply, get
from processes import wait_until

IN_RELEASE = "dists/stable/InRelease"
PACKAGES_GZ = "dists/stable/main/binary-amd64/Packages.gz"
DEB = "pool/main/a/alpha/alpha_1.0_amd64.deb"
BIG_DEB = "pool/main/b/big/big_1.0_amd64.deb"
INSTALLER_INITRD = "dists/stable/main/installer-amd64/current/images/netboot/initrd.gz"


def write(root: Path, path: str, content: bytes, age: float = 0) -> None:
    """Put a file on the mirror; `age` seconds in the past as its mtime (Last-Modified)."""
    target = root / "debian" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    moment = time.time() - age
    os.utime(target, (moment, moment))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A tiny archive tree the tests may change: its web root."""
    root = tmp_path / "www"
    write(root, IN_RELEASE, b"Suite: stable\nDate: old\n", age=3600)
    write(root, PACKAGES_GZ, gzip.compress(b"Package: alpha\n"), age=3600)
    write(root, DEB, os.urandom(50_000), age=3600)
    write(root, BIG_DEB, os.urandom(2_000_000), age=3600)
    write(root, INSTALLER_INITRD, os.urandom(500_000), age=3600)
    return root


@pytest.fixture
def upstream(files: Path):
    with FakeMirror(files) as server:
        yield server


def start_debcache(tmp_path: Path, *base_urls: str, **options) -> DebcacheServer:
    options.setdefault("timeout", 5)
    config = make_config(tmp_path / "data", {"debian": list(base_urls)}, **options)
    return DebcacheServer(config).start()


@pytest.fixture
def cache(tmp_path: Path, upstream: FakeMirror):
    server = start_debcache(tmp_path, f"{upstream.url}/debian")
    yield server
    server.stop()


def content(files: Path, path: str) -> bytes:
    return (files / "debian" / path).read_bytes()


def herd(url: str, target: str, clients: int) -> list[Reply]:
    """`clients` simultaneous GETs of target; their replies."""
    barrier = threading.Barrier(clients)
    replies: list[Reply] = [Reply(0)] * clients

    def one(index: int) -> None:
        barrier.wait()
        replies[index] = get(url, target)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


# --- one download per file ----------------------------------------------------------


@pytest.mark.parametrize("path", [BIG_DEB, IN_RELEASE, INSTALLER_INITRD])
def test_a_herd_of_16_makes_one_upstream_request(
    cache: DebcacheServer, upstream: FakeMirror, files: Path, path: str
) -> None:
    upstream.set_fault(f"/debian/{path}", Fault.slow(chunk=65536, delay=0.02))
    replies = herd(cache.url, f"/debian/{path}", 16)
    assert upstream.count(f"/debian/{path}") == 1
    for reply in replies:
        assert reply.status == 200 and reply.broken is None
        assert reply.body == content(files, path)
    sources = sorted(r.header("X-Debcache") for r in replies)
    assert sources.count("miss") == 1
    assert set(sources) <= {"miss", "coalesced", "hit"}


def test_a_download_runs_to_the_end_when_its_client_hangs_up(
    cache: DebcacheServer, upstream: FakeMirror, files: Path
) -> None:
    upstream.set_fault(f"/debian/{BIG_DEB}", Fault.slow(chunk=65536, delay=0.02))
    with socket.create_connection(("127.0.0.1", cache.port)) as sock:
        sock.sendall(f"GET /debian/{BIG_DEB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # The client is gone; the download still completes and is cached.
    rows = cache.wait_for_fetches(1)
    assert rows and rows[0]["complete"] == 0
    upstream.clear_fault(f"/debian/{BIG_DEB}")
    expected = content(files, BIG_DEB)
    wait_until(lambda: expected in cache.blobs().values(), "the download to reach the store")
    again = get(cache.url, f"/debian/{BIG_DEB}")
    assert again.header("X-Debcache") == "hit" and again.body == expected
    assert upstream.count(f"/debian/{BIG_DEB}") == 1


# --- volatile files -----------------------------------------------------------------


def test_volatile_files_are_revalidated_and_never_served_stale_while_upstream_answers(
    tmp_path: Path, upstream: FakeMirror, files: Path
) -> None:
    cache = start_debcache(tmp_path, f"{upstream.url}/debian", coalesce_window=0)
    try:
        check_revalidation(cache, upstream, files)
    finally:
        cache.stop()


def check_revalidation(cache: DebcacheServer, upstream: FakeMirror, files: Path) -> None:
    first = get(cache.url, f"/debian/{IN_RELEASE}")
    assert first.status == 200 and first.header("X-Debcache") == "miss"
    second = get(cache.url, f"/debian/{IN_RELEASE}")
    assert second.body == first.body and second.header("X-Debcache") == "hit"
    revalidation = upstream.requests[-1]
    assert revalidation.headers.get("If-Modified-Since") == first.header("Last-Modified")

    write(files, IN_RELEASE, b"Suite: stable\nDate: new point release\n")
    third = get(cache.url, f"/debian/{IN_RELEASE}")
    assert third.body == b"Suite: stable\nDate: new point release\n"
    assert third.header("X-Debcache") == "miss"
    assert upstream.count(f"/debian/{IN_RELEASE}") == 3


def test_pool_files_are_served_without_asking_upstream(
    cache: DebcacheServer, upstream: FakeMirror, files: Path
) -> None:
    assert get(cache.url, f"/debian/{DEB}").header("X-Debcache") == "miss"
    for _ in range(3):
        reply = get(cache.url, f"/debian/{DEB}")
        assert reply.header("X-Debcache") == "hit" and reply.body == content(files, DEB)
    assert upstream.count(f"/debian/{DEB}") == 1


@pytest.mark.parametrize("failure", ["500", "down"])
def test_a_cached_index_is_served_stale_with_a_warning_when_upstream_fails(
    tmp_path: Path, upstream: FakeMirror, files: Path, failure: str
) -> None:
    cache = start_debcache(tmp_path, f"{upstream.url}/debian", coalesce_window=0)
    try:
        assert get(cache.url, f"/debian/{IN_RELEASE}").status == 200
        if failure == "500":
            upstream.set_fault(f"/debian/{IN_RELEASE}", Fault.status(500))
        else:
            upstream.stop()
        reply = get(cache.url, f"/debian/{IN_RELEASE}")
        assert reply.status == 200
        assert reply.body == content(files, IN_RELEASE)
        assert reply.header("X-Debcache") == "stale"
        assert "111" in (reply.header("Warning") or "")
    finally:
        cache.stop()


def test_upstream_errors_pass_through_and_are_never_cached(
    cache: DebcacheServer, upstream: FakeMirror, files: Path
) -> None:
    missing = "dists/stable/main/binary-amd64/Packages.xz"
    assert get(cache.url, f"/debian/{missing}").status == 404
    upstream.set_fault(f"/debian/{DEB}", Fault.status(503, times=1))
    assert get(cache.url, f"/debian/{DEB}").status == 503
    write(files, missing, b"now it exists")
    assert get(cache.url, f"/debian/{missing}").body == b"now it exists"
    assert get(cache.url, f"/debian/{DEB}").body == content(files, DEB)


def test_an_unreachable_upstream_with_nothing_cached_is_a_502(tmp_path: Path) -> None:
    cache = start_debcache(tmp_path, "http://127.0.0.1:9/debian")
    try:
        reply = get(cache.url, f"/debian/{IN_RELEASE}")
        assert reply.status == 502
        assert b"could not be reached" in reply.body
        assert not cache.blobs()
    finally:
        cache.stop()


def test_requests_within_the_coalesce_window_share_one_validation(
    cache: DebcacheServer, upstream: FakeMirror, files: Path
) -> None:
    # The default window is one second; two requests in a row fall inside it.
    assert get(cache.url, f"/debian/{IN_RELEASE}").header("X-Debcache") == "miss"
    assert get(cache.url, f"/debian/{IN_RELEASE}").header("X-Debcache") == "hit"
    assert upstream.count(f"/debian/{IN_RELEASE}") == 1


# --- failover and redirects ---------------------------------------------------------


def test_failover_to_the_next_base_url_on_connect_error_5xx_and_timeout(
    tmp_path: Path, files: Path
) -> None:
    with FakeMirror(files) as broken, FakeMirror(files) as good:
        broken.set_fault(f"/debian/{DEB}", Fault.status(502))
        broken.set_fault(f"/debian/{IN_RELEASE}", Fault.hang(30))
        cache = start_debcache(
            tmp_path,
            "http://127.0.0.1:9/debian",  # nothing listens on the discard port
            f"{broken.url}/debian",
            f"{good.url}/debian",
            timeout=1,
        )
        try:
            assert get(cache.url, f"/debian/{DEB}").body == content(files, DEB)
            assert broken.count(f"/debian/{DEB}") == 1
            assert get(cache.url, f"/debian/{IN_RELEASE}").body == content(files, IN_RELEASE)
            assert good.count(f"/debian/{DEB}") == 1
        finally:
            cache.stop()


def test_redirects_are_followed_and_cached_under_the_requested_path(
    cache: DebcacheServer, upstream: FakeMirror, files: Path
) -> None:
    write(files, "pool/main/a/alpha/moved.deb", content(files, DEB))
    upstream.set_fault(f"/debian/{DEB}", Fault.redirect("/debian/pool/main/a/alpha/moved.deb"))
    assert get(cache.url, f"/debian/{DEB}").body == content(files, DEB)
    assert get(cache.url, f"/debian/{DEB}").header("X-Debcache") == "hit"


def test_no_content_encoding_is_added_or_undone(
    cache: DebcacheServer, upstream: FakeMirror, files: Path
) -> None:
    reply = get(cache.url, f"/debian/{PACKAGES_GZ}", headers={"Accept-Encoding": "gzip"})
    assert reply.body == content(files, PACKAGES_GZ)
    assert reply.header("Content-Encoding") is None
    # A hit of Packages.gz, and Packages itself (absent upstream) is not its .gz sibling.
    again = get(cache.url, f"/debian/{PACKAGES_GZ}", headers={"Accept-Encoding": "gzip"})
    assert again.header("Content-Encoding") is None and again.body == reply.body
    plain = get(cache.url, f"/debian/{PACKAGES_GZ[:-3]}", headers={"Accept-Encoding": "gzip"})
    assert plain.status == 404


# --- HTTP validators on hits --------------------------------------------------------


def test_head_range_and_conditional_requests_on_hits(
    cache: DebcacheServer, upstream: FakeMirror, files: Path
) -> None:
    body = content(files, DEB)
    first = get(cache.url, f"/debian/{DEB}")
    last_modified = first.header("Last-Modified")
    assert last_modified == formatdate((files / "debian" / DEB).stat().st_mtime, usegmt=True)

    head = get(cache.url, f"/debian/{DEB}", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(body))

    ranged = get(cache.url, f"/debian/{DEB}", headers={"Range": "bytes=100-"})
    assert ranged.status == 206 and ranged.body == body[100:]
    assert ranged.header("Content-Range") == f"bytes 100-{len(body) - 1}/{len(body)}"

    not_modified = get(cache.url, f"/debian/{DEB}", headers={"If-Modified-Since": last_modified})
    assert not_modified.status == 304 and not_modified.body == b""

    # apt resumes with If-Range: <mtime of its partial file>, later than Last-Modified.
    later = formatdate(time.time(), usegmt=True)
    resumed = get(cache.url, f"/debian/{DEB}", headers={"Range": "bytes=10-", "If-Range": later})
    assert resumed.status == 206 and resumed.body == body[10:]
    older = formatdate(time.time() - 86400 * 7, usegmt=True)
    refused = get(cache.url, f"/debian/{DEB}", headers={"Range": "bytes=10-", "If-Range": older})
    assert refused.status == 200 and refused.body == body
    wrong_tag = get(
        cache.url, f"/debian/{DEB}", headers={"Range": "bytes=10-", "If-Range": '"other"'}
    )
    assert wrong_tag.status == 200 and wrong_tag.body == body
    unsatisfiable = get(cache.url, f"/debian/{DEB}", headers={"Range": f"bytes={len(body)}-"})
    assert unsatisfiable.status == 416
    assert upstream.count(f"/debian/{DEB}") == 1


def range_cases(size: int) -> list[tuple[str, int, slice]]:
    """(Range, status, the part of the body sent) for a file of `size` bytes (RFC 9110 14)."""
    whole = slice(None)
    return [
        ("bytes=100-", 206, slice(100, None)),
        ("bytes=0-0", 206, slice(0, 1)),
        ("bytes=-100", 206, slice(size - 100, None)),
        (f"bytes=-{size * 2}", 206, whole),  # a suffix longer than the file: all of it
        (f"bytes=100-{size * 2}", 206, slice(100, None)),
        ("Bytes=10-19", 206, slice(10, 20)),  # range units are case-insensitive
        ("bytes=10-19,", 206, slice(10, 20)),  # empty list elements are ignored
        # Not a valid bytes range set: the header is ignored, the whole file is sent.
        ("bytes=abc", 200, whole),
        ("items=0-1", 200, whole),  # a unit we don't know: MUST be ignored
        ("bytes= 0-1", 200, whole),  # no whitespace around "=" in the grammar
        ("bytes =0-1", 200, whole),
        ("bytes=5-2", 200, whole),  # last before first: invalid
        ("bytes=", 200, whole),
        ("bytes=-", 200, whole),
        ("bytes=0-1,abc", 200, whole),  # one invalid range invalidates the set
        ("bytes=0x10-", 200, whole),
        # Several ranges: ignored too (no multipart/byteranges), the whole file.
        ("bytes=0-1,5-6", 200, whole),
        (f"bytes=0-1, {size}-", 200, whole),
        # Valid, and no range overlaps the file: 416 with the file's size.
        ("bytes=-0", 416, slice(0, 0)),
        (f"bytes={size}-", 416, slice(0, 0)),
        (f"bytes={size}-,{size + 5}-{size + 9}", 416, slice(0, 0)),
        ("bytes=" + "9" * 5000 + "-", 416, slice(0, 0)),
    ]


def test_only_a_valid_byte_range_is_applied_and_only_an_unsatisfiable_one_refused(
    cache: DebcacheServer, files: Path
) -> None:
    body, size = content(files, DEB), len(content(files, DEB))
    assert get(cache.url, f"/debian/{DEB}").body == body  # now a hit
    for header, status, part in range_cases(size):
        reply = get(cache.url, f"/debian/{DEB}", headers={"Range": header})
        assert (reply.status, reply.body) == (status, body[part]), header
        content_range = reply.header("Content-Range")
        if status == 206:
            first, sent = part.indices(size)[0], len(body[part])
            assert content_range == f"bytes {first}-{first + sent - 1}/{size}", header
        elif status == 416:
            assert content_range == f"bytes */{size}", header
        else:
            assert content_range is None, header
    # Range is defined for GET only (RFC 9110 14.2): a HEAD shows the whole file.
    head = get(cache.url, f"/debian/{DEB}", method="HEAD", headers={"Range": "bytes=100-"})
    assert head.status == 200 and head.header("Content-Length") == str(size)


def test_a_range_request_on_a_miss_gets_the_whole_file(cache: DebcacheServer, files: Path) -> None:
    reply = get(cache.url, f"/debian/{DEB}", headers={"Range": "bytes=100-"})
    assert reply.status == 200 and reply.body == content(files, DEB)


def test_head_on_a_miss_caches_the_file(
    cache: DebcacheServer, upstream: FakeMirror, files: Path
) -> None:
    head = get(cache.url, f"/debian/{DEB}", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(content(files, DEB)))
    wait_until(lambda: content(files, DEB) in cache.blobs().values(), "the HEAD's download")
    assert get(cache.url, f"/debian/{DEB}").header("X-Debcache") == "hit"
