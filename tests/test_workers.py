"""User story: `debcache serve` runs worker processes that act as one server.

The real `debcache serve` with its supervisor, its fetcher and its workers: one
upstream download per file across all of them, the same state seen by each, every
fetch-log row written once, restarts (SIGHUP, a socket-activated stop/start) that
refuse no connection, and no process left behind when the supervisor is killed.
Properties only; the speed is the benchmark's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from archive_fixture import Archive
from click.testing import CliRunner
from fake_mirror import FakeMirror, Fault
from http_client import get
from processes import (
    free_port,
    serve_command,
    server_processes,
    wait_healthy,
    wait_until,
)

from debcache.cli import cli
from debcache.config import load_config

INRELEASE = "dists/bookworm/InRelease"


class Served:
    """A `debcache serve` subprocess with its configuration file and data dir."""

    def __init__(self, tmp_path: Path, mirror: FakeMirror, archive: Archive, workers: int) -> None:
        self.port, self.data = free_port(), tmp_path / "data"
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "debcache.toml"
        self.log = tmp_path / "serve.log"
        self.mirror, self.archive, self.workers = mirror, archive, workers
        self.write_config()
        self.process: subprocess.Popen | None = None

    def write_config(self, extra: str = "") -> None:
        self.config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{self.port}"]\ndata_dir = "{self.data}"\n'
            f"workers = {self.workers}\n"
            f'[upstreams.debian]\nurls = ["{self.mirror.url}/debian"]\n'
            f'keyring = "{self.archive.key.keyring}"\n{extra}'
        )

    def start(self, **popen_options) -> Served:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                serve_command(self.config), stderr=log, start_new_session=True, **popen_options
            )
        wait_healthy(self.process, self.port)
        self.wait_serving(1)
        return self

    def wait_serving(self, times: int) -> None:
        """Until the supervisor has said `times` times that every process serves."""
        log = lambda: self.log.read_text().count("debcache.supervisor INFO serving")  # noqa: E731
        wait_until(lambda: log() >= times, "the supervisor to say it serves")

    def expected_children(self) -> int:
        return 1 if self.workers == 1 else self.workers + 1

    def children(self) -> dict[int, str]:
        assert self.process is not None
        return children_of(self.process.pid)

    def role_pids(self, role: str) -> list[int]:
        return [pid for pid, name in self.children().items() if name == role]

    def stop(self) -> None:
        """SIGTERM and wait; then SIGKILL whatever of its session is left (a child of a
        supervisor the test killed, say)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    def rows(self, recording: str) -> int:
        with sqlite3.connect(self.data / "debcache.db") as db:
            query = "SELECT COUNT(*) FROM fetches WHERE recording = ?"
            return db.execute(query, (recording,)).fetchone()[0]


@pytest.fixture
def served(tmp_path: Path, mirror: FakeMirror, archive: Archive):
    servers: list[Served] = []

    def start(workers: int = 2) -> Served:
        servers.append(Served(tmp_path, mirror, archive, workers))  # stopped even if it fails
        return servers[-1].start()

    yield start
    for server in servers:
        server.stop()


def children_of(parent: int) -> dict[int, str]:
    """pid → role of the server processes whose parent is `parent` (from /proc)."""
    return {pid: role for pid, role in server_processes(parent).items() if pid != parent}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie has exited; only its parent's wait() removes it.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def burst(url: str, target: str, clients: int) -> list:
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda _: get(url, target), range(clients)))


# --- one download per file, whichever worker a client reaches ------------------------


@pytest.mark.parametrize("clients", [16, 64])
def test_a_burst_over_all_workers_downloads_each_file_once(
    served, mirror: FakeMirror, archive: Archive, clients: int
) -> None:
    server = served(workers=2)
    bigpkg = archive.pool_path("bigpkg")
    for path in (bigpkg, INRELEASE):  # slow, so that the whole burst meets the download
        mirror.set_fault(f"/debian/{path}", Fault.slow(chunk=65536, delay=0.02, times=1))
        replies = burst(server.url, f"/debian/{path}", clients)
        assert [r.status for r in replies] == [200] * clients
        assert {r.body for r in replies} == {archive.read(path)}
        assert mirror.count(f"/debian/{path}") == 1
    # Committed once, a hit in every worker.
    replies = burst(server.url, f"/debian/{bigpkg}", clients)
    assert {r.header("X-Debcache") for r in replies} == {"hit"}
    assert mirror.count(f"/debian/{bigpkg}") == 1


