#!/usr/bin/env python3
"""Benchmark debcache beside nginx (the limit) and the Debian caches apt-cacher-ng and approx.

    python3 benchmarks/run.py [--quick] [--json FILE]

Everything runs on this machine, on 127.0.0.1 only, and is stopped at the end:

- a signed fixture archive (tests/archive_fixture.py) with a minbase-like mix of
  .deb sizes, a debian-installer image set and a Packages index inflated by
  thousands of tiny "filler" packages (so indices weigh a few MB);
- nginx serves it as the "remote mirror": one unlimited port (the limit every
  cache is compared with) and, per cache, one port whose access log counts that
  cache's upstream requests, reached through a relay that paces every
  connection to 20 MB/s (a real mirror's speed);
- debcache (`python3 -m debcache --config X serve`), apt-cacher-ng and approx
  (installed with apt-get when missing; skipped with the reason otherwise);
- the workloads of issue 7: warm throughput (wrk, a Lua path list, c=1/16/64),
  cold transfer, herd (16 and 64 Python clients, upstream GETs per file from
  nginx's log, every body's sha256 checked), small-file request rate, a real
  `apt-get install --download-only`, server RSS across repeated runs, and
  `debcache freeze` / `debcache diff` at scale.

Each figure is printed as it is measured, then a summary with the ratios to
nginx and to the best peer and the issue's targets; `--json FILE` writes all of it.
Timings are not asserted: CI runs `--quick` only to keep the benchmark working.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import aiohttp  # noqa: E402
import archive_fixture as fixture  # noqa: E402
from apt import AptRoot  # noqa: E402

SUITE = "bookworm"
META_PACKAGE = "bench-minbase"
RATE_LIMIT = 20 * 1_000_000  # bytes/s per upstream connection: a real mirror's speed
RATE_BURST = 256 * 1024  # bytes a connection may send ahead of the rate
MB = 1_000_000


# --- settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    mode: str
    small: int  # .debs of 10-200 KB
    medium: int  # .debs of 200 KB - 1 MB
    large_mb: tuple[float, ...]  # .debs of 1-40 MB
    fillers: int  # tiny packages that make the Packages index a few MB
    wrk_seconds: int
    herd_budget: int  # bytes of pool files in the herd set (plus indices and images)
    rss_bytes: int  # bytes each RSS run pulls at c=64
    rss_runs: int
    peer_rss: bool  # also repeat the RSS runs for the peers
    freeze_files: int
    diff_packages: int
    small_concurrency: tuple[int, ...]
    small_kinds: tuple[str, ...]


QUICK = Settings(
    mode="quick",
    small=100,
    medium=15,
    large_mb=(1, 4, 8),
    fillers=3_000,
    wrk_seconds=1,
    herd_budget=3 * MB,
    rss_bytes=300 * MB,
    rss_runs=5,
    peer_rss=False,
    freeze_files=2_000,
    diff_packages=60_000,
    small_concurrency=(16,),
    small_kinds=("by-hash", "index"),
)
FULL = Settings(
    mode="full",
    small=300,
    medium=60,
    large_mb=(1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 22, 28, 34, 40),
    fillers=10_000,
    wrk_seconds=6,
    herd_budget=40 * MB,
    rss_bytes=1100 * MB,
    rss_runs=5,
    peer_rss=True,
    freeze_files=10_000,
    diff_packages=60_000,
    small_concurrency=(16, 64),
    small_kinds=("by-hash", "index", "small-pool"),
)


# --- processes ------------------------------------------------------------------------

_started: list[subprocess.Popen] = []


def spawn(argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
    """Start a server process in its own process group; stop_all() ends it by its id."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    _started.append(process)
    return process


def stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # its own group: the server and its forks
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def stop_all() -> None:
    for process in reversed(_started):
        stop(process)


def free_port() -> int:
    """A free loopback port below 32768: apt-cacher-ng 3.7 fails to bind to higher ones."""
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} in {timeout} s")


def tree_pids(root: int) -> list[int]:
    """root and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def tree_cpu(root: int) -> float:
    """CPU seconds of a process tree, including its reaped children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except OSError:
            continue
    return total / ticks


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> float:
    return sum(status_kb(pid, "VmRSS") for pid in tree_pids(root)) / 1024


