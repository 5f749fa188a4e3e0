"""Runs the real debcache server on 127.0.0.1 in a thread, as the tests' system under test."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

from processes import wait_until

from debcache import db as queries
from debcache.config import Config, Upstream, host_of
from debcache.server.app import run_server

HEALTH_DEADLINE = 10.0


class DebcacheServer:
    """`debcache serve` for `config`, on a free loopback port, in its own thread and loop."""

    def __init__(self, config: Config) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = dataclasses.replace(config, listen=(("127.0.0.1", self.port),))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="debcache", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await run_server(self.config, [self.sock], self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc

    def start(self) -> DebcacheServer:
        self._thread.start()
        wait_until(self._healthy, "debcache to answer /_/health", HEALTH_DEADLINE)
        return self

    def _healthy(self) -> bool:
        if self._error:
            raise RuntimeError("debcache failed to start") from self._error
        try:
            with urllib.request.urlopen(f"{self.url}/_/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self._loop and self._stop and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        if self._error:
            raise RuntimeError("debcache failed") from self._error

    def __enter__(self) -> DebcacheServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what the tests look at -------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def fetches(self, recording: str | None = None) -> list[dict]:
        """Fetch-log rows committed so far (reads the real database)."""
        database = queries.connect(self.data_dir / "debcache.db")
        try:
            return queries.fetches(database, recording)
        finally:
            database.conn.close()

    def wait_for_fetches(self, count: int, recording: str | None = None, deadline: float = 10):
        """The fetch-log rows once at least `count` are committed; else TimeoutError."""
        return self.wait_for_rows(
            lambda rows: len(rows) >= count, f"{count} row(s)", recording, deadline
        )

    def wait_for_rows(
        self,
        condition: Callable[[list[dict]], bool],
        what: str,
        recording: str | None = None,
        deadline: float = 10,
    ) -> list[dict]:
        """The committed fetch-log rows once `condition(rows)` holds; TimeoutError naming `what`."""
        seen: list[dict] = []

        def rows_once_true() -> tuple[list[dict]] | None:  # a tuple: true for no rows too
            seen[:] = self.fetches(recording)
            return (list(seen),) if condition(seen) else None

        (rows,) = wait_until(
            rows_once_true,
            lambda: f"{what} in the fetch log of {recording or 'all'} ({len(seen)} committed)",
            deadline,
        )
        return rows

    def blobs(self) -> dict[str, bytes]:
        """Every blob in the store, by sha256."""
        root = self.data_dir / "blobs" / "sha256"
        return {p.name: p.read_bytes() for p in root.glob("*/*")} if root.exists() else {}

    def temp_files(self) -> list[Path]:
        return list((self.data_dir / "tmp").iterdir())


def make_config(
    data_dir: Path,
    upstreams: dict[str, list[str]],
    keyring: Path | None = None,
    **upstream_options,
) -> Config:
    """A Config with one Upstream per name → base URLs (proxy_hosts default to their hosts)."""
    return Config(
        listen=(("127.0.0.1", 0),),
        data_dir=data_dir,
        upstreams={
            name: Upstream(
                name,
                tuple(urls),
                keyring=keyring,
                proxy_hosts=tuple(host_of(u) for u in urls),
                **upstream_options,
            )
            for name, urls in upstreams.items()
        },
    )


def write_config_file(config: Config, path: Path) -> Path:
    """The same configuration as a TOML file, for the `debcache` command line."""
    lines = [f'[server]\ndata_dir = "{config.data_dir}"\n']
    for upstream in config.upstreams.values():
        urls = ", ".join(f'"{url}"' for url in upstream.urls)
        lines.append(f"[upstreams.{upstream.name}]\nurls = [{urls}]\n")
        if upstream.keyring:
            lines.append(f'keyring = "{upstream.keyring}"\n')
    path.write_text("".join(lines))
    return path
