"""The rate limit between the caches and nginx: a relay that paces each connection.

nginx's own limit_rate can't emulate a 20 MB/s mirror: it allows every request a
first second at full speed (rate x (elapsed + 1)), so files under 20 MB would not
be slowed at all. This relay paces each connection with a token bucket instead.
It runs as its own process: `python3 -m benchmarks.relay LISTEN:TARGET...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks.processes import low_free_port, spawn, wait_port
from benchmarks.settings import RATE_BURST, RATE_LIMIT, REPO
from benchmarks.upstream import Nginx


class Relay:
    """A relay in front of each logged nginx port, RATE_LIMIT per connection."""

    def __init__(self, work: Path, nginx: Nginx) -> None:
        self.dir = work / "relay"
        self.dir.mkdir()
        self.targets = dict(nginx.logged)
        self.ports = {name: low_free_port() for name in self.targets}
        self.process: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/debian"

    def start(self) -> None:
        pairs = [f"{self.ports[n]}:{self.targets[n]}" for n in self.targets]
        self.process = spawn(
            [sys.executable, "-m", "benchmarks.relay", *pairs], self.dir / "relay.log", cwd=REPO
        )
        for port in self.ports.values():
            wait_port(port, self.process, "the rate-limiting relay")


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, paced: bool) -> None:
    """Copy reader to writer until either side closes; at RATE_LIMIT if paced."""
    loop = asyncio.get_running_loop()
    allowed_at = loop.time()
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if paced:
                now = loop.time()
                allowed_at = max(allowed_at, now - RATE_BURST / RATE_LIMIT)
                allowed_at += len(data) / RATE_LIMIT
                if allowed_at > now:
                    await asyncio.sleep(allowed_at - now)
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def forward_to(
    target: int,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A connection handler that relays to 127.0.0.1:target, pacing what comes back."""

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump(client_reader, server_writer, False),
            pump(server_reader, client_writer, True),
        )

    return handle


async def relay_main(pairs: list[str]) -> None:
    """Serve `listen:target` pairs on 127.0.0.1; pace target-to-client bytes per connection."""
    servers = []
    for pair in pairs:
        listen, target = (int(x) for x in pair.split(":"))
        servers.append(await asyncio.start_server(forward_to(target), "127.0.0.1", listen))
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(relay_main(sys.argv[1:]))
