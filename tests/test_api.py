"""User story: a CI job drives debcache over HTTP: read everything, freeze and promote.

The JSON API answers what the CLI shows, and mutations come only from loopback
or with the admin token.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer, make_config
from fake_mirror import FakeMirror
from http_client import Reply, request
from processes import wait_until
from workflow import record_install, run

from debcache.config import Config
from debcache.errors import ApiNotAllowed
from debcache.server.api import check_may_change as check_may_change_async
from debcache.server.keys import CONFIG, MACHINE_NAMES
from debcache.server.machine_names import MachineNames


def call(server: DebcacheServer, method: str, target: str, body: object = None):
    """(status, parsed JSON or the error text) of an API request."""
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if payload else {}
    reply = request(server.url, target, method, headers, timeout=60, body=payload)
    return reply.status, (json.loads(reply.body) if reply.status == 200 else reply.body.decode())


def test_freeze_promote_rollback_and_read_back_over_http(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    server = keyed_debcache
    record_install(server, AptRoot(tmp_path / "a"), archive, mirror, "job-1", "hello")
    record_install(server, AptRoot(tmp_path / "b"), archive, mirror, "job-2", "tool++")
    status, first = call(server, "POST", "/_/api/freeze", {"recordings": ["job-1"], "promote": "b"})
    assert status == 200, first
    status, second = call(server, "POST", "/_/api/freeze", {"recordings": ["job-2"]})
    assert status == 200 and second["created"]
    status, change = call(
        server, "POST", "/_/api/branches/b/promote", {"manifest": second["id"][:12], "note": "ci"}
    )
    assert status == 200 and change["previous_id"] == first["id"]
    status, change = call(server, "POST", "/_/api/branches/b/rollback", {})
    assert status == 200 and change["manifest_id"] == first["id"]

    assert call(server, "GET", "/_/api/branches")[1] == json.loads(
        run(server, "branches", "--json").output
    )
    assert call(server, "GET", "/_/api/branches/b/log")[1] == json.loads(
        run(server, "log", "b", "--json").output
    )
    assert call(server, "GET", "/_/api/recordings/job-1")[1] == json.loads(
        run(server, "recordings", "show", "job-1", "--json").output
    )
    shown = call(server, "GET", f"/_/api/manifests/{first['id'][:8]}")[1]
    assert shown["id"] == first["id"] and shown["entries"]
    assert len(call(server, "GET", "/_/api/manifests")[1]) == 2
    diff = call(server, "GET", f"/_/api/diff?a={first['id'][:12]}&b={second['id'][:12]}")[1]
    assert diff["differs"] is True


def test_api_errors_are_one_line_with_the_right_status(keyed_debcache: DebcacheServer) -> None:
    status, text = call(keyed_debcache, "POST", "/_/api/branches/b/promote", {"manifest": "ffff"})
    assert status == 404 and "No manifest id starts with ffff" in text
    status, text = call(keyed_debcache, "POST", "/_/api/freeze", {"recordings": "job"})
    assert status == 400 and "Recordings must be a list" in text
    status, text = call(keyed_debcache, "GET", "/_/api/recordings/nope")
    assert status == 404 and "No recording named 'nope'" in text


def mocked(remote: str, token: str, offered: str | None, host: str = "127.0.0.1:3142"):
    headers = {"Authorization": f"Bearer {offered}"} if offered else {}
    headers["Host"] = host
    app = {
        CONFIG: Config(listen=(), data_dir=Path("/nonexistent"), upstreams={}, admin_token=token),
        MACHINE_NAMES: MachineNames(),
    }
    return make_mocked_request("POST", "/_/api/freeze", headers=headers, app=app,
                               transport=_Transport(remote))  # fmt: skip


def check_may_change(request) -> None:
    asyncio.run(check_may_change_async(request))


class _Transport:
    def __init__(self, remote: str) -> None:
        self.remote = remote

    def get_extra_info(self, name: str, default=None):
        return (self.remote, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def test_loopback_trust_does_not_extend_to_rebound_domains() -> None:
    with pytest.raises(ApiNotAllowed):
        check_may_change(mocked("127.0.0.1", "", None, host="evil.example.org:3142"))
    check_may_change(mocked("127.0.0.1", "", None, host="localhost:3142"))
    check_may_change(mocked("::1", "", None, host="[::1]:3142"))
    check_may_change(mocked("127.0.0.1", "s3cret", "s3cret", host="evil.example.org"))


def test_a_slow_name_lookup_holds_up_no_other_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether a Host names this machine can take a DNS lookup (socket.getfqdn). Here
    # the resolver does not answer until the test says so: every other request must
    # be answered meanwhile, and the change only once its Host is known.
    asked, answer = threading.Event(), threading.Event()
    real_getfqdn = socket.getfqdn

    def unanswered_lookup(name: str = "") -> str:
        asked.set()
        answer.wait(timeout=60)
        return real_getfqdn(name)

    monkeypatch.setattr(socket, "getfqdn", unanswered_lookup)
    config = make_config(tmp_path / "data", {"debian": ["http://127.0.0.1:9/debian"]})
    with DebcacheServer(config) as server:
        try:
            replies: list[Reply] = []
            change = threading.Thread(
                target=lambda: replies.append(
                    rollback(server, f"rebound.example.org:{server.port}")
                )
            )
            change.start()
            wait_until(asked.is_set, "debcache to look up this machine's name")
            with ThreadPoolExecutor(4) as pool:
                health = list(
                    pool.map(lambda _: request(server.url, "/_/health", timeout=10), range(8))
                )
            assert [reply.status for reply in health] == [200] * 8
            assert change.is_alive() and not replies  # undecided while the name is unknown
        finally:
            answer.set()
        change.join(timeout=30)
        assert replies and replies[0].status == 403
        # This machine's own names are trusted once known: the change goes through to
        # the branch lookup (no branch b: 404), not the loopback refusal.
        for own in {real_getfqdn(), socket.gethostname(), "localhost", "127.0.0.1"}:
            assert rollback(server, f"{own}:{server.port}").status == 404, own


def rollback(server: DebcacheServer, host: str) -> Reply:
    """POST /_/api/branches/b/rollback with this Host header."""
    headers = {"Host": host, "Content-Type": "application/json"}
    return request(server.url, "/_/api/branches/b/rollback", "POST", headers, 60, b"{}")


@pytest.mark.parametrize(
    ("remote", "token", "offered", "allowed"),
    [
        ("127.0.0.1", "", None, True),
        ("127.0.0.5", "", None, True),
        ("::1", "", None, True),
        ("192.0.2.7", "", None, False),
        ("192.0.2.7", "", "", False),
        ("192.0.2.7", "s3cret", None, False),
        ("192.0.2.7", "s3cret", "wrong", False),
        ("192.0.2.7", "s3cret", "s3cret", True),
    ],
)
def test_mutations_need_loopback_or_the_token(
    remote: str, token: str, offered: str | None, allowed: bool
) -> None:
    request = mocked(remote, token, offered)
    if allowed:
        check_may_change(request)
    else:
        with pytest.raises(ApiNotAllowed):
            check_may_change(request)


def test_changes_take_only_json_bodies(keyed_debcache: DebcacheServer) -> None:
    # A web page can POST text/plain cross-site without a preflight; JSON it can't.
    reply = request(
        keyed_debcache.url,
        "/_/api/branches/b/rollback",
        "POST",
        {"Content-Type": "text/plain"},
        body=b"{}",
    )
    assert reply.status == 400 and b"application/json" in reply.body
