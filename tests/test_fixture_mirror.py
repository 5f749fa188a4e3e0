"""FakeMirror: serves the archive plainly, and misbehaves on demand (status, truncate, corrupt,
hang, slow, redirect, chunked)."""

from __future__ import annotations

import http.client
import threading
import urllib.request

import pytest
from archive_fixture import (
    Archive,
)
from fake_mirror import FakeMirror, Fault
from fixture_checks import (
    HELLO,
    TOOL,
    fetch,
)

# `archive` (session, read-only), `own_archive` (one per test, to change) and `mirror` (a
# FakeMirror per test) come from conftest.py.


def test_mirror_serves_files_plainly(archive: Archive, mirror: FakeMirror) -> None:
    response, body = fetch(
        mirror,
        "/debian/dists/bookworm/main/binary-amd64/Packages",
        headers={"Accept-Encoding": "gzip"},
    )
    assert response.status == 200
    assert body == archive.read("dists/bookworm/main/binary-amd64/Packages")
    assert response.getheader("Content-Length") == str(len(body))
    assert response.getheader("Content-Type") == "application/octet-stream"
    assert response.getheader("Content-Encoding") is None
    last_modified = response.getheader("Last-Modified")
    assert last_modified is not None

    head, head_body = fetch(mirror, HELLO, method="HEAD")
    assert (head.status, head_body) == (200, b"")
    assert head.getheader("Content-Length") == str(
        len(archive.read(HELLO.removeprefix("/debian/")))
    )

    quoted, quoted_body = fetch(
        mirror, "/debian/pool/main/t/tool%2b%2b/tool%2b%2b_1.0%7erc1%2bdfsg-1_amd64.deb"
    )
    assert quoted.status == 200 and quoted_body == archive.read(TOOL.removeprefix("/debian/"))

    not_modified, _ = fetch(
        mirror, "/debian/dists/bookworm/InRelease", headers={"If-Modified-Since": last_modified}
    )
    assert not_modified.status == 304
    old = "Sat, 10 Jun 2023 08:53:51 GMT"
    modified, _ = fetch(
        mirror, "/debian/dists/bookworm/InRelease", headers={"If-Modified-Since": old}
    )
    assert modified.status == 200

    assert fetch(mirror, "/debian/pool/main/n/nothing.deb")[0].status == 404
    assert fetch(mirror, "/debian/dists")[0].status == 404
    assert fetch(mirror, "/debian/%2e%2e/%2e%2e/etc/passwd")[0].status in (403, 404)
    assert fetch(mirror, HELLO, headers={"Range": "bytes=100-"})[0].status == 200

    assert mirror.count(HELLO) == 2
    assert mirror.count(HELLO, "HEAD") == 1
    assert mirror.count(TOOL) == 1
    assert mirror.requests[0].headers["accept-encoding"] == "gzip"


def test_status_fault_permanent_and_one_shot(mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.status(500))
    assert [fetch(mirror, HELLO)[0].status for _ in range(2)] == [500, 500]
    mirror.set_fault(HELLO, Fault.status(503, times=1))
    assert [fetch(mirror, HELLO)[0].status for _ in range(2)] == [503, 200]
    mirror.set_fault(HELLO, Fault.status(404))
    mirror.clear_fault(HELLO)
    assert fetch(mirror, HELLO)[0].status == 200
    mirror.set_fault(HELLO, Fault.status(500))
    mirror.reset()
    assert fetch(mirror, HELLO)[0].status == 200
    assert mirror.count(HELLO) == 1


def test_truncate_fault_sends_a_short_body(archive: Archive, mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.truncate(100))
    connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=10)
    connection.request("GET", HELLO)
    response = connection.getresponse()
    assert response.getheader("Content-Length") == str(
        len(archive.read(HELLO.removeprefix("/debian/")))
    )
    with pytest.raises(http.client.IncompleteRead) as error:
        response.read()
    assert len(error.value.partial) == 100


def test_corrupt_fault_flips_bytes(archive: Archive, mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.corrupt(times=1))
    response, body = fetch(mirror, HELLO)
    good = archive.read(HELLO.removeprefix("/debian/"))
    assert response.status == 200
    assert len(body) == len(good) and body != good
    assert fetch(mirror, HELLO)[1] == good


def test_hang_fault_times_out_on_the_client(mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.hang(30))
    with pytest.raises(TimeoutError):
        fetch(mirror, HELLO, timeout=0.3)


def test_stop_ends_a_hang_at_once(archive: Archive) -> None:
    mirror = FakeMirror(archive.root).start()
    mirror.set_fault(HELLO, Fault.hang(60))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            fetch(mirror, HELLO, timeout=30)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    mirror.wait_for_requests(HELLO)
    mirror.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], http.client.RemoteDisconnected)


def test_slow_fault_sends_the_whole_body(archive: Archive, mirror: FakeMirror) -> None:
    mirror.set_fault(HELLO, Fault.slow(chunk=512, delay=0.001))
    response, body = fetch(mirror, HELLO)
    assert response.status == 200 and body == archive.read(HELLO.removeprefix("/debian/"))


def test_a_hanging_request_does_not_hold_up_other_clients(archive: Archive) -> None:
    """Clients are served concurrently: while one waits on a hang, another gets its file.
    (No timing involved: the hang lasts until stop().)"""
    mirror = FakeMirror(archive.root).start()
    mirror.set_fault(HELLO, Fault.hang(60))
    errors: list[BaseException] = []

    def stuck_client() -> None:
        try:
            fetch(mirror, HELLO, timeout=30)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=stuck_client)
    thread.start()
    try:
        mirror.wait_for_requests(HELLO)
        response, body = fetch(mirror, TOOL)
        assert response.status == 200 and body == archive.read(TOOL.removeprefix("/debian/"))
        assert thread.is_alive()  # still hanging: the two were served at the same time
    finally:
        mirror.stop()
        thread.join(timeout=10)
    assert len(errors) == 1


def test_redirect_fault(archive: Archive, mirror: FakeMirror) -> None:
    target = "/debian/dists/bookworm/Release"
    mirror.set_fault(HELLO, Fault.redirect(target))
    response, _ = fetch(mirror, HELLO)
    assert response.status == 302
    assert response.getheader("Location") == target
    with urllib.request.urlopen(mirror.url + HELLO, timeout=10) as followed:
        assert followed.read() == archive.read("dists/bookworm/Release")
    assert mirror.count(target) == 1


def test_chunked_fault(archive: Archive, mirror: FakeMirror) -> None:
    mirror.set_fault(TOOL, Fault.chunked())
    response, body = fetch(mirror, TOOL)
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Length") is None
    assert body == archive.read(TOOL.removeprefix("/debian/"))
