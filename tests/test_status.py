"""User story: an operator sees at a glance what debcache serves and how well it caches.

/_/ (HTML), /_/api/status and `debcache status --json` show the same summary;
/_/metrics counts requests by cache source and upstream requests by outcome.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import freeze_json, keyed_debcache_for, record_install, run


@pytest.fixture
def cache(tmp_path: Path, mirror: FakeMirror, archive: Archive):
    server = keyed_debcache_for(tmp_path, mirror, archive)
    yield server
    server.stop()


def test_status_page_api_cli_and_metrics_agree(
    cache: DebcacheServer, archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(cache, AptRoot(tmp_path / "a"), archive, mirror, "nightly-7", "hello")
    manifest = freeze_json(cache, "nightly-7", "--promote", "xen-4.19")["id"]
    hello = archive.pool_path("hello", "2.10-3")
    assert get(cache.url, f"/debian/{hello}").header("X-Debcache") == "hit"
    cache.wait_for_fetches(len(mirror.requests) + 1)

    api = json.loads(get(cache.url, "/_/api/status").body)
    assert [b["name"] for b in api["branches"]] == ["xen-4.19"]
    assert api["branches"][0]["manifest"] == manifest
    assert api["recordings"][0]["recording"] == "nightly-7"
    assert api["upstreams"][0]["name"] == "debian"
    assert api["cache"]["files"] >= 4 and api["cache"]["bytes"] > 0
    assert 0 < api["last_24h"]["hit_ratio"] < 1
    cli = json.loads(run(cache, "status", "--json").output)
    assert cli == api

    page = get(cache.url, "/_/")
    assert page.status == 200 and page.header("Content-Type").startswith("text/html")
    text = page.body.decode()
    assert "xen-4.19" in text and manifest[:12] in text and "nightly-7" in text

    metrics = get(cache.url, "/_/metrics").body.decode()
    assert 'debcache_requests_total{source="hit",status="200"} 1.0' in metrics
    assert 'debcache_upstream_requests_total{outcome="200",upstream="debian"}' in metrics
    assert "debcache_downloads_in_flight 0.0" in metrics
