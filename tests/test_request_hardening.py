"""User story: a hostile or broken client costs one log line and a 4xx, nothing more.

The admin token counts only as `Bearer TOKEN`; a client that hangs up mid-body or sends
a malformed request is a client error logged in one line (rate-limited), never a 500
with a traceback; an encoded slash is not a path separator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
from pathlib import Path

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.test_utils import make_mocked_request
from debcache_server import DebcacheServer, make_config
from fake_mirror import FakeMirror
from http_client import get
from processes import wait_until

from debcache.archive import parse_archive_path
from debcache.config import Config, load_config
from debcache.errors import ApiNotAllowed, ConfigError, InvalidArchivePath
from debcache.server.api import check_may_change
from debcache.server.http_log import BadRequestLines
from debcache.server.keys import CONFIG, MACHINE_NAMES
from debcache.server.machine_names import MachineNames

TOKEN = "s3cret"


class _Transport:
    def get_extra_info(self, name: str, default=None):
        return ("192.0.2.7", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def may_change(authorization: str) -> bool:
    """Whether a change from another machine with this Authorization header is let in."""
    app = {
        CONFIG: Config(listen=(), data_dir=Path("/nonexistent"), upstreams={}, admin_token=TOKEN),
        MACHINE_NAMES: MachineNames(),
    }
    headers = {"Authorization": authorization, "Host": "cache.example.org:3142"}
    request = make_mocked_request(
        "POST", "/_/api/freeze", headers=headers, app=app, transport=_Transport()
    )
    try:
        asyncio.run(check_may_change(request))
    except ApiNotAllowed:
        return False
    return True


@pytest.mark.parametrize(
    ("authorization", "allowed"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive (RFC 6750, RFC 9110 11.1)
        (f"BEARER {TOKEN}", True),
        (TOKEN, False),  # a bare token: no scheme
        (f"Basic {TOKEN}", False),
        (f"Token {TOKEN}", False),
        (f"Bearer{TOKEN}", False),
        ("Bearer ", False),
        (f"Bearer {TOKEN}x", False),
    ],
)
def test_the_admin_token_counts_only_as_a_bearer_token(authorization: str, allowed: bool) -> None:
    assert may_change(authorization) is allowed


def raw_exchange(server: DebcacheServer, data: bytes, *, answer: bool = True) -> bytes:
    """Send `data` on a fresh connection; what came back until debcache closed it (b""
    when not waiting for it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(data)
        if not answer:
            return b""
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def traceback_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_client_hanging_up_mid_body_is_one_info_line_not_a_500(
    debcache: DebcacheServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    head = (
        f"POST /_/api/branches/b/rollback HTTP/1.1\r\nHost: 127.0.0.1:{debcache.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    raw_exchange(debcache, head.encode() + b'{"to": ', answer=False)
    hung_up = wait_until(
        lambda: [r for r in caplog.records if "hung up" in r.getMessage()],
        "a log line about the client that hung up",
    )
    assert hung_up[0].levelno == logging.INFO and "\n" not in hung_up[0].getMessage()
    assert traceback_records(caplog) == []
    assert get(debcache.url, "/_/health").status == 200


def test_each_malformed_request_is_one_log_line(
    debcache: DebcacheServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    malformed = [
        b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for data in malformed:
        assert raw_exchange(debcache, data).startswith(b"HTTP/1.0 400 "), data
    lines = wait_until(
        lambda: [r for r in caplog.records if "bad request from 127.0.0.1" in r.getMessage()],
        "the bad requests in the log",
    )
    wait_until(lambda: len(lines) >= 3, "three lines")
    assert all("\n" not in r.getMessage() for r in lines)
    assert traceback_records(caplog) == []


def test_malformed_requests_are_logged_at_most_n_a_minute_then_counted() -> None:
    now = [1000.0]
    quiet = BadRequestLines(per_minute=2, clock=lambda: now[0])

    def record(level: int = logging.ERROR) -> logging.LogRecord:
        try:
            raise BadHttpMessage("Invalid header\n\n  b'x'\n   ^")
        except BadHttpMessage as exc:
            error = (type(exc), exc, exc.__traceback__)
        return logging.LogRecord(
            "debcache.http", level, "", 0, "Error handling request from %s", ("a",), error
        )

    passed = [r for r in (record() for _ in range(5)) if quiet.filter(r)]
    assert [r.getMessage() for r in passed] == ["bad request from a: 400 Invalid header"] * 2
    assert all(r.exc_info is None and r.levelno == logging.INFO for r in passed)
    now[0] += 60
    later = record()
    assert quiet.filter(later)
    assert later.getMessage().endswith("(3 more bad requests not logged before this one)")
    not_http = record(logging.DEBUG)  # aiohttp's level for a TLS handshake: kept
    assert quiet.filter(not_http) and not_http.levelno == logging.DEBUG
    other = logging.LogRecord("debcache.http", logging.ERROR, "", 0, "boom", (), None)
    assert quiet.filter(other) and other.getMessage() == "boom"


ENCODED_SLASHES = ["dists%2fbookworm%2fInRelease", "dists/bookworm%2FInRelease", "dists%2Fx"]


@pytest.mark.parametrize("raw", ENCODED_SLASHES)
def test_an_encoded_slash_is_no_path_separator(raw: str) -> None:
    with pytest.raises(InvalidArchivePath):
        parse_archive_path(raw)


def test_an_encoded_slash_is_a_400_on_every_route(
    debcache: DebcacheServer, mirror: FakeMirror
) -> None:
    assert get(debcache.url, "/debian/dists/bookworm/InRelease").status == 200
    mirror.requests.clear()
    for target in (
        "/debian/dists%2fbookworm%2fInRelease",
        "/debian/dists/bookworm%2FInRelease",
        f"{mirror.url}/debian/dists%2fbookworm/InRelease",
        "/pin/b/debian/dists%2fbookworm/InRelease",
    ):
        reply = get(debcache.url, target)
        assert reply.status == 400 and reply.body.count(b"\n") == 1, (target, reply)
    assert mirror.requests == []


# --- who may read the status page and the API ---------------------------------------

STATUS_READS = ["/_/", "/_/api/", "/_/api/status", "/_/api/branches", "/_/api/recordings"]


def test_the_status_page_and_the_api_answer_anyone_by_default(debcache: DebcacheServer) -> None:
    for target in STATUS_READS:
        assert get(debcache.url, target).status == 200, target


@pytest.mark.parametrize(
    ("status_from", "answered"),
    [(("192.0.2.0/24",), False), (("192.0.2.0/24", "127.0.0.0/8"), True), (("::1",), False)],
)
def test_status_from_restricts_who_reads_the_status_page_and_the_api(
    tmp_path: Path, mirror: FakeMirror, status_from: tuple[str, ...], answered: bool
) -> None:
    config = make_config(tmp_path / "data", {"debian": [f"{mirror.url}/debian"]})
    networks = tuple(ipaddress.ip_network(n) for n in status_from)
    with DebcacheServer(dataclasses.replace(config, status_from=networks)) as server:
        for target in STATUS_READS:
            reply = get(server.url, target)
            assert reply.status == (200 if answered else 403), (target, reply)
            assert answered or (b"status_from" in reply.body and reply.body.count(b"\n") == 1)
        # A branch's page is a status read too: refused before anything says whether it exists.
        assert get(server.url, "/_/branches/lab").status == (404 if answered else 403)
        # Installers, monitoring and the key are never behind it.
        for target in ("/_/health", "/_/metrics", "/debian/dists/bookworm/InRelease"):
            assert get(server.url, target).status == 200, target


def test_status_from_in_the_config_file_is_checked_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "debcache.toml"
    path.write_text('[server]\nstatus_from = ["10.0.0.0/8", "127.0.0.1"]\n')
    assert load_config(path).status_from == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    )
    path.write_text('[server]\nstatus_from = ["10.0.0.0/8", "lab"]\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == (
        f"{path}: server.status_from: 'lab' is not an address or a network. List addresses "
        'or networks such as "127.0.0.1", "10.0.0.0/8" or "::1/128".'
    )