class RssSampler:
    """Samples the summed RSS of a process tree while a load runs."""

    def __init__(self, root: int) -> None:
        self.root, self.peak = root, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss_mb(self.root))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Profiler:
    """py-spy flame graphs of debcache's phases, with --profile DIR (none otherwise)."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            if not shutil.which("py-spy"):
                subprocess.run(
                    [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False
                )
            if not shutil.which("py-spy"):
                print("py-spy could not be installed: no profiles")
                self.dir = None

    @contextlib.contextmanager
    def attach(self, name: str, pid: int, gil: bool = True):
        """Sample a running process (without pausing it) until the block ends."""
        if self.dir is None:
            yield
            return
        command = ["py-spy", "record", "--pid", str(pid), "--nonblocking", "--rate", "100"]
        command += ["--gil"] if gil else []
        command += ["-o", str(self.dir / f"{name}.svg")]
        sampler = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            yield
        finally:
            sampler.send_signal(signal.SIGINT)  # py-spy writes the flame graph on SIGINT
            try:
                sampler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()

    def wrap(self, name: str, command: list[str]) -> list[str]:
        """A command run under py-spy (its timing then includes the sampling overhead)."""
        if self.dir is None:
            return command
        return [
            "py-spy",
            "record",
            "--rate",
            "200",
            "-o",
            str(self.dir / f"{name}.svg"),
            "--",
            *command,
        ]


PROFILER = Profiler(None)


# --- installing the tools -------------------------------------------------------------


def apt_install(packages: list[str]) -> str | None:
    """apt-get install packages without starting their services; None or why it failed."""
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        # Keep invoke-rc.d from starting apt-cacher-ng or nginx on the default ports.
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            return (result.stderr.strip().splitlines() or ["apt-get failed"])[-1]
        return None
    except OSError as exc:
        return str(exc)
    finally:
        if made_policy:
            policy.unlink()


def stop_system_service(name: str) -> None:
    """If an install started the packaged service anyway, stop it through its own script."""
    script = Path(f"/etc/init.d/{name}")
    if script.exists():
        running = subprocess.run([str(script), "status"], capture_output=True, check=False)
        if running.returncode == 0:
            print(f"  stopping the {name} service that the install started")
            subprocess.run([str(script), "stop"], capture_output=True, check=False)


def ensure_tools(want_peers: bool) -> dict[str, str | None]:
    """Install nginx and wrk (required) and the peers; {peer: None or why it is skipped}."""
    needed = {"nginx": "nginx-light", "wrk": "wrk"}
    missing = [package for tool, package in needed.items() if not shutil.which(tool)]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get")
        failure = apt_install(missing)
        if failure or not all(shutil.which(tool) for tool in needed):
            sys.exit(f"run.py: cannot install {' '.join(missing)}: {failure}")
    peers: dict[str, str | None] = {}
    if not want_peers:
        return {"apt-cacher-ng": "--no-peers given", "approx": "--no-peers given"}
    binaries = {
        "apt-cacher-ng": ("/usr/sbin/apt-cacher-ng", ["apt-cacher-ng"]),
        # approx runs from inetd; systemd-socket-activate is that inetd here.
        "approx": ("/usr/sbin/approx", ["approx", "systemd"]),
    }
    for peer, (binary, packages) in binaries.items():
        if not Path(binary).exists() or (
            peer == "approx" and not shutil.which("systemd-socket-activate")
        ):
            print(f"installing {peer} with apt-get")
            failure = apt_install(packages)
            if failure:
                peers[peer] = f"apt-get install {' '.join(packages)} failed: {failure}"
                print(f"  skipping {peer}: {peers[peer]}")
                continue
        stop_system_service(peer)
        peers[peer] = None
    return peers


# --- the fixture archive --------------------------------------------------------------


@dataclass
class Fixture:
    root: Path  # served as /, files under root/debian
    keyring: Path
    pool: list[str]  # the real packages (the "install"): archive-relative paths
    fillers: list[str]
    dists: list[str]  # what apt and d-i fetch below dists/ (no by-hash, no MD5SUMS)
    by_hash: list[str]  # SHA256 by-hash files
    volatile: list[str]  # InRelease, Packages..., installer images: revalidated by caches
    sha256: dict[str, str] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)

    def path(self, relative: str) -> Path:
        return self.root / "debian" / relative

    def total(self, paths: list[str]) -> int:
        return sum(self.size[p] for p in paths)


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def build_fixture(work: Path, settings: Settings) -> Fixture:
    rng = random.Random(12)
    key = fixture.make_signing_key(work / "key")
    specs = []
    sizes = [log_uniform(rng, 10_000, 200_000) for _ in range(settings.small)]
    sizes += [log_uniform(rng, 200_000, 1_000_000) for _ in range(settings.medium)]
    sizes += [int(mb * MB) for mb in settings.large_mb]
    for number, payload in enumerate(sizes):
        name = f"libbench{number:04d}" if number % 3 == 0 else f"bench-{number:04d}"
        specs.append(
            fixture.PackageSpec(
                name,
                f"{1 + number % 5}.{number % 11}-{1 + number % 3}+b1",
                architecture="all" if number % 10 == 7 else "amd64",
                section="libs" if name.startswith("lib") else "utils",
                payload_size=payload,
            )
        )
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(fixture.build_package, specs))
    meta = fixture.PackageSpec(
        META_PACKAGE, "1.0", architecture="all", depends=", ".join(s.name for s in specs)
    )
    # Filler packages make Packages as long as a real one. Their bytes are made here,
    # not by dpkg-deb (ten thousand builds would take minutes); nothing unpacks them.
    fillers = []
    built = getattr(fixture, "_built", None)
    for number in range(settings.fillers):
        spec = fixture.PackageSpec(f"filler{number:05d}", "1.0-1", payload_size=400)
        if built is not None:
            built[spec] = b"!<arch>\n" + rng.randbytes(rng.randint(200, 1500))
        fillers.append(spec)
    archive = fixture.Archive(work / "www", key)
    archive.publish_suite(
        SUITE, [*specs, meta, *fillers], codename=SUITE, installer=fixture.default_installer()
    )
    installer = archive.installer(SUITE)
    kernel_udeb = installer.kernel_udeb().pool_path() if installer else None
    pool = [s.pool_path() for s in [*specs, meta]] + ([kernel_udeb] if kernel_udeb else [])
    filler_paths = [s.pool_path() for s in fillers]
    dists, by_hash = [], []
    for path in archive.files():
        if not path.startswith("dists/"):
            continue
        if "/by-hash/SHA256/" in path:
            by_hash.append(path)
        elif "/by-hash/" in path or path.endswith("/MD5SUMS"):
            continue
        elif "/installer-" in path and "/current/" not in path:
            continue  # the version directory: the same bytes as current/
        else:
            dists.append(path)
    # apt's order: the Release first, then indices; images last.
    dists.sort(key=lambda p: (not p.endswith("InRelease"), "/installer-" in p, p))
    result = Fixture(work / "www", key.keyring, pool, filler_paths, dists, by_hash, list(dists))
    for path in [*pool, *dists, *by_hash]:
        data = result.path(path).read_bytes()
        result.sha256[path], result.size[path] = hashlib.sha256(data).hexdigest(), len(data)
    for path in filler_paths:
        result.size[path] = result.path(path).stat().st_size
    return result


# --- nginx, the mirror and the limit --------------------------------------------------


class Nginx:
    """One nginx: an unlimited port, and per client of the relay a port with its own log."""

    LOGGED = ("direct-limited", "debcache", "apt-cacher-ng", "approx")

    def __init__(self, work: Path, root: Path) -> None:
        self.dir = work / "nginx"
        self.dir.mkdir()
        self.root = root
        self.port = free_port()
        self.logged = {name: free_port() for name in self.LOGGED}
        self.process: subprocess.Popen | None = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/debian"

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def start(self) -> None:
        d = self.dir
        servers = [f"    server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}"]
        for name, port in self.logged.items():
            servers.append(
                f"    server {{ listen 127.0.0.1:{port}; root {self.root}; "
                f"access_log {self.log(name)} bench; }}"
            )
        temp = " ".join(
            f"{kind}_temp_path {d}/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
        )
        servers_text = "\n".join(servers)
        (d / "nginx.conf").write_text(
            f"""user root;
worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {d}/body;
    {temp}
    log_format bench '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log off;
{servers_text}
}}
"""
        )
        self.process = spawn(
            ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")],
            d / "stdout.log",
        )
        wait_port(self.port, self.process, "nginx")
        for port in self.logged.values():
            wait_port(port, self.process, "nginx")


class Relay:
    """The rate limit: a relay in front of each logged nginx port, RATE_LIMIT per connection.

    nginx's own limit_rate can't emulate a 20 MB/s mirror: it allows every request a
    first second at full speed (rate x (elapsed + 1)), so files under 20 MB would not
    be slowed at all. This relay paces each connection with a token bucket instead.
    """

    def __init__(self, work: Path, nginx: Nginx) -> None:
        self.dir = work / "relay"
        self.dir.mkdir()
        self.targets = dict(nginx.logged)
        self.ports = {name: free_port() for name in self.targets}
        self.process: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/debian"

    def start(self) -> None:
        pairs = [f"{self.ports[n]}:{self.targets[n]}" for n in self.targets]
        self.process = spawn(
            [sys.executable, str(Path(__file__).resolve()), "--relay", *pairs],
            self.dir / "relay.log",
        )
        for port in self.ports.values():
            wait_port(port, self.process, "the rate-limiting relay")


async def relay_main(pairs: list[str]) -> None:
    """Serve `listen:target` pairs on 127.0.0.1; pace target-to-client bytes per connection."""
    loop = asyncio.get_running_loop()

    async def pump(reader, writer, paced: bool) -> None:
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

    def handler(target: int):
        async def handle(client_reader, client_writer) -> None:
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

    servers = []
    for pair in pairs:
        listen, target = (int(x) for x in pair.split(":"))
        servers.append(await asyncio.start_server(handler(target), "127.0.0.1", listen))
    await asyncio.gather(*(server.serve_forever() for server in servers))


class AccessLog:
    """The upstream requests a cache made, read from its nginx port's log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> list[tuple[str, str, int]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            lines = f.read().decode(errors="replace").splitlines()
        rows = []
        for line in lines:
            parts = line.split(" ")
            if len(parts) >= 3:
                rows.append((parts[0], parts[1].removeprefix("/debian/"), int(parts[2])))
        return rows


# --- the systems under test -----------------------------------------------------------


class System:
    """A server clients fetch archive files from: base URL path and port."""

    name = "system"
    prefix = "/debian"

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
    name = "nginx"

    def __init__(self, nginx: Nginx) -> None:
        super().__init__()
        self.port, self.process = nginx.port, nginx.process


class Debcache(System):
    name = "debcache"

    def __init__(self, work: Path, upstream: str, keyring: Path) -> None:
        super().__init__()
        self.dir = work / "debcache"
        self.dir.mkdir()
        self.upstream, self.keyring = upstream, keyring
        self.runs = 0
        self.data = self.config = self.dir

    def start(self) -> None:
        """A fresh data directory: a cold cache."""
        self.runs += 1
        self.port = free_port()
        self.data = self.dir / f"data{self.runs}"
        self.config = self.dir / f"debcache{self.runs}.toml"
        self.config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{self.port}"]\ndata_dir = "{self.data}"\n\n'
            f'[upstreams.debian]\nurls = ["{self.upstream}"]\nkeyring = "{self.keyring}"\n'
        )
        self.process = spawn(
            [sys.executable, "-m", "debcache", "--config", str(self.config), "serve"],
            self.dir / f"serve{self.runs}.log",
            env=debcache_env(),
            cwd=REPO,
        )
        wait_port(self.port, self.process, "debcache")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            health = f"http://127.0.0.1:{self.port}/_/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2):
                return
            time.sleep(0.05)
        raise TimeoutError("debcache did not answer /_/health")

    def cli(
        self, *args: str, timeout: float = 900, profile: str | None = None
    ) -> tuple[subprocess.CompletedProcess, float]:
        """Run the debcache command line on this server's configuration; (result, seconds)."""
        command = [sys.executable, "-m", "debcache", "--config", str(self.config), *args]
        if profile:
            command = PROFILER.wrap(profile, command)
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

    def complete_rows(self, recording: str) -> int:
        conn = sqlite3.connect(f"file:{self.data / 'debcache.db'}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(
                "SELECT COUNT(*) FROM fetches WHERE recording = ? AND complete = 1", [recording]
            ).fetchone()[0]
        finally:
            conn.close()


class Pinned(System):
    """debcache's /pin/<branch>/ view of the same server."""

    name = "debcache-pinned"

    def __init__(self, debcache: Debcache, branch: str) -> None:
        super().__init__()
        self.debcache = debcache
        self.prefix = f"/pin/{branch}/debian"
        self.port, self.process = debcache.port, debcache.process


def debcache_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


class AptCacherNg(System):
    name = "apt-cacher-ng"

    def __init__(self, work: Path, upstream: str) -> None:
        super().__init__()
        self.dir = work / "apt-cacher-ng"
        self.dir.mkdir()
        self.upstream = upstream
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.port = free_port()
        run = self.dir / f"run{self.runs}"
        for sub in ("conf", "cache", "log"):
            (run / sub).mkdir(parents=True)
        # Only our own remapping: the packaged mirror lists are not used.
        (run / "conf" / "acng.conf").write_text(
            f"CacheDir: {run / 'cache'}\nLogDir: {run / 'log'}\n"
            "SupportDir: /usr/lib/apt-cacher-ng\n"
            f"Port: {self.port}\nBindAddress: 127.0.0.1\n"
            f"SocketPath: {run / 'acng.socket'}\nPidFile: {run / 'acng.pid'}\n"
            "ForeGround: 1\nExThreshold: 4\n"
            f"Remap-bench: /debian ; {self.upstream}/\n"
        )
        self.process = spawn(
            ["/usr/sbin/apt-cacher-ng", "-c", str(run / "conf")], run / "stdout.log"
        )
        wait_port(self.port, self.process, "apt-cacher-ng")


