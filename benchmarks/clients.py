"""Python HTTP clients for the cold and herd workloads: every body's sha256 is checked."""

from __future__ import annotations

import asyncio
import hashlib
import resource
from dataclasses import dataclass, field

import aiohttp

from benchmarks.fixture import Fixture
from benchmarks.systems import System


@dataclass
class FetchStats:
    files: int = 0
    bytes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def fail(self, path: str, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{path}: {why}")


def client_session(limit: int = 1) -> aiohttp.ClientSession:
    """A session that takes bodies as sent (no decompression) on `limit` connections."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=600, sock_read=60),
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"Accept-Encoding": "identity"},
    )


async def fetch_checked(
    session: aiohttp.ClientSession, system: System, path: str, fx: Fixture, stats: FetchStats
) -> None:
    """GET one path; count it in stats as a file or as a failure (status, hash, error)."""
    try:
        async with session.get(system.url(path)) as response:
            hasher, received = hashlib.sha256(), 0
            async for chunk in response.content.iter_chunked(256 * 1024):
                hasher.update(chunk)
                received += len(chunk)
            stats.bytes += received
            if response.status != 200:
                stats.fail(path, f"HTTP {response.status}")
            elif path in fx.sha256 and hasher.hexdigest() != fx.sha256[path]:
                stats.fail(path, "empty 200" if received == 0 else "wrong sha256 (or short)")
            else:
                stats.files += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        stats.fail(path, type(exc).__name__)


async def fetch_sequentially(
    system: System, paths: list[str], fx: Fixture, clients: int
) -> FetchStats:
    """`clients` clients at once, each fetching every path in order on one connection."""
    stats = FetchStats()

    async def client() -> None:
        async with client_session() as session:
            for path in paths:
                await fetch_checked(session, system, path, fx, stats)

    await asyncio.gather(*(client() for _ in range(clients)))
    return stats


async def fetch_parallel(
    system: System, paths: list[str], fx: Fixture, concurrency: int
) -> FetchStats:
    """Every path once, `concurrency` at a time."""
    stats = FetchStats()
    queue = list(reversed(paths))
    async with client_session(concurrency) as session:

        async def worker() -> None:
            while queue:
                await fetch_checked(session, system, queue.pop(), fx, stats)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return stats


def own_cpu() -> float:
    """CPU seconds this process (the Python clients) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