def test_workers_serve_what_the_store_holds_without_the_fetcher(
    tmp_path: Path, mirror: FakeMirror, archive: Archive
) -> None:
    """A stored pool file, and an index the fetcher fetched or revalidated within the
    upstream's coalesce_window, are the workers' to serve: they answer with the
    fetcher stopped (SIGSTOP). A file they may not serve waits for the fetcher."""
    server = Served(tmp_path, mirror, archive, workers=2)
    server.write_config("coalesce_window = 60\n")
    server.start()
    try:
        hello = archive.pool_path("hello")
        for path in (INRELEASE, hello):
            assert get(server.url, f"/debian/{path}").status == 200
        with sqlite3.connect(server.data / "debcache.db") as db:
            stored = lambda: db.execute("SELECT COUNT(*) FROM cached").fetchone()[0] == 2  # noqa: E731
            wait_until(stored, "the fetcher to store both files")
        [fetcher] = server.role_pids("fetcher")
        os.kill(fetcher, signal.SIGSTOP)
        try:
            for path in (INRELEASE, hello) * 4:
                reply = get(server.url, f"/debian/{path}", timeout=30)
                assert (reply.status, reply.body) == (200, archive.read(path))
                assert reply.header("X-Debcache") == "hit"
        finally:
            os.kill(fetcher, signal.SIGCONT)
        assert mirror.count(f"/debian/{INRELEASE}") == 1
    finally:
        server.stop()


