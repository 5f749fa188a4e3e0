"""The edge tier measured: nginx from `debcache edge-config` in front of `debcache serve`.

    python3 -m benchmarks.edge [--seconds 10] [--connections 32]

One `debcache serve` (a subprocess, as in production) pins branch b1 to a recorded
install of the fixture archive (tests/archive_fixture.py); an nginx edge runs the
generated configuration in front of it. It reports what README's "Scaling out" quotes:

- origin requests per file: CLIENTS clients fetch every file of the pin through the
  edge at once; the origin's fetch log says how many full answers (200) and
  revalidations (304) each file cost it;
- throughput: wrk over the pin's files, straight at debcache and through the edge,
  with each server's CPU (CPU seconds per wall second; this machine has 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from pathlib import Path

from apt import AptRoot
from archive_fixture import build_test_archive
from edge_nginx import EdgeNginx
from fake_mirror import FakeMirror
from processes import free_port, serve_command, start_serve, wait_until

from benchmarks.processes import tree_cpu
from benchmarks.wrk import Wrk
from debcache import db as queries

PACKAGES = ("hello", "tool++", "bigpkg")
CLIENTS = 32


class Served:
    """What Wrk measures: a port, a path prefix and the server's pid."""

    def __init__(self, name: str, port: int, pid: int) -> None:
        self.name, self.port, self.pid, self.prefix = name, port, pid, "/pin/b1/debian"


def start_origin(work: Path, mirror: FakeMirror, keyring: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = work / "debcache.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{work / "data"}"\n'
        f'[upstreams.debian]\nurls = ["{mirror.url}/debian"]\nkeyring = "{keyring}"\n'
    )
    log = open(work / "serve.log", "wb")  # noqa: SIM115 (open while the server runs)
    return start_serve(config, port, stdout=log, stderr=log), port


def pin_an_install(work: Path, origin: str, archive_keyring: Path) -> list[dict]:
    """Record PACKAGES through /record/run/, freeze it to b1; the manifest's entries."""
    apt = AptRoot(work / "apt")
    source = f"deb [signed-by={archive_keyring}] {origin}/record/run/debian bookworm main"
    apt.write_sources([source])
    assert apt.update().returncode == 0
    assert apt.download(*PACKAGES).returncode == 0
    wait_until(lambda: len(fetch_rows(work, "run")) >= 8, "the recording's rows")
    command = [*serve_command(work / "debcache.toml")[:-1]]
    frozen = subprocess.run(
        [*command, "freeze", "run", "--promote", "b1", "--json"], capture_output=True, check=True
    )
    manifest_id = json.loads(frozen.stdout)["id"]
    shown = subprocess.run(
        [*command, "manifests", "show", manifest_id, "--json"], capture_output=True, check=True
    )
    return json.loads(shown.stdout)["entries"]


def fetch_rows(work: Path, recording: str | None = None) -> list[dict]:
    """The origin's fetch log: the rows of `recording`, or the pinned rows."""
    database = queries.connect(work / "data" / "debcache.db")
    try:
        rows = queries.fetches(database, recording)
    finally:
        database.conn.close()
    return rows if recording else [row for row in rows if row["source"] == "pinned"]


def herd(edge: EdgeNginx, entries: list[dict]) -> list[str]:
    """CLIENTS clients fetch every file of the pin through the edge; what went wrong."""
    failures: list[str] = []

    def one_install() -> None:
        for entry in entries:
            url = f"{edge.url}/pin/b1/debian/{entry['path']}"
            with urllib.request.urlopen(url, timeout=60) as reply:
                if hashlib.sha256(reply.read()).hexdigest() != entry["sha256"]:
                    failures.append(entry["path"])

    clients = [threading.Thread(target=one_install) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's (default 32)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="debcache-edge-bench-") as directory:
        work = Path(directory)
        archive = build_test_archive(work / "www")
        with FakeMirror(archive.root) as mirror:
            origin, port = start_origin(work, mirror, archive.key.keyring)
            edge = None
            try:
                entries = pin_an_install(work, f"http://127.0.0.1:{port}", archive.key.keyring)
                edge = EdgeNginx(work / "edge", f"http://127.0.0.1:{port}").start()
                measure(work, edge, entries, origin, port, options)
            finally:
                if edge is not None:
                    edge.stop()
                origin.terminate()
                origin.wait(timeout=30)


def measure(
    work: Path,
    edge: EdgeNginx,
    entries: list[dict],
    origin: subprocess.Popen,
    port: int,
    options: argparse.Namespace,
) -> None:
    before = len(fetch_rows(work))
    failures = herd(edge, entries)
    passed_on = [r for r in edge.requests() if r["path"].startswith("/pin/") and r["origin"] != "-"]
    wait_until(lambda: len(fetch_rows(work)) >= before + len(passed_on), "the origin's rows")
    rows = fetch_rows(work)[before:]
    full = Counter(row["path"] for row in rows if row["status"] == 200)
    revalidated = Counter(row["path"] for row in rows if row["status"] == 304)
    cache = Counter(r["cache"] for r in edge.requests() if r["path"].startswith("/pin/"))
    print(f"herd: {CLIENTS} clients x {len(entries)} files through the edge, {len(failures)} bad")
    print(f"  origin full GETs per file: max {max(full.values())}, total {sum(full.values())}")
    print(f"  origin 304s: {sum(revalidated.values())}; edge answers: {dict(cache)}")
    wrk = Wrk(work)
    paths = [entry["path"] for entry in entries]
    assert edge.process is not None
    edge_pid = edge.process.pid
    for served in (Served("direct", port, origin.pid), Served("edge", edge.port, edge_pid)):
        rows_before, origin_cpu = len(fetch_rows(work)), tree_cpu(origin.pid)
        figures = wrk.run(served, paths, options.connections, options.seconds)
        origin_requests = dict(Counter(row["status"] for row in fetch_rows(work)[rows_before:]))
        origin_cpu = round((tree_cpu(origin.pid) - origin_cpu) / figures["seconds"], 2)
        print(
            f"wrk {served.name} c={options.connections} {options.seconds}s: "
            f"{figures['req_s']} req/s, {figures['MB_s']} MB/s, errors {figures['errors']}, "
            f"p99 {figures['latency_p99_ms']} ms, server CPU {figures['server_cpu']}; "
            f"origin answers by status: {origin_requests}, CPU {origin_cpu}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