class Approx(System):
    name = "approx"

    def __init__(self, work: Path, upstream: str) -> None:
        super().__init__()
        self.dir = work / "approx"
        self.dir.mkdir()
        self.upstream = upstream
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.port = free_port()
        run = self.dir / f"run{self.runs}"
        (run / "cache").mkdir(parents=True)
        (run / "approx.conf").write_text(
            f"debian {self.upstream}\n$cache {run / 'cache'}\n"
            "$user root\n$group root\n$verbose false\n"
        )
        # approx is an inetd service (a process per connection): this is the inetd.
        self.process = spawn(
            [
                "systemd-socket-activate",
                "--inetd",
                "--accept",
                "--listen",
                f"127.0.0.1:{self.port}",
                "/usr/sbin/approx",
                "-c",
                str(run / "approx.conf"),
            ],
            run / "stdout.log",
        )
        wait_port(self.port, self.process, "approx")


# --- Python clients: cold transfer and herd, every body checked -----------------------


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
    return aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=600, sock_read=60),
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"Accept-Encoding": "identity"},
    )


async def fetch_checked(
    session: aiohttp.ClientSession, system: System, path: str, fx: Fixture, stats: FetchStats
) -> None:
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


async def fetch_sequentially(system: System, paths: list[str], fx: Fixture, clients: int):
    """`clients` clients at once, each fetching every path in order on one connection."""
    stats = FetchStats()

    async def client() -> None:
        async with client_session() as session:
            for path in paths:
                await fetch_checked(session, system, path, fx, stats)

    await asyncio.gather(*(client() for _ in range(clients)))
    return stats


async def fetch_parallel(system: System, paths: list[str], fx: Fixture, concurrency: int):
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
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- wrk ------------------------------------------------------------------------------

