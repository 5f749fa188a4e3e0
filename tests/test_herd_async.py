"""User story: 64 hosts netboot at once; the mirror sees one request per file.

Runs debcache's app in the test's own event loop (pytest-aiohttp's real
server on 127.0.0.1) and drives it with 64 concurrent aiohttp clients.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import pytest
from archive_fixture import Archive
from debcache_server import make_config
from fake_mirror import FakeMirror, Fault

from debcache.server.app import create_app

CLIENTS = 64


@pytest.fixture
async def debcache_in_loop(aiohttp_server, tmp_path: Path, mirror: FakeMirror):
    config = make_config(tmp_path / "data", {"debian": [f"{mirror.url}/debian"]}, timeout=10)
    return await aiohttp_server(create_app(config))


async def fetch_all(url: str, paths: list[str]) -> list[tuple[str, int, str]]:
    """Every client GETs every path at once; (path, status, sha256 of the body)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def one(path: str) -> tuple[str, int, str]:
            async with session.get(f"{url}/debian/{path}") as response:
                return path, response.status, hashlib.sha256(await response.read()).hexdigest()

        return await asyncio.gather(*(one(p) for p in paths for _ in range(CLIENTS)))


async def test_64_clients_make_one_upstream_request_per_file(
    debcache_in_loop, mirror: FakeMirror, archive: Archive
) -> None:
    paths = [
        "dists/bookworm/InRelease",
        "dists/bookworm/main/binary-amd64/Packages.xz",
        archive.pool_path("bigpkg", "1:3.0-1"),
        archive.pool_path("hello", "2.10-3"),
    ]
    for path in paths:
        mirror.set_fault(f"/debian/{path}", Fault.slow(chunk=262144, delay=0.01))
    url = str(debcache_in_loop.make_url("")).rstrip("/")
    results = await fetch_all(url, paths)
    for path, status, sha256 in results:
        assert status == 200
        assert sha256 == archive.sha256(path), path
    for path in paths:
        assert mirror.count(f"/debian/{path}") == 1, path
