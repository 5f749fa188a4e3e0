"""User story: a newcomer finds their way around debcache's HTTP surface, and what it
reports about itself is true.

`/` points at the status page and the mirror URLs; `/_/` is debcache's own namespace,
indexed at `/_/api/`, never taken for an upstream; the access log shows the bytes
actually sent, sendfile'd bodies included; `/_/metrics` counts every request,
refusals too.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror, Fault
from http_client import get, request
from processes import wait_until
from workflow import freeze_json, record_install

INRELEASE = "dists/bookworm/InRelease"
ACCESS_LINE = re.compile(r'(\S+) "(\S+) (\S+)" (\d+) (\d+) (\S+) [\d.]+')


# --- / and /_/ ------------------------------------------------------------------------


def test_the_front_page_points_at_the_status_page_and_the_mirror_urls(
    debcache: DebcacheServer,
) -> None:
    text = get(debcache.url, "/")
    assert text.status == 200 and text.header("Content-Type").startswith("text/plain")
    for url in (f"{debcache.url}/_/", f"{debcache.url}/_/api/", f"{debcache.url}/debian/"):
        assert f"  {url}\n" in text.body.decode()

    page = get(debcache.url, "/", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status == 200 and page.header("Content-Type").startswith("text/html")
    assert f'<a href="{debcache.url}/debian/">' in page.body.decode()
    assert f'<a href="{debcache.url}/_/">' in page.body.decode()


def test_the_api_index_lists_every_endpoint_of_debcache_s_own_namespace(
    debcache: DebcacheServer,
) -> None:
    reply = get(debcache.url, "/_/api/")
    assert reply.status == 200 and reply.header("Content-Type").startswith("application/json")
    endpoints = json.loads(reply.body)["endpoints"]
    listed = {(e["method"], e["path"]) for e in endpoints}
    assert {("GET", "/_/"), ("GET", "/_/health"), ("GET", "/_/metrics")} <= listed
    assert {("GET", "/_/api/recordings/{name}"), ("POST", "/_/api/freeze")} <= listed
    assert all(e["description"] for e in endpoints), endpoints
    # Every page it lists is real (the list comes from the router, not a copy of it).
    for method, path in listed:
        if method == "GET" and "{" not in path and not path.startswith("/_/key."):
            assert get(debcache.url, path).status not in (404, 405), path


@pytest.mark.parametrize(
    "target", ["/_/nothing", "/_/api/nothing", "/_/pin", "/_/a%0Ab", "/_/health/"]
)
def test_an_unknown_path_under_underscore_is_a_404_that_lists_the_real_pages(
    debcache: DebcacheServer, mirror: FakeMirror, target: str
) -> None:
    for reply in (get(debcache.url, target), get(debcache.url, f"{debcache.url}{target}")):
        assert reply.status == 404
        text = reply.body.decode()
        assert "upstream" not in text, text
        assert "GET /_/health" in text and "POST /_/api/freeze" in text and "/_/api/" in text
        assert text.count("\n") == 1  # one line: cause and remedy
    assert mirror.requests == []


def test_a_wrong_method_on_one_of_debcache_s_pages_is_a_405_naming_the_right_one(
    debcache: DebcacheServer,
) -> None:
    health = request(debcache.url, "/_/health", method="POST", body=b"")
    assert health.status == 405 and health.header("Allow") == "GET,HEAD"
    freeze = get(debcache.url, "/_/api/freeze")
    assert freeze.status == 405 and freeze.header("Allow") == "POST"


def test_a_refused_proxy_method_is_a_405_naming_get_and_head(
    debcache: DebcacheServer, mirror: FakeMirror
) -> None:
    """RFC 9110 15.5.6: a 405 carries Allow."""
    connect = request(debcache.url, "mirror.example.org:443", method="CONNECT")
    delete = request(debcache.url, f"{mirror.url}/debian/{INRELEASE}", method="DELETE")
    for reply in (connect, delete):
        assert reply.status == 405 and reply.header("Allow") == "GET, HEAD", reply


# --- the access log -------------------------------------------------------------------


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="debcache.access")
    return caplog


def logged(caplog: pytest.LogCaptureFixture, target: str) -> tuple[int, int, str]:
    """(status, bytes, source) of the access-log line for `target`, once it is written
    (after the last byte went out, so possibly after the client has it all)."""

    def line() -> tuple[int, int, str] | None:
        for record in caplog.records:
            match = ACCESS_LINE.fullmatch(record.getMessage())
            if record.name == "debcache.access" and match and match.group(3) == target:
                return int(match.group(4)), int(match.group(5)), match.group(6)
        return None

    wait_until(line, f"the access-log line for {target}")
    return line()  # type: ignore[return-value]


def whole_exchange(port: int, method: str, target: str, headers: str = "") -> bytes:
    """Every byte of one response, read until debcache closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        received = b""
        while data := sock.recv(1 << 16):
            received += data
        return received


