"""User story: every install is attributed to its recording, however the client names it.

The proxy user name (apt, GNU wget with `name:@`, BusyBox-style `name` with no
colon), the user of a mirror URL, and the /record/ prefix all tag the fetch log.
Requests that fail are logged but not complete.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror, Fault
from http_client import get

from debcache.errors import InvalidCredentials, InvalidName
from debcache.recording import recording_from_credentials


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (basic("rec1:"), "rec1"),  # apt, GNU wget with rec1:@
        (basic("rec1"), "rec1"),  # BusyBox wget with rec1@
        (basic("rec1:secret"), "rec1"),
        (basic(":"), None),
        (None, None),
        ("Bearer abc", None),
    ],
)
def test_the_recording_is_the_user_of_basic_credentials(header: str | None, name: str) -> None:
    assert recording_from_credentials(header) == name


@pytest.mark.parametrize("header", ["Basic !!!", basic("../x:"), basic("a b:")])
def test_malformed_or_unsafe_credentials_are_refused(header: str) -> None:
    with pytest.raises((InvalidCredentials, InvalidName)):
        recording_from_credentials(header)


def test_apt_with_the_user_in_the_mirror_url_records_it(
    apt: AptRoot, archive: Archive, debcache: DebcacheServer
) -> None:
    url = debcache.url.replace("http://", "http://mirror-user@")
    apt.write_sources([f"deb [signed-by={archive.key.keyring}] {url}/debian bookworm main"])
    update = apt.update()
    assert update.returncode == 0, update.stderr
    rows = debcache.wait_for_fetches(3, recording="mirror-user")
    assert "dists/bookworm/InRelease" in {row["path"] for row in rows}


def wget(url: str, proxy: str, target: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["http_proxy"] = proxy
    return subprocess.run(
        ["wget", "-q", "-O", str(target), url], env=env, capture_output=True, timeout=60
    )


def test_gnu_wget_through_the_proxy_records_the_user_with_a_colon(
    archive: Archive, mirror: FakeMirror, debcache: DebcacheServer, tmp_path: Path
) -> None:
    path = archive.pool_path("hello", "2.10-3")
    proxy = f"http://wget-run:@127.0.0.1:{debcache.port}/"
    result = wget(f"{mirror.url}/debian/{path}", proxy, tmp_path / "hello.deb")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hello.deb").read_bytes() == archive.read(path)
    rows = debcache.wait_for_fetches(1, recording="wget-run")
    assert rows[0]["path"] == path and rows[0]["complete"] == 1


def test_a_failed_request_is_logged_but_not_complete(
    archive: Archive, mirror: FakeMirror, debcache: DebcacheServer
) -> None:
    path = archive.pool_path("hello", "2.10-3")
    mirror.set_fault(f"/debian/{path}", Fault.truncate(100, times=1))
    assert get(debcache.url, f"/record/broken/debian/{path}").broken
    assert get(debcache.url, "/record/broken/debian/dists/none/InRelease").status == 404
    rows = debcache.wait_for_fetches(2, recording="broken")
    assert [(r["complete"], r["status"]) for r in rows] == [(0, 502), (1, 404)]
    assert rows[0]["sha256"] is None