WRK_LUA = r"""
local paths = {}
local f = assert(io.open(os.getenv("BENCH_PATHS")))
for line in f:lines() do if #line > 0 then paths[#paths + 1] = line end end
f:close()
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local i = 0
function init(args)
  i = ((tid or 1) * 7919) % #paths
end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"latency_p50_us":%d,"latency_p99_us":%d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


class Wrk:
    def __init__(self, work: Path) -> None:
        self.dir = work / "wrk"
        self.dir.mkdir()
        self.script = self.dir / "paths.lua"
        self.script.write_text(WRK_LUA)
        self.count = 0

    def run(self, system: System, paths: list[str], connections: int, seconds: float) -> dict:
        self.count += 1
        listing = self.dir / f"paths{self.count}.txt"
        listing.write_text("".join(f"{system.prefix}/{p}\n" for p in paths))
        threads = 1 if connections == 1 else 2
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(self.script),
            f"http://127.0.0.1:{system.port}/",
        ]
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server0 = tree_cpu(system.pid)
        hwm0 = status_kb(system.pid, "VmHWM")
        started = time.perf_counter()
        with RssSampler(system.pid) as sampler:
            result = subprocess.run(
                command,
                env={**os.environ, "BENCH_PATHS": str(listing)},
                capture_output=True,
                text=True,
                timeout=seconds + 120,
                check=False,
            )
        wall = time.perf_counter() - started
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = tree_cpu(system.pid) - server0
        line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary: {result.stdout} {result.stderr}")
        summary = json.loads(line[6:])
        duration = summary["duration_us"] / 1e6
        client_cpu = (children1.ru_utime - children0.ru_utime) + (
            children1.ru_stime - children0.ru_stime
        )
        errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
        return {
            "requests": summary["requests"],
            "bytes": summary["bytes"],
            "seconds": round(duration, 3),
            "req_s": round(summary["requests"] / duration, 1),
            # responses that were not errors (non-2xx count as errors in wrk)
            "ok_req_s": round((summary["requests"] - summary["status"]) / duration, 1),
            "MB_s": round(summary["bytes"] / duration / MB, 1),
            "errors": errors,
            "error_kinds": {
                k: summary[k]
                for k in ("connect", "read", "write", "status", "timeout")
                if summary[k]
            },
            "latency_p50_ms": round(summary["latency_p50_us"] / 1000, 2),
            "latency_p99_ms": round(summary["latency_p99_us"] / 1000, 2),
            # CPU seconds per wall second: 1.0 is one core of this 2-core machine.
            "client_cpu": round(client_cpu / wall, 2),
            "server_cpu": round(server_cpu / wall, 2),
            "server_rss_peak_mb": round(sampler.peak, 1),
            "server_vmhwm_mb": round(max(hwm0, status_kb(system.pid, "VmHWM")) / 1024, 1),
        }


# --- the benchmark --------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, work: Path, peers: dict[str, str | None]) -> None:
        self.s, self.work = settings, work
        self.peer_status = peers
        self.results: dict = {
            "warm": [],
            "small": [],
            "cold": [],
            "herd": [],
            "apt": [],
            "rss": [],
            "freeze": {},
            "diff": {},
            "skipped": {k: v for k, v in peers.items() if v},
            "notes": [],
        }
        self.fx: Fixture
        self.nginx: Nginx
        self.wrk = Wrk(work)

    # --- printing ---

    @staticmethod
    def say(text: str) -> None:
        print(text, flush=True)

    def row(self, kind: str, record: dict) -> None:
        self.results[kind].append(record)
        keys = [k for k in record if k not in ("workload",)]
        self.say(f"  [{kind}] " + "  ".join(f"{k}={record[k]}" for k in keys))

    # --- lists of paths ---

    def small_lists(self) -> dict[str, list[str]]:
        pool_small = [p for p in self.fx.pool if self.fx.size[p] < 200_000]
        index = [p for p in self.fx.dists if "/installer-" not in p]
        return {"by-hash": self.fx.by_hash, "index": index, "small-pool": pool_small}

    def herd_set(self) -> list[str]:
        """Indices and installer images first (as apt and d-i), then pool files to a budget."""
        pool, total = [], 0
        for path in self.fx.pool:
            if total + self.fx.size[path] > self.s.herd_budget:
                continue
            pool.append(path)
            total += self.fx.size[path]
        return [*self.fx.dists, *pool]

    def cold_set(self) -> list[str]:
        return [*self.fx.dists, *self.fx.pool]

    # --- workloads ---

    def warm(self, system: System, concurrencies=(1, 16, 64)) -> None:
        prefetch = asyncio.run(fetch_parallel(system, self.fx.pool, self.fx, 8))
        if prefetch.failures:
            self.note(f"{system.name}: warm-up fetch failures {prefetch.failures}")
        for connections in concurrencies:
            with self.profiled(system, f"warm-c{connections}", connections == 64):
                record = self.wrk.run(system, self.fx.pool, connections, self.s.wrk_seconds)
            self.row("warm", {"system": system.name, "concurrency": connections, **record})

    def small(self, system: System) -> None:
        lists = self.small_lists()
        for kind in self.s.small_kinds:
            paths = lists[kind]
            prefetch = asyncio.run(fetch_parallel(system, paths, self.fx, 8))
            if prefetch.failures:
                self.note(f"{system.name}: {kind} warm-up failures {prefetch.failures}")
            for connections in self.s.small_concurrency:
                record = self.wrk.run(system, paths, connections, self.s.wrk_seconds)
                self.row(
                    "small",
                    {"system": system.name, "kind": kind, "concurrency": connections, **record},
                )

    def cold(self, system: System, upstream_log: AccessLog | None) -> None:
        paths = self.cold_set()
        if upstream_log:
            upstream_log.mark()
        cpu0, started = own_cpu(), time.perf_counter()
        with self.profiled(system, "cold"):
            stats = asyncio.run(fetch_sequentially(system, paths, self.fx, 1))
        wall = time.perf_counter() - started
        record = {
            "system": system.name,
            "files": len(paths),
            "MB": round(self.fx.total(paths) / MB, 1),
            "seconds": round(wall, 2),
            "MB_s": round(self.fx.total(paths) / wall / MB, 1),
            "failures": stats.failures,
            "client_cpu": round((own_cpu() - cpu0) / wall, 2),
        }
        if upstream_log:
            time.sleep(0.3)
            record["upstream_requests"] = len(upstream_log.since_mark())
        self.row("cold", record)

    def herd(self, system: System, clients: int, upstream_log: AccessLog) -> None:
        paths = self.herd_set()
        upstream_log.mark()
        cpu0, started = own_cpu(), time.perf_counter()
        stats = asyncio.run(fetch_sequentially(system, paths, self.fx, clients))
        wall = time.perf_counter() - started
        time.sleep(0.5)  # downloads that clients left run to their end
        requests = upstream_log.since_mark()
        volatile = set(self.fx.volatile)
        counts: dict[str, int] = dict.fromkeys(paths, 0)
        full: dict[str, int] = dict.fromkeys(paths, 0)
        other = 0
        for _method, path, status in requests:
            if path in counts:
                counts[path] += 1
                full[path] += status == 200
            else:
                other += 1
        pool = [p for p in paths if p not in volatile]
        vol = [p for p in paths if p in volatile]

        def per_file(group: list[str], table: dict[str, int]) -> float:
            return round(sum(table[p] for p in group) / len(group), 3) if group else 0.0

        record = {
            "system": system.name,
            "clients": clients,
            "files": len(paths),
            "MB_per_client": round(self.fx.total(paths) / MB, 1),
            "seconds": round(wall, 2),
            "upstream_per_file": per_file(paths, counts),
            "upstream_200_per_file": per_file(paths, full),
            "pool_per_file": per_file(pool, counts),
            "pool_max": max((counts[p] for p in pool), default=0),
            "volatile_per_file": per_file(vol, counts),
            "volatile_max": max((counts[p] for p in vol), default=0),
            "other_upstream_requests": other,
            "bodies_ok": stats.files,
            "bodies_expected": clients * len(paths),
            "failures": stats.failures,
            "failure_examples": stats.examples,
            "client_cpu": round((own_cpu() - cpu0) / wall, 2),
        }
        self.row("herd", record)

    def apt(self, system: System) -> None:
        root = AptRoot(self.work / f"apt-{system.name}-{len(self.results['apt'])}")
        root.write_sources(
            [f"deb [signed-by={self.fx.keyring}] {system.url('').rstrip('/')} {SUITE} main"]
        )
        started = time.perf_counter()
        update = root.update(timeout=600)
        middle = time.perf_counter()
        download = root.download(META_PACKAGE, timeout=900) if update.returncode == 0 else None
        ended = time.perf_counter()
        debs = list(root.archives.glob("*.deb"))
        ok = update.returncode == 0 and download is not None and download.returncode == 0
        expected = len([p for p in self.fx.pool if p.endswith(".deb")])
        record = {
            "system": system.name,
            "ok": ok and len(debs) == expected,
            "update_s": round(middle - started, 2),
            "download_s": round(ended - middle, 2),
            "total_s": round(ended - started, 2),
            "debs": len(debs),
            "MB": round(sum(p.stat().st_size for p in debs) / MB, 1),
        }
        if not record["ok"]:
            failed = download if download is not None else update
            record["error"] = (failed.stderr.strip().splitlines() or ["?"])[-3:]
        self.row("apt", record)
        shutil.rmtree(root.directory, ignore_errors=True)

    def rss(self, system: System) -> None:
        """Repeated c=64 runs that pull rss_bytes each: peak and growth of the server's RSS."""
        warm64 = [
            r for r in self.results["warm"] if r["system"] == system.name and r["concurrency"] == 64
        ]
        rate = warm64[-1]["MB_s"] if warm64 else 500
        seconds = round(min(max(self.s.rss_bytes / MB / max(rate, 1), self.s.wrk_seconds), 30))
        before = tree_rss_mb(system.pid)
        after_runs, pulled, peaks = [], [], []
        for _ in range(self.s.rss_runs):
            record = self.wrk.run(system, self.fx.pool, 64, seconds)
            pulled.append(round(record["bytes"] / MB))
            peaks.append(record["server_rss_peak_mb"])
            time.sleep(0.5)
            after_runs.append(round(tree_rss_mb(system.pid), 1))
        self.row(
            "rss",
            {
                "system": system.name,
                "runs": self.s.rss_runs,
                "seconds_each": round(seconds, 1),
                "MB_pulled_each": pulled,
                "rss_before_mb": round(before, 1),
                "rss_after_each_mb": after_runs,
                "peak_rss_mb": max(peaks),
                "vmhwm_mb": round(status_kb(system.pid, "VmHWM") / 1024, 1),
                "growth_run2_to_last_mb": round(
                    after_runs[-1] - after_runs[min(1, len(after_runs) - 1)], 1
                ),
            },
        )

    def profiled(self, system: System, phase: str, wanted: bool = True):
        if wanted and isinstance(system, Debcache | Pinned):
            return PROFILER.attach(f"{system.name}-{phase}", system.pid)
        return contextlib.nullcontext()

    def note(self, text: str) -> None:
        self.results["notes"].append(text)
        self.say(f"  note: {text}")

    # --- debcache specifics ---

    def record_and_pin(self, debcache: Debcache, branch: str) -> Pinned | None:
        """Record an install-like fetch of every file, freeze it and promote it to branch."""
        paths = [*self.fx.dists, *self.fx.pool]
        recorder = Pinned(debcache, "x")
        recorder.prefix = "/record/bench/debian"
        stats = asyncio.run(fetch_parallel(recorder, paths, self.fx, 8))
        if stats.failures:
            self.note(f"recording for the pinned branch: failures {stats.failures}")
        self.wait_rows(debcache, "bench", stats.files)
        result, seconds = debcache.cli("freeze", "bench", "--promote", branch, "--json")
        if result.returncode != 0:
            self.note(f"freeze bench failed ({result.stderr.strip()[-300:]}); --allow-unverified")
            result, seconds = debcache.cli(
                "freeze", "bench", "--promote", branch, "--allow-unverified", "--json"
            )
            if result.returncode != 0:
                self.note(f"freeze bench --allow-unverified failed: {result.stderr.strip()}")
                return None
        summary = json.loads(result.stdout)
        self.say(
            f"  froze {summary['files']} files into {summary['id'][:12]} and promoted {branch} "
            f"in {seconds:.2f} s"
        )
        return Pinned(debcache, branch)

    def wait_rows(self, debcache: Debcache, recording: str, count: int, deadline: float = 60):
        end = time.monotonic() + deadline
        while debcache.complete_rows(recording) < count:
            if time.monotonic() > end:
                self.note(f"only {debcache.complete_rows(recording)} of {count} rows committed")
                return
            time.sleep(0.1)

    def freeze_at_scale(self, debcache: Debcache) -> None:
        """A recording of freeze_files pool files (plus its indices) made through the server."""
        count = min(self.s.freeze_files, len(self.fx.fillers))
        recorder = Pinned(debcache, "x")
        recorder.prefix = "/record/f10k/debian"
        indices = [p for p in self.fx.dists if p.endswith(("InRelease", "amd64/Packages.xz"))]
        first = asyncio.run(fetch_parallel(recorder, indices, self.fx, 1))
        started = time.perf_counter()
        stats = asyncio.run(fetch_parallel(recorder, self.fx.fillers[:count], self.fx, 32))
        seconds = time.perf_counter() - started
        self.wait_rows(debcache, "f10k", count + first.files, deadline=120)
        result, freeze_seconds = debcache.cli("freeze", "f10k", "--name", "f10k", "--json")
        if PROFILER.dir is not None:  # again, under py-spy (the timing above is without it)
            debcache.cli("freeze", "f10k", "--name", "f10k-again", profile="freeze")
        files = json.loads(result.stdout)["files"] if result.returncode == 0 else None
        record = {
            "recorded_files": stats.files,
            "record_failures": stats.failures,
            "record_seconds": round(seconds, 2),
            "cold_small_miss_req_s": round(stats.files / seconds, 1),
            "freeze_ok": result.returncode == 0,
            "manifest_files": files,
            "freeze_seconds": round(freeze_seconds, 2),
            "method": "rows written by the server: each file requested through /record/f10k/",
        }
        if result.returncode != 0:
            record["error"] = result.stderr.strip()[-500:]
        self.results["freeze"] = record
        self.say(f"  [freeze] {record}")

    def diff_at_scale(self) -> None:
        """Two manifests of diff_packages packages each, imported as lockfiles, then diffed."""
        from debcache.manifest import LOCKFILE_FORMAT, Entry, manifest_id
        from debcache.store import FileStore

        directory = self.work / "diff"
        directory.mkdir()
        data = directory / "data"
        config = directory / "debcache.toml"
        config.write_text(
            f'[server]\nlisten = ["127.0.0.1:1"]\ndata_dir = "{data}"\n\n'
            f'[upstreams.debian]\nurls = ["{self.nginx.url()}"]\n'
            f'keyring = "{self.fx.keyring}"\n'
        )
        # Every pool entry shares one blob: diff compares packages, never bytes, and an
        # import must not fetch 60,000 files. The entries are as freeze writes them.
        sha256, _ = FileStore(data).create_directories().put(b"!<arch>\nbenchmark blob\n")
        n = self.s.diff_packages
        rng = random.Random(5)
        changed = set(rng.sample(range(n), n // 100))
        removed = set(rng.sample(range(n), n // 200)) - changed

        def entries(side: str) -> list[Entry]:
            rows = []
            for number in range(n):
                if side == "b" and number in removed:
                    continue
                name = f"pkg{number:05d}"
                version = f"1.{number % 97}-1"
                if side == "b" and number in changed:
                    version += "+deb12u1"
                rows.append(
                    Entry(
                        "debian",
                        f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb",
                        sha256,
                        23,
                        name,
                        version,
                        "amd64",
                        SUITE,
                    )
                )
            if side == "b":
                for number in range(n // 200):
                    name = f"newpkg{number:04d}"
                    rows.append(
                        Entry(
                            "debian",
                            f"pool/main/n/{name}/{name}_1.0-1_amd64.deb",
                            sha256,
                            23,
                            name,
                            "1.0-1",
                            "amd64",
                            SUITE,
                        )
                    )
            return rows

        ids = []
        import_seconds = []
        for side, date in (
            ("a", "Sat, 10 Jun 2023 08:53:51 UTC"),
            ("b", "Sat, 07 Oct 2023 09:12:44 UTC"),
        ):
            rows = entries(side)
            lockfile = {
                "format": LOCKFILE_FORMAT,
                "id": manifest_id(rows),
                "label": f"bench {side}",
                "created": time.time(),
                "recordings": [],
                "releases": {f"debian {SUITE}": {"date": date, "sha256": sha256}},
                "unverified": [],
                "entries": [r.__dict__ for r in rows],
            }
            path = directory / f"{side}.lock.json"
            path.write_text(json.dumps(lockfile))
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "debcache", "--config", str(config), "manifests",
                 "import", str(path)],
                env=debcache_env(), cwd=REPO, capture_output=True, text=True, check=False,
            )  # fmt: skip
            import_seconds.append(round(time.perf_counter() - started, 2))
            if result.returncode != 0:
                self.note(f"manifests import {side} failed: {result.stderr.strip()[-300:]}")
                self.results["diff"] = {"ok": False}
                return
            ids.append(lockfile["id"])
        if PROFILER.dir is not None:
            subprocess.run(
                PROFILER.wrap("diff", [sys.executable, "-m", "debcache", "--config", str(config),
                                        "diff", ids[0][:12], ids[1][:12]]),
                env=debcache_env(), cwd=REPO, capture_output=True, check=False,
            )  # fmt: skip
        timings = {}
        for label, extra in (("text", []), ("json", ["--json"])):
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "debcache", "--config", str(config), "diff",
                 ids[0][:12], ids[1][:12], *extra],
                env=debcache_env(), cwd=REPO, capture_output=True, text=True, check=False,
            )  # fmt: skip
            timings[label] = round(time.perf_counter() - started, 2)
            if result.returncode != 0:
                self.note(f"diff failed: {result.stderr.strip()[-300:]}")
        lines = result.stdout.count("\n")
        startup = subprocess.run(
            [sys.executable, "-c", "import debcache.cli"],
            env=debcache_env(), cwd=REPO, capture_output=True, check=False,
        )  # fmt: skip
        del startup
        record = {
            "packages_each": n,
            "changed": len(changed),
            "removed": len(removed),
            "added": n // 200,
            "import_seconds": import_seconds,
            "diff_seconds": timings["text"],
            "diff_json_seconds": timings["json"],
            "json_lines": lines,
            "method": "two lockfiles imported (`debcache manifests import`), then `debcache diff`",
        }
        self.results["diff"] = record
        self.say(f"  [diff] {record}")

    # --- the run ---

    def run(self) -> None:
        s = self.s
        self.say(f"building the fixture archive ({s.mode})")
        started = time.perf_counter()
        self.fx = build_fixture(self.work, s)
        fx = self.fx
        packages_size = fx.path(f"dists/{SUITE}/main/binary-amd64/Packages").stat().st_size
        self.results["fixture"] = {
            "pool_files": len(fx.pool),
            "pool_MB": round(fx.total(fx.pool) / MB, 1),
            "pool_10k_200k": sum(10_000 <= fx.size[p] < 200_000 for p in fx.pool),
            "pool_200k_1m": sum(200_000 <= fx.size[p] < MB for p in fx.pool),
            "pool_over_1m": sum(fx.size[p] >= MB for p in fx.pool),
            "pool_largest_MB": round(max(fx.size[p] for p in fx.pool) / MB, 1),
            "filler_packages": len(fx.fillers),
            "packages_index_MB": round(packages_size / MB, 2),
            "dists_files": len(fx.dists),
            "by_hash_files": len(fx.by_hash),
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        self.say(f"  {self.results['fixture']}")
        self.nginx = Nginx(self.work, fx.root)
        self.nginx.start()
        self.relay = Relay(self.work, self.nginx)
        self.relay.start()
        nginx = NginxDirect(self.nginx)
        direct_limited = NginxDirect(self.nginx)
        direct_limited.name = "direct"
        direct_limited.port = self.relay.ports["direct-limited"]

        self.say("nginx serving the files directly (the limit)")
        self.cold(direct_limited, None)
        self.warm(nginx)
        self.small(nginx)
        self.apt(nginx)

        self.say("debcache")
        debcache = Debcache(self.work, self.relay.url("debcache"), fx.keyring)
        upstream = AccessLog(self.nginx.log("debcache"))
        for clients in (16, 64):
            debcache.start()
            self.herd(debcache, clients, upstream)
            debcache.stop()
        debcache.start()
        self.cold(debcache, upstream)
        self.warm(debcache)
        self.small(debcache)
        self.apt(debcache)
        self.rss(debcache)
        pinned = self.record_and_pin(debcache, "b1")
        if pinned:
            self.warm(pinned)
            self.apt(pinned)
        self.freeze_at_scale(debcache)
        debcache.stop()

        peers = {"apt-cacher-ng": AptCacherNg, "approx": Approx}
        for name, kind in peers.items():
            if self.peer_status.get(name):
                continue
            self.say(name)
            peer = kind(self.work, self.relay.url(name))
            upstream = AccessLog(self.nginx.log(name))
            try:
                for clients in (16, 64):
                    peer.start()
                    self.herd(peer, clients, upstream)
                    peer.stop()
                peer.start()
                self.cold(peer, upstream)
                self.warm(peer)
                self.small(peer)
                self.apt(peer)
                if self.s.peer_rss:
                    self.rss(peer)
            except (RuntimeError, TimeoutError, OSError) as exc:
                self.results["skipped"][name] = f"failed while running: {exc}"
                self.say(f"  {name} failed: {exc}")
            finally:
                peer.stop()

        self.say("debcache diff of two manifests")
        self.diff_at_scale()


# --- summary: ratios and targets ------------------------------------------------------

PEERS = ("apt-cacher-ng", "approx")


def add_ratios(results: dict) -> None:
    """Each throughput figure's ratio to nginx and to the best peer at the same point."""
    for table, key, measure in (
        ("warm", ("concurrency",), "MB_s"),
        ("small", ("kind", "concurrency"), "req_s"),
    ):
        rows = results[table]
        for row in rows:
            same = [r for r in rows if all(r[k] == row[k] for k in key)]
            base = next((r[measure] for r in same if r["system"] == "nginx"), None)
            peers = [r[measure] for r in same if r["system"] in PEERS and not r["errors"]]
            row["x_nginx"] = round(row[measure] / base, 3) if base else None
            row["x_best_peer"] = round(row[measure] / max(peers), 3) if peers else None
    cold = results["cold"]
    direct = next((r["seconds"] for r in cold if r["system"] == "direct"), None)
    for row in cold:
        row["x_direct"] = round(row["seconds"] / direct, 3) if direct else None


def evaluate_targets(results: dict) -> list[dict]:
    targets = []

    def target(name: str, met: bool | None, figure: str) -> None:
        targets.append({"target": name, "met": met, "figure": figure})

    warm = results["warm"]
    for connections in (16, 64):
        row = next(
            (r for r in warm if r["system"] == "debcache" and r["concurrency"] == connections), None
        )
        if row:
            ahead = row["x_best_peer"] is None or row["x_best_peer"] > 1
            target(
                f"warm c={connections} >= 0.90x nginx and ahead of the peers",
                row["x_nginx"] >= 0.90 and ahead and not row["errors"],
                f"{row['x_nginx']}x nginx, {row['x_best_peer']}x best peer",
            )
    cold = next((r for r in results["cold"] if r["system"] == "debcache"), None)
    if cold:
        target("cold <= 1.05x direct", cold["x_direct"] <= 1.05, f"{cold['x_direct']}x direct")
    for row in results["herd"]:
        if row["system"] == "debcache":
            ok = row["upstream_per_file"] == 1.0 and not row["failures"]
            target(
                f"herd {row['clients']} clients: 1.00 upstream request per file",
                ok,
                f"{row['upstream_per_file']} per file, failures {row['failures'] or 'none'}",
            )
    for row in results["small"]:
        if row["system"] == "debcache":
            acng = next(
                (
                    r
                    for r in results["small"]
                    if r["system"] == "apt-cacher-ng"
                    and r["kind"] == row["kind"]
                    and r["concurrency"] == row["concurrency"]
                ),
                None,
            )
            target(
                f"small files ({row['kind']}, c={row['concurrency']}) ahead of apt-cacher-ng",
                None if acng is None else row["ok_req_s"] > acng["ok_req_s"],
                f"{row['ok_req_s']} ok req/s vs {acng['ok_req_s'] if acng else 'n/a'}"
                + (f" ({acng['errors']} errors)" if acng and acng["errors"] else ""),
            )
    rss = next((r for r in results["rss"] if r["system"] == "debcache"), None)
    if rss:
        target(
            "peak RSS <= 200 MB at c=64",
            rss["peak_rss_mb"] <= 200 and rss["vmhwm_mb"] <= 200,
            f"peak {rss['peak_rss_mb']} MB (VmHWM {rss['vmhwm_mb']} MB), "
            f"{sum(rss['MB_pulled_each'])} MB pulled in {rss['runs']} runs",
        )
        target(
            "no RSS growth across repeated runs",
            rss["growth_run2_to_last_mb"] <= 5,
            f"RSS after each run {rss['rss_after_each_mb']} MB",
        )
    freeze = results["freeze"]
    if freeze:
        target(
            f"freeze of {freeze['recorded_files']} files <= 5 s",
            freeze["freeze_ok"] and freeze["freeze_seconds"] <= 5,
            f"{freeze['freeze_seconds']} s",
        )
    diff = results["diff"]
    if diff.get("diff_seconds") is not None:
        target(
            f"diff of two {diff['packages_each']}-package manifests <= 2 s",
            diff["diff_seconds"] <= 2,
            f"{diff['diff_seconds']} s (--json {diff['diff_json_seconds']} s)",
        )
    return targets


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    if not rows:
        return
    print(f"\n{title}")
    cells = [columns] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def print_summary(results: dict) -> None:
    print_table(
        "(1) warm throughput, all pool files (wrk)",
        results["warm"],
        ["system", "concurrency", "MB_s", "req_s", "x_nginx", "x_best_peer", "errors",
         "client_cpu", "server_cpu", "latency_p99_ms"],
    )  # fmt: skip
    print_table(
        "(2) cold transfer through the rate-limited upstream (1 client)",
        results["cold"],
        ["system", "files", "MB", "seconds", "x_direct", "upstream_requests", "failures"],
    )
    print_table(
        "(3) herd: upstream requests per unique file",
        results["herd"],
        ["system", "clients", "files", "seconds", "upstream_per_file", "upstream_200_per_file",
         "pool_per_file", "volatile_per_file", "volatile_max", "bodies_ok", "bodies_expected",
         "failures"],
    )  # fmt: skip
    print_table(
        "(4) small-file request rate (wrk)",
        results["small"],
        ["system", "kind", "concurrency", "req_s", "MB_s", "x_nginx", "x_best_peer", "errors",
         "client_cpu", "server_cpu"],
    )  # fmt: skip
    print_table(
        "(5) apt-get update + install --download-only",
        results["apt"],
        ["system", "ok", "update_s", "download_s", "total_s", "debs", "MB"],
    )
    print_table(
        "(6) server RSS across repeated c=64 runs",
        results["rss"],
        ["system", "runs", "MB_pulled_each", "peak_rss_mb", "vmhwm_mb", "rss_after_each_mb"],
    )
    if results["freeze"]:
        print(f"\n(7) freeze: {results['freeze']}")
    if results["diff"]:
        print(f"(7) diff:   {results['diff']}")
    print("\ntargets (issue 7)")
    for t in results["targets"]:
        state = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        print(f"  {state} {t['target']}: {t['figure']}")
    for name, why in results["skipped"].items():
        print(f"  skipped {name}: {why}")


def machine() -> dict:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "?")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def version(*command: str) -> str:
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError:
            return "-"
        return (result.stdout + result.stderr).strip().splitlines()[0] if result else "-"

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": version("nginx", "-v"),
        "wrk": version("wrk", "-v"),
    }


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return result.stdout.strip()