def cut_exchange(port: int, target: str, after: int) -> int:
    """Read `after` bytes of a response, then reset the connection; the bytes read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < after:
            data = sock.recv(after - received)
            assert data, "debcache closed the connection first"
            received += len(data)
        return received
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, not an orderly close


def test_the_access_log_shows_every_byte_sent_for_each_way_of_sending(
    keyed_debcache: DebcacheServer,
    archive: Archive,
    mirror: FakeMirror,
    tmp_path: Path,
    access_log: pytest.LogCaptureFixture,
) -> None:
    """Status line, headers and body as written to the connection: a streamed miss, a
    small hit written with its headers, a large hit and a pinned file by sendfile, a
    range, a HEAD."""
    record_install(keyed_debcache, AptRoot(tmp_path / "a"), archive, mirror, "r1", "bigpkg")
    freeze_json(keyed_debcache, "r1", "--promote", "b1")
    big = archive.pool_path("bigpkg", "1:3.0-1")  # recorded, so a hit
    size = len(archive.read(big))
    assert size > 1024 * 1024  # well above the size debcache writes inline
    hello = archive.pool_path("hello", "2.10-3")  # not recorded, so a miss
    exchanges = [
        ("GET", f"/debian/{hello}?streamed", "", "miss"),
        ("GET", f"/debian/{hello}?small", "", "hit"),
        ("GET", f"/debian/{big}?sendfile", "", "hit"),
        ("GET", f"/debian/{big}?range", "Range: bytes=1000-\r\n", "hit"),
        ("HEAD", f"/debian/{big}?head", "", "hit"),
        ("GET", f"/pin/b1/debian/{big}?pinned", "", "pinned"),
    ]
    for method, target, headers, expected_source in exchanges:
        received = whole_exchange(keyed_debcache.port, method, target, headers)
        status, sent, source = logged(access_log, target)
        assert (sent, source) == (len(received), expected_source), target
        assert status == (206 if "range" in target else 200)
    assert logged(access_log, f"/pin/b1/debian/{big}?pinned")[1] > size


@pytest.mark.parametrize("source", ["hit", "miss"])
def test_a_connection_cut_mid_body_logs_what_was_sent(
    debcache: DebcacheServer,
    archive: Archive,
    mirror: FakeMirror,
    access_log: pytest.LogCaptureFixture,
    source: str,
) -> None:
    big = archive.pool_path("bigpkg", "1:3.0-1")
    size = len(archive.read(big))
    if source == "hit":
        assert get(debcache.url, f"/debian/{big}").status == 200
    else:  # the mirror dribbles, so the client hangs up while debcache streams
        mirror.set_fault(f"/debian/{big}", Fault.slow(chunk=16384, delay=0.02, times=1))
    received = cut_exchange(debcache.port, f"/debian/{big}?cut", 200_000)
    status, sent, logged_source = logged(access_log, f"/debian/{big}?cut")
    assert status == 200 and logged_source == source
    assert received <= sent <= size + 1000, (received, sent)


# --- metrics --------------------------------------------------------------------------


def test_every_request_is_counted_with_its_status(
    debcache: DebcacheServer, mirror: FakeMirror
) -> None:
    """Refusals of every kind, from the router, a middleware or a handler, and debcache's
    own pages, are counted as much as archive files are."""
    refusals = [
        ("GET", "/debian/%2e%2e/%2e%2e/etc/passwd", 400),
        ("GET", "/ubuntu/dists/noble/InRelease", 404),
        ("GET", "/_/nothing", 404),
        ("GET", "/pin/nobranch/debian/dists/bookworm/InRelease", 404),
        ("POST", f"/debian/{INRELEASE}", 405),
        ("CONNECT", "mirror.example.org:443", 405),
        ("GET", "http://elsewhere.example.org/debian/dists/bookworm/InRelease", 403),
    ]
    for method, target, status in refusals:
        reply = request(debcache.url, target, method, body=b"" if method == "POST" else None)
        assert reply.status == status, (target, reply)
    assert get(debcache.url, f"/debian/{INRELEASE}").status == 200
    metrics = get(debcache.url, "/_/metrics").body.decode()
    for status, count in ((400, 1), (403, 1), (404, 3), (405, 2)):
        assert f'debcache_requests_total{{source="none",status="{status}"}} {count}.0' in metrics
    assert 'debcache_requests_total{source="miss",status="200"} 1.0' in metrics
    assert 'debcache_requests_total{source="none",status="200"}' in metrics  # /_/health
