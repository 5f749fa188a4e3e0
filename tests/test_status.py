"""User story: an operator sees at a glance what debcache serves and how well it caches.

/_/ (HTML), /_/api/status and `debcache status --json` show the same summary;
/_/metrics counts requests by cache source and upstream requests by outcome.
"""

from __future__ import annotations

import json
from pathlib import Path

from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import freeze_json, record_install, run


def test_status_page_api_cli_and_metrics_agree(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(keyed_debcache, AptRoot(tmp_path / "a"), archive, mirror, "nightly-7", "hello")
    recorded = len(keyed_debcache.fetches())
    manifest = freeze_json(keyed_debcache, "nightly-7", "--promote", "xen-4.19")["id"]
    hello = archive.pool_path("hello", "2.10-3")
    assert get(keyed_debcache.url, f"/debian/{hello}").header("X-Debcache") == "hit"
    keyed_debcache.wait_for_fetches(recorded + 1)

    api = json.loads(get(keyed_debcache.url, "/_/api/status").body)
    assert [b["name"] for b in api["branches"]] == ["xen-4.19"]
    assert api["branches"][0]["manifest"] == manifest
    assert api["recordings"][0]["recording"] == "nightly-7"
    assert api["upstreams"][0]["name"] == "debian"
    assert api["cache"]["files"] >= 4 and api["cache"]["bytes"] > 0
    assert 0 < api["last_24h"]["hit_ratio"] < 1
    # The store counts every blob, freeze's completing fetches too; the live cache its paths.
    blobs = [b for b in (keyed_debcache.data_dir / "blobs").rglob("*") if b.is_file()]
    assert api["store"] == {"blobs": len(blobs), "bytes": sum(b.stat().st_size for b in blobs)}
    assert api["store"]["blobs"] > api["cache"]["files"]
    cli = json.loads(run(keyed_debcache, "status", "--json").output)
    assert cli == api
    text = run(keyed_debcache, "status").output.splitlines()
    assert text[1].startswith(f"store      {len(blobs)} blobs, ")
    assert f"; live cache {api['cache']['files']} paths, " in text[1]

    page = get(keyed_debcache.url, "/_/")
    assert page.status == 200 and page.header("Content-Type").startswith("text/html")
    text = page.body.decode()
    assert "xen-4.19" in text and manifest[:12] in text and "nightly-7" in text
    assert f"Store: {len(blobs)} blobs, " in text and "live cache: " in text

    metrics = get(keyed_debcache.url, "/_/metrics").body.decode()
    assert 'debcache_requests_total{source="hit",status="200"} 1.0' in metrics
    assert 'debcache_upstream_requests_total{outcome="200",upstream="debian"}' in metrics
    assert "debcache_downloads_in_flight 0.0" in metrics