def test_a_killed_fetcher_fails_its_transfers_and_the_next_request_downloads_again(
    served, mirror: FakeMirror, archive: Archive
) -> None:
    server = served(workers=2)
    bigpkg = archive.pool_path("bigpkg")
    body = archive.read(bigpkg)
    mirror.set_fault(f"/debian/{bigpkg}", Fault.slow(chunk=16384, delay=0.05, times=1))
    client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    client.sendall(f"GET /debian/{bigpkg} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = client.recv(65536)
    assert received.startswith(b"HTTP/1.1 200")
    [fetcher] = server.role_pids("fetcher")
    os.kill(fetcher, signal.SIGKILL)
    while chunk := client.recv(65536):
        received += chunk
    client.close()
    head, _, got = received.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(body) in head
    assert len(got) < len(body)  # a failed transfer, never a complete-looking one
    assert not (server.data / "blobs" / "sha256" / hashlib.sha256(body).hexdigest()[:2]).exists()
    wait_until(lambda: server.role_pids("fetcher") not in ([], [fetcher]), "a new fetcher")
    reply = get(server.url, f"/debian/{bigpkg}")
    assert (reply.status, reply.body, reply.header("X-Debcache")) == (200, body, "miss")
    assert mirror.count(f"/debian/{bigpkg}") == 2


# --- one state ------------------------------------------------------------------------


def test_every_request_over_all_workers_gets_one_fetch_log_row(
    served, mirror: FakeMirror, archive: Archive
) -> None:
    server = served(workers=2)
    paths = [INRELEASE, archive.pool_path("hello"), archive.pool_path("bigpkg"), "pool/none.deb"]
    sent = 0
    for _ in range(5):  # misses, then hits; a 404 each round
        replies = [r for path in paths for r in burst(server.url, f"/record/r1/debian/{path}", 8)]
        sent += len(replies)
        assert sorted({r.status for r in replies}) == [200, 404]
    # A client cannot pass itself off as another through the worker's relay header.
    spoofed = {"x-debcache-client": "203.0.113.9"}
    assert get(server.url, f"/record/r1/debian/{INRELEASE}", headers=spoofed).status == 200
    sent += 1
    wait_until(lambda: server.rows("r1") >= sent, lambda: f"{sent} rows, not {server.rows('r1')}")
    assert server.rows("r1") == sent
    with sqlite3.connect(server.data / "debcache.db") as db:
        clients = {row[0] for row in db.execute("SELECT DISTINCT client FROM fetches")}
    assert clients == {"127.0.0.1"}


def test_a_promote_or_rollback_is_seen_by_every_worker(
    served, mirror: FakeMirror, archive: Archive
) -> None:
    server = served(workers=2)
    hello = archive.pool_path("hello")  # in the second manifest only
    assert get(server.url, f"/record/first/debian/{INRELEASE}").status == 200
    for path in (INRELEASE, "dists/bookworm/main/binary-amd64/Packages.xz", hello):
        assert get(server.url, f"/record/second/debian/{path}").status == 200
    wait_until(lambda: server.rows("first") == 1 and server.rows("second") == 3, "the rows")
    first = json.loads(server.cli("freeze", "first", "--json"))["id"]
    second = json.loads(server.cli("freeze", "second", "--json"))["id"]

    def pinned_manifests() -> set[str | None]:
        """The manifest each of a burst of requests (over all workers) was served from."""
        replies = burst(server.url, f"/pin/b1/debian/{INRELEASE}", 16)
        return {r.header("X-Debcache-Manifest") for r in replies}

    server.cli("promote", "b1", first[:12])
    assert pinned_manifests() == {first}
    server.cli("promote", "b1", second[:12])
    assert pinned_manifests() == {second}
    server.cli("rollback", "b1")
    assert pinned_manifests() == {first}


def test_the_metrics_add_up_every_process(served, archive: Archive) -> None:
    server = served(workers=2)
    hello = archive.pool_path("hello")
    assert get(server.url, f"/debian/{hello}").status == 200
    burst(server.url, f"/debian/{hello}", 20)
    metrics = get(server.url, "/_/metrics").body.decode()
    assert 'debcache_requests_total{source="hit",status="200"} 20.0' in metrics
    assert 'debcache_requests_total{source="miss",status="200"} 1.0' in metrics


# --- restarts no client notices --------------------------------------------------------


class Fetching:
    """A client fetching in a loop (a new connection each time) until stopped."""

    def __init__(self, url: str, targets: dict[str, bytes]) -> None:
        self.url, self.targets = url, targets
        self.done, self.problems, self.count = threading.Event(), [], 0
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            for target, body in self.targets.items():
                try:
                    reply = get(self.url, target, timeout=30)
                except OSError as exc:
                    self.problems.append(f"{target}: {exc!r} at {time.time():.3f}")
                    continue
                if (reply.status, reply.body, reply.broken) != (200, body, None):
                    self.problems.append(f"{target}: {reply.status} {reply.broken}")
                self.count += 1

    def stop(self) -> list[str]:
        self.done.set()
        self.thread.join()
        return self.problems


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_loads_new_configuration_and_refuses_no_connection(
    served, mirror: FakeMirror, archive: Archive, workers: int
) -> None:
    server = served(workers=workers)
    hello, inrelease = archive.pool_path("hello"), INRELEASE
    targets = {f"/debian/{p}": archive.read(p) for p in (hello, inrelease)}
    for target in targets:
        assert get(server.url, target).status == 200
    before = set(server.children())
    fetching = Fetching(server.url, targets)
    wait_until(lambda: fetching.count >= 20, "requests before the reload")
    server.write_config(f'[upstreams.second]\nurls = ["{mirror.url}/debian"]\n')
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGHUP)
    wait_until(lambda: all(gone(pid) for pid in before), "the old processes to stop")
    wait_until(lambda: len(server.children()) == server.expected_children(), "the new ones")
    seen = fetching.count
    wait_until(lambda: fetching.count >= seen + 20, "requests after the reload")
    assert fetching.stop() == []
    assert get(server.url, f"/second/{inrelease}").status == 200  # the new configuration


def test_a_broken_configuration_on_sighup_keeps_the_running_server(
    served, archive: Archive
) -> None:
    server = served(workers=2)
    before = set(server.children())
    server.config.write_text(server.config.read_text() + "[server.nonsense]\n")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGHUP)
    wait_until(lambda: "reload failed" in server.log.read_text(), "the reload to fail")
    assert set(server.children()) == before
    assert get(server.url, f"/debian/{INRELEASE}").status == 200