def main() -> None:
    if sys.argv[1:2] == ["--relay"]:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(relay_main(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~30 MB archive, short runs (<2 min)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--no-peers", action="store_true", help="skip apt-cacher-ng and approx")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy flame graphs of debcache's phases"
    )
    args = parser.parse_args()
    # nginx and the peers live in sbin, which a non-login root shell may lack.
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    global PROFILER
    PROFILER = Profiler(args.profile)
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    if os.geteuid() != 0:
        sys.exit("run.py: run as root (it installs nginx and wrk, and runs apt-get)")
    peers = ensure_tools(not args.no_peers)
    work = Path(tempfile.mkdtemp(prefix="debcache-bench-"))
    bench = Bench(settings, work, peers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        bench.run()
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    results = bench.results
    add_ratios(results)
    results["targets"] = evaluate_targets(results)
    results["meta"] = {
        "command": " ".join(["python3", "benchmarks/run.py", *sys.argv[1:]]),
        "mode": settings.mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": settings.__dict__,
        "rate_limit_bytes_per_s_per_connection": RATE_LIMIT,
        "runtime_seconds": round(time.perf_counter() - started, 1),
        "debcache_commit": git("rev-parse", "--short", "HEAD"),
        "debcache_uncommitted": git("status", "--short", "debcache/").splitlines(),
        "profiles": str(args.profile) if args.profile else None,
    }
    print_summary(results)
    print(f"\nruntime {results['meta']['runtime_seconds']} s ({settings.mode})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
