"""User story: a lab scales out with nginx caches in front of debcache (`debcache edge-config`).

The real nginx runs the generated configuration on loopback in front of a real
debcache serving a pinned branch of the signed fixture archive. Through the edge a
herd of pinned installs costs the origin one full download per file; a promote or a
rollback reaches clients within nginx's revalidation interval; a pinned install goes
on, byte for byte, with the origin stopped; a recording through the edge is complete.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
from apt import AptRoot, install_from
from archive_fixture import Archive, point_release
from click.testing import CliRunner
from debcache_server import DebcacheServer
from edge_nginx import EdgeNginx
from fake_mirror import FakeMirror
from http_client import get, request
from processes import wait_until
from workflow import freeze_json, manifest_json, record_install, run

from debcache.cli import cli

PACKAGES = ("hello", "tool++", "bigpkg")
CLIENTS = 32
# nginx keeps a pin's answer fresh for 1 s counted in whole seconds, so a promote shows
# within 2 s; the deadline leaves room for a loaded machine and is no timing assertion.
PROMOTE_DEADLINE = 15


@pytest.fixture
def pinned(own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path):
    """Branch b1 pinned to a recorded install of PACKAGES; (manifest entries, the .debs)."""
    recorded = AptRoot(tmp_path / "recorded")
    record_install(own_debcache, recorded, own_archive, own_mirror, "run-1", *PACKAGES)
    frozen = freeze_json(own_debcache, "run-1", "--promote", "b1")
    return manifest_json(own_debcache, frozen["id"])["entries"], recorded.downloaded()


@pytest.fixture
def edge(own_debcache: DebcacheServer, tmp_path: Path):
    with EdgeNginx(tmp_path / "edge", own_debcache.url) as server:
        yield server


def pinned_sources(url: str, archive: Archive) -> list[str]:
    return [f"deb [signed-by={archive.key.keyring}] {url}/pin/b1/debian bookworm main"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_herd_of_pinned_installs_costs_the_origin_one_download_per_file(
    own_debcache: DebcacheServer, pinned, edge: EdgeNginx
) -> None:
    entries, _ = pinned
    before = len(own_debcache.fetches())
    failures: list[str] = []

    def one_install() -> None:  # every file of the pin, as an install would fetch it
        for entry in entries:
            reply = get(edge.url, f"/pin/b1/debian/{entry['path']}")
            if reply.status != 200 or sha256(reply.body) != entry["sha256"]:
                failures.append(f"{entry['path']}: {reply.status} {reply.broken or ''}")

    clients = [threading.Thread(target=one_install) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert failures == []

    # Every request the edge passed on is in the origin's fetch log.
    through_edge = [r for r in edge.requests() if r["path"].startswith("/pin/")]
    assert len(through_edge) == CLIENTS * len(entries)
    passed_on = [r for r in through_edge if r["origin"] != "-"]
    rows = own_debcache.wait_for_rows(
        lambda rows: len(rows) >= before + len(passed_on), f"{len(passed_on)} pinned rows"
    )[before:]
    full_gets = Counter(r["path"] for r in rows if r["status"] == 200)
    assert set(full_gets) == {e["path"] for e in entries}
    assert max(full_gets.values()) == 1  # once per file; the rest were hits or 304s
    assert {r["status"] for r in rows} <= {200, 304}
    # The pin's own page tells clients to use the edge, not the origin behind it.
    assert (
        f"deb {edge.url}/pin/b1/debian bookworm main"
        in get(edge.url, "/pin/b1/debian/").body.decode()
    )


def test_a_promote_and_a_rollback_reach_the_edge_at_once(
    own_debcache: DebcacheServer,
    own_archive: Archive,
    own_mirror: FakeMirror,
    pinned,
    edge: EdgeNginx,
    tmp_path: Path,
) -> None:
    in_release = "/pin/b1/debian/dists/bookworm/InRelease"
    old_bytes = own_archive.read("dists/bookworm/InRelease")
    assert get(edge.url, in_release).body == old_bytes
    point_release(own_archive)
    record_install(own_debcache, AptRoot(tmp_path / "b"), own_archive, own_mirror, "new", "hello")
    new = freeze_json(own_debcache, "new")["id"]
    new_bytes = own_archive.read("dists/bookworm/InRelease")
    assert new_bytes != old_bytes

    def edge_serves(body: bytes) -> bool:
        reply = get(edge.url, in_release)
        return reply.status == 200 and reply.body == body

    assert edge_serves(old_bytes)  # cached at the edge
    assert run(own_debcache, "promote", "b1", new[:12]).exit_code == 0
    wait_until(lambda: edge_serves(new_bytes), "the promoted InRelease", PROMOTE_DEADLINE)
    assert get(edge.url, in_release).header("X-Debcache-Manifest") == new

    assert run(own_debcache, "rollback", "b1").exit_code == 0
    wait_until(lambda: edge_serves(old_bytes), "the rolled-back InRelease", PROMOTE_DEADLINE)


def test_a_pinned_install_through_the_edge_survives_the_origin_stopping(
    own_debcache: DebcacheServer, own_archive: Archive, pinned, edge: EdgeNginx, tmp_path: Path
) -> None:
    entries, recorded = pinned
    sources = pinned_sources(edge.url, own_archive)
    assert install_from(AptRoot(tmp_path / "warm"), sources, *PACKAGES) == recorded
    manifest = json.loads(run(own_debcache, "branches", "--json").output)[0]["manifest_id"]
    for entry in entries:  # the files apt did not ask for this time, and the manifest's URLs
        assert get(edge.url, f"/pin/b1/debian/{entry['path']}").status == 200
        assert get(edge.url, f"/manifest/{manifest}/debian/{entry['path']}").status == 200

    own_debcache.stop()
    # Once the pin's answers are past their second of freshness, the edge's attempts to
    # revalidate fail, and it serves what it has.
    in_release = "/pin/b1/debian/dists/bookworm/InRelease"
    wait_until(
        lambda: get(edge.url, in_release).header("X-Debcache-Edge") == "STALE",
        "the edge to serve a stale InRelease",
    )
    assert install_from(AptRoot(tmp_path / "offline"), sources, *PACKAGES) == recorded
    for entry in entries:
        reply = get(edge.url, f"/pin/b1/debian/{entry['path']}")
        assert reply.status == 200 and sha256(reply.body) == entry["sha256"], entry["path"]
        # A manifest's URL is fresh for a year: a plain hit, no attempt to reach debcache.
        reply = get(edge.url, f"/manifest/{manifest}/debian/{entry['path']}")
        assert sha256(reply.body) == entry["sha256"] and reply.header("X-Debcache-Edge") == "HIT"


def test_a_recorded_install_through_the_edge_records_every_file(
    own_debcache: DebcacheServer, own_archive: Archive, edge: EdgeNginx, tmp_path: Path
) -> None:
    apt = AptRoot(tmp_path / "apt")
    url = f"{edge.url}/record/through-edge/debian"
    apt.write_sources([f"deb [signed-by={own_archive.key.keyring}] {url} bookworm main"])
    assert apt.update().returncode == 0
    result = apt.download(*PACKAGES)
    assert result.returncode == 0, result.stderr

    prefix = "/record/through-edge/debian/"

    def through_edge() -> list[dict]:
        return [r for r in edge.requests() if r["path"].startswith(prefix)]

    def asked() -> set[str]:
        return {
            unquote(r["path"].removeprefix(prefix)) for r in through_edge() if r["status"] == "200"
        }

    # nginx logs a request once it is over, which may be just after apt has its body.
    debs = lambda: len([path for path in asked() if path.endswith(".deb")])  # noqa: E731
    wait_until(lambda: debs() == len(apt.downloaded()), lambda: f"{debs()} .debs in the edge's log")
    assert all(r["cache"] == "-" for r in through_edge())  # none answered by the edge itself
    asked_paths = asked()
    own_debcache.wait_for_rows(
        lambda rows: asked_paths <= {r["path"] for r in rows},
        "every file apt fetched",
        "through-edge",
    )
    frozen = freeze_json(own_debcache, "through-edge")
    assert frozen["id"]


def test_the_edge_passes_no_changes_to_the_api(
    own_debcache: DebcacheServer, pinned, edge: EdgeNginx
) -> None:
    # Through an edge on debcache's host every client would be a loopback client, which
    # may change things: the edge lets reads through only.
    manifest = json.loads(run(own_debcache, "branches", "--json").output)[0]["manifest_id"]
    reply = request(
        edge.url,
        "/_/api/branches/b2/promote",
        method="POST",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"manifest": manifest}).encode(),
    )
    assert reply.status == 403
    assert get(edge.url, "/_/api/branches").status == 200
    assert [b["name"] for b in json.loads(run(own_debcache, "branches", "--json").output)] == ["b1"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--origin", "ftp://cache:3142"], "--origin 'ftp://cache:3142' is not an http://"),
        (["--origin", "http://cache;x:3142"], "is not an http:// or https:// URL"),
        (["--origin", "http://cache:3142/debian"], "has a path; debcache serves at /"),
        (["--origin", "http://u:p@cache:3142"], "has credentials"),
        (["--listen", "3142"], "--listen '3142' is not HOST:PORT"),
        (["--listen", "a{b:80"], "--listen 'a{b:80' is not HOST:PORT"),
        (["--listen", "a_b:80"], "--listen 'a_b:80' has an invalid host"),
        (["--cache-dir", "cache"], "--cache-dir 'cache' is not an absolute path"),
        (["--cache-dir", "/srv/c; user root"], "is not an absolute path"),
        (["--log-dir", "/var/log/$x"], "--log-dir '/var/log/$x' is not an absolute path"),
        (["--max-size", "1.5g"], "--max-size '1.5g' is not a size as nginx writes it"),
        (["--max-size", "20t"], "e.g. --max-size 20g"),
    ],
)
def test_edge_config_refuses_what_nginx_would_misread(options: list[str], message: str) -> None:
    arguments = [
        "edge-config",
        *(["--origin", "http://cache:3142"] if "--origin" not in options else []),
    ]
    result = CliRunner().invoke(cli, [*arguments, *options])
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_edge_config_is_a_whole_nginx_conf() -> None:
    result = CliRunner().invoke(cli, ["edge-config", "--origin", "https://[::1]:3142/"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "server [::1]:3142;" in text and "proxy_pass https://debcache_origin;" in text
    assert "listen 0.0.0.0:3142;" in text and "max_size=20g" in text
    assert "/var/cache/nginx/debcache/cache" in text
    assert "\nuser " not in text and "\npid " not in text


def test_nginx_accepts_the_configuration_of_an_https_origin(tmp_path: Path) -> None:
    checked = EdgeNginx(tmp_path / "edge", "https://[::1]:3142/").check()
    assert checked.returncode == 0, checked.stderr
    assert "proxy_ssl_verify on;" in (tmp_path / "edge" / "nginx.conf").read_text()
