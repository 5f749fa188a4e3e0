"""User story: a CI job drives debcache over HTTP: read everything, freeze and promote.

The JSON API answers what the CLI shows, and mutations come only from loopback
or with the admin token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import request
from workflow import record_install, run

from debcache.config import Config
from debcache.errors import Forbidden
from debcache.server.api import check_may_change
from debcache.server.keys import CONFIG


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
        CONFIG: Config(listen=(), data_dir=Path("/nonexistent"), upstreams={}, admin_token=token)
    }
    return make_mocked_request("POST", "/_/api/freeze", headers=headers, app=app,
                               transport=_Transport(remote))  # fmt: skip


class _Transport:
    def __init__(self, remote: str) -> None:
        self.remote = remote

    def get_extra_info(self, name: str, default=None):
        return (self.remote, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def test_loopback_trust_does_not_extend_to_rebound_domains() -> None:
    with pytest.raises(Forbidden):
        check_may_change(mocked("127.0.0.1", "", None, host="evil.example.org:3142"))
    check_may_change(mocked("127.0.0.1", "", None, host="localhost:3142"))
    check_may_change(mocked("::1", "", None, host="[::1]:3142"))
    check_may_change(mocked("127.0.0.1", "s3cret", "s3cret", host="evil.example.org"))


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
        with pytest.raises(Forbidden):
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
