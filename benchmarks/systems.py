"""The servers clients fetch archive files from: nginx direct, debcache live and pinned.

`Cache` is the base of every cache under test: an empty cache on each start, its own
directory and port. debcache's command line (freeze, import, diff) runs from here too.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from processes import serve_command, wait_healthy

from benchmarks.processes import low_free_port, spawn, stop, wait_port
from benchmarks.profiler import Profiler
from benchmarks.settings import REPO
from benchmarks.upstream import Nginx


class System:
    """A server clients fetch archive files from: base URL path and port."""

    name = "system"
    prefix = "/debian"
    profiled = False  # whether --profile samples it (debcache's own phases only)

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}/{path}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        stop(self.process)
        self.process = None


class NginxDirect(System):
    """The mirror itself, unlimited or (as `direct`) through the relay: the limit."""

    name = "nginx"

    def __init__(self, nginx: Nginx, name: str = "nginx", port: int | None = None) -> None:
        super().__init__()
        self.name = name
        self.port, self.process = port or nginx.port, nginx.process


class Cache(System):
    """A cache of `upstream`, empty on each start(): a new run directory and a new port."""

    def __init__(self, work: Path, upstream: str) -> None:
        super().__init__()
        self.dir = work / self.name
        self.dir.mkdir()
        self.upstream = upstream
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.port = low_free_port()
        self.process = self.launch()
        wait_port(self.port, self.process, self.name)

    def launch(self) -> subprocess.Popen:
        """Write this run's configuration and spawn the server on self.port."""
        raise NotImplementedError


class Debcache(Cache):
    name = "debcache"
    profiled = True

    def __init__(self, work: Path, upstream: str, keyring: Path, profiler: Profiler) -> None:
        super().__init__(work, upstream)
        self.keyring, self.profiler = keyring, profiler
        self.data = self.config = self.dir

    def launch(self) -> subprocess.Popen:
        # The work directory's layout (debcache/dataN) is what experiments/ reads.
        self.data = self.dir / f"data{self.runs}"
        self.config = self.dir / f"debcache{self.runs}.toml"
        write_config(self.config, self.port, self.data, self.upstream, self.keyring)
        log = self.dir / f"serve{self.runs}.log"
        return spawn(serve_command(self.config), log, env=debcache_env(), cwd=REPO)

    def start(self) -> None:
        super().start()
        wait_healthy(self.process, self.port)

    def cli(
        self, *args: str, timeout: float = 900, profile: str | None = None
    ) -> tuple[subprocess.CompletedProcess, float]:
        """Run the debcache command line on this server's configuration; (result, seconds)."""
        command = debcache_command(self.config, *args)
        if profile:
            command = self.profiler.wrap(profile, command)
        return run_timed(command, timeout)

    def complete_rows(self, recording: str) -> int:
        """How many of a recording's fetch rows the server has committed as complete."""
        conn = sqlite3.connect(f"file:{self.data / 'debcache.db'}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(
                "SELECT COUNT(*) FROM fetches WHERE recording = ? AND complete = 1", [recording]
            ).fetchone()[0]
        finally:
            conn.close()


class Pinned(System):
    """Another view of the same debcache server: /pin/<branch>/ or /record/<name>/."""

    name = "debcache-pinned"
    profiled = True

    def __init__(self, debcache: Debcache, prefix: str) -> None:
        super().__init__()
        self.debcache = debcache
        self.prefix = prefix
        self.port, self.process = debcache.port, debcache.process


DEBCACHE_WORKERS: int | None = None  # run.py --workers; None: debcache's default


def write_config(config: Path, port: int, data: Path, upstream: str, keyring: Path) -> None:
    """A debcache configuration with one upstream, `debian`."""
    workers = f"workers = {DEBCACHE_WORKERS}\n" if DEBCACHE_WORKERS else ""
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{data}"\n{workers}\n'
        f'[upstreams.debian]\nurls = ["{upstream}"]\nkeyring = "{keyring}"\n'
    )


def debcache_env() -> dict[str, str]:
    """The environment debcache runs in: this checkout's package first."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def debcache_command(config: Path, *args: str) -> list[str]:
    """`debcache --config CONFIG ARGS...` from this checkout."""
    return [sys.executable, "-m", "debcache", "--config", str(config), *args]


def run_timed(
    command: list[str], timeout: float = 900
) -> tuple[subprocess.CompletedProcess, float]:
    """Run a debcache command to its end; (result with text output, seconds it took)."""
    started = time.perf_counter()
    result = subprocess.run(
        command,
        env=debcache_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result, time.perf_counter() - started