class Notifications:
    """A NOTIFY_SOCKET as systemd's: the datagrams `debcache serve` sends."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(60)
        self.received: list[str] = []

    def wait_for(self, state: str) -> None:
        while state not in self.received:
            self.received += self.sock.recv(4096).decode().split("\n")


def socket_activated(
    server: Served, listener: socket.socket, notify: Notifications
) -> subprocess.Popen:
    """`debcache serve` as systemd starts a socket-activated service: fd 3, LISTEN_*."""
    command = " ".join(f"'{a}'" for a in serve_command(server.config))
    env = {**os.environ, "LISTEN_FDS": "1", "NOTIFY_SOCKET": notify.path}
    with open(server.log, "ab") as log:
        # The socket arrives as stdin and becomes fd 3 in the shell that execs serve.
        return subprocess.Popen(
            ["sh", "-c", f"LISTEN_PID=$$ exec {command} 3<&0 </dev/null"],
            env=env,
            stdin=listener.fileno(),
            stderr=log,
        )


def test_a_socket_activated_stop_and_start_refuses_no_connection(
    tmp_path: Path, mirror: FakeMirror, archive: Archive
) -> None:
    server = Served(tmp_path, mirror, archive, workers=2)
    listener = socket.create_server(("127.0.0.1", server.port))  # systemd's, kept throughout
    notify = Notifications(tmp_path)
    process = socket_activated(server, listener, notify)
    try:
        notify.wait_for("READY=1")
        wait_healthy(process, server.port)
        targets = {f"/debian/{INRELEASE}": archive.read(INRELEASE)}
        fetching = Fetching(server.url, targets)
        wait_until(lambda: fetching.count >= 10, "requests before the restart")
        notify.received.clear()
        os.kill(process.pid, signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        process.send_signal(signal.SIGTERM)  # systemctl restart: stop...
        notify.wait_for("STOPPING=1")
        assert process.wait(timeout=60) == 0
        process = socket_activated(server, listener, notify)  # ...and start
        notify.wait_for("READY=1")
        seen = fetching.count
        wait_until(lambda: fetching.count >= seen + 10, "requests after the restart")
        assert fetching.stop() == []
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        listener.close()


# --- processes ---------------------------------------------------------------------


def test_a_killed_supervisor_leaves_no_process_on_the_port(served) -> None:
    server = served(workers=2)
    children = list(server.children())
    server.process.kill()
    server.process.wait()
    wait_until(lambda: all(gone(pid) for pid in children), "the children to exit")
    with socket.create_server(("127.0.0.1", server.port)):
        pass  # the port is free


def test_a_worker_that_keeps_dying_stops_the_server_with_one_error(served) -> None:
    server = served(workers=2)
    killed: set[int] = set()

    def kill_a_worker() -> bool:
        if server.process.poll() is not None:
            return True
        for pid in set(server.role_pids("worker")) - killed:
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
        return False

    wait_until(kill_a_worker, "the server to give up", deadline=60)
    assert server.process.wait() == 1
    last = server.log.read_text().strip().splitlines()[-1]
    assert last.startswith("Error: Worker ") and "exited 5 times within 60 s" in last


@pytest.mark.parametrize("value", ["0", "-1", '"2"', "1.5", "true"])
def test_a_bad_workers_setting_is_one_line_naming_it(tmp_path: Path, value: str) -> None:
    config = tmp_path / "debcache.toml"
    config.write_text(
        f"[server]\nworkers = {value}\n"
        '[upstreams.debian]\nurls = ["http://mirror.example.org/debian"]\n'
    )
    result = subprocess.run(serve_command(config), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "server.workers: expected a whole number" in (
        result.stderr
    )
    config.write_text('[upstreams.debian]\nurls = ["http://mirror.example.org/debian"]\n')
    for bad in ("0", "two"):
        command = [*serve_command(config), "--workers", bad]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert result.stderr.startswith("Error: --workers: expected a whole number")


def test_workers_default_to_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    config = tmp_path / "debcache.toml"
    config.write_text('[upstreams.debian]\nurls = ["http://mirror.example.org/debian"]\n')
    assert load_config(config).worker_count == len(os.sched_getaffinity(0))
