"""User story: debcache stays correct and bounded under a sustained mixed load.

Many clients at once over the live, record and pin paths of a real `debcache serve`,
while a thread promotes, rolls back and garbage-collects through the command line.
Every body is checked against the fixture archive (sha256); a pinned body must be the
exact bytes of one of the two manifests the branch switches between. Afterwards: one
fetch-log row per recorded request, the server's open descriptors back to the
baseline, its peak resident set under a bound. Figures only, never a time.

Short form (the normal test run): 16 clients x 50 requests each, and on (up to 10 x that)
until 2 promote/rollback/gc cycles are done. Long form:
`DEBCACHE_SOAK_SECONDS=300 DEBCACHE_SOAK_CLIENTS=64 python3 -m pytest tests/test_soak.py -s`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from apt import AptRoot
from archive_fixture import Archive, point_release
from fake_mirror import FakeMirror
from processes import (
    free_port,
    server_open_fds,
    server_processes,
    server_status_kb,
    start_serve,
    wait_until,
)
from workflow import freeze_json, keyed_debcache_for, record_install

ROOT = Path(__file__).parent.parent
PACKAGES = ("hello", "tool++")
INRELEASE = "dists/bookworm/InRelease"
CLIENTS = int(os.environ.get("DEBCACHE_SOAK_CLIENTS", "16"))
REQUESTS_PER_CLIENT = 50  # the short form's bounded count
# The short form's clients go on past their count until the switcher has done its cycles,
# up to this many times the count: so the promotes and gc overlap the load.
OVERLAP_FACTOR = 10
SWITCH_CYCLES = 2  # promote + rollback + gc, in the short form
SOAK_SECONDS = float(os.environ.get("DEBCACHE_SOAK_SECONDS", "0"))  # > 0: the long form
RSS_BOUND_KB = 200 << 10
PREFIX = {
    "live": "/debian",
    "record": "/record/soak/debian",
    "pin": "/pin/b1/debian",
}  # the benchmarks' budget, 200 MB
FD_SLACK = 8  # descriptors each server process may hold beyond its warm baseline once idle


@dataclass
class Tally:
    """What the clients saw; lists and ints only touched under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    recorded: int = 0
    wrong: list[str] = field(default_factory=list)
    peak_rss_kb: int = 0
    manifests: dict[str, int] = field(default_factory=dict)  # pinned 200s by manifest id

    def add(self, route: str, problem: str | None, rss_kb: int, manifest: str | None) -> None:
        with self.lock:
            self.requests += 1
            if route == "pin" and manifest:
                self.manifests[manifest] = self.manifests.get(manifest, 0) + 1
            self.recorded += route == "record" and problem is None
            self.peak_rss_kb = max(self.peak_rss_kb, rss_kb)
            if problem:
                self.wrong.append(problem)


def snapshot(archive: Archive) -> dict[str, str]:
    """sha256 of every file the archive holds now, by archive path."""
    return {path: archive.sha256(path) for path in archive.files()}


def check(route: str, path: str, status: int, body: bytes, old: dict, new: dict) -> str | None:
    """None if the reply is right for this route, else what was wrong."""
    digest = hashlib.sha256(body).hexdigest()
    if route == "pin":
        allowed = {old.get(path), new.get(path)} - {None}
        if status == 200 and digest in allowed:
            return None
        if status == 404 and not (path in old and path in new):
            return None  # a path only one manifest has, while the other one serves
        return f"pin {path}: {status}, sha256 {digest}"
    if status == 200 and digest == new[path]:
        return None
    return f"{route} {path}: {status}, sha256 {digest}"


def more(sent: int, until: float | None, switched: threading.Event) -> bool:
    """Long form: until the time is up. Short: the count, then on until the switcher is done."""
    if until:
        return time.monotonic() < until
    if sent < REQUESTS_PER_CLIENT:
        return True
    return not switched.is_set() and sent < REQUESTS_PER_CLIENT * OVERLAP_FACTOR


def client(
    port: int, pid: int, number: int, work: list[tuple[str, str]], old, new, tally, until, switched
) -> None:
    """One keep-alive connection; GETs its share of `work` until `more` says stop."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        sent = 0
        while more(sent, until, switched):
            route, path = work[(number + sent) % len(work)]
            connection.request("GET", f"{PREFIX[route]}/{path}")
            reply = connection.getresponse()
            body = reply.read()
            if reply.will_close:
                connection.close()
            problem = check(route, path, reply.status, body, old, new)
            manifest = reply.getheader("X-Debcache-Manifest")
            tally.add(route, problem, server_status_kb(pid, "VmRSS"), manifest)
            sent += 1
    finally:
        connection.close()


def cli(config: Path, *args: str) -> None:
    command = [sys.executable, "-m", "debcache", "--config", str(config), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"


def switch_and_collect(config: Path, new_id: str, until: float | None, cycles: list) -> None:
    """promote, rollback, gc of the whole live cache: SWITCH_CYCLES times, or until `until`."""
    while True:
        cli(config, "promote", "b1", new_id[:12])
        cli(config, "rollback", "b1")
        cli(config, "gc", "--max-size", "0")
        cycles.append(1)
        if (time.monotonic() >= until) if until else len(cycles) >= SWITCH_CYCLES:
            return


def test_a_mixed_soak_serves_exact_bytes_loses_no_row_and_does_not_grow(
    tmp_path: Path, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    setup = keyed_debcache_for(tmp_path, own_mirror, own_archive)
    try:
        record_install(setup, AptRoot(tmp_path / "a"), own_archive, own_mirror, "old", *PACKAGES)
        freeze_json(setup, "old", "--promote", "b1")
        old = snapshot(own_archive)
        point_release(own_archive)
        record_install(setup, AptRoot(tmp_path / "b"), own_archive, own_mirror, "new", *PACKAGES)
        new_id = freeze_json(setup, "new")["id"]
        new = snapshot(own_archive)
    finally:
        setup.stop()

    pool_new = [own_archive.pool_path(name) for name in (*PACKAGES, "libgreet1")]
    pool_both = sorted({p for p in old if p.startswith("pool/")} | set(pool_new))
    work = (
        [("live", INRELEASE)]
        + [("live", p) for p in pool_new]
        + [("record", p) for p in pool_new]
        + [("pin", INRELEASE)]
        + [("pin", p) for p in pool_both if p.rpartition("/")[2].split("_")[0] in PACKAGES]
    )
    port = free_port()
    config = setup.config_file
    config.write_text(
        config.read_text().replace("[server]\n", f'[server]\nlisten = ["127.0.0.1:{port}"]\n')
    )
    with open(tmp_path / "serve.log", "w") as log:
        server = start_serve(config, port, stderr=log, cwd=ROOT)
    try:
        tally = Tally()
        # Warm-up: one of each request, so lazily opened files count in the baseline.
        for route, path in work:
            warm = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            warm.request("GET", f"{PREFIX[route]}/{path}")
            reply = warm.getresponse()
            problem = check(route, path, reply.status, reply.read(), old, new)
            tally.add(route, problem, 0, None)
            warm.close()
        fds_before = server_open_fds(server.pid)

        switched, cycles = threading.Event(), []
        until = time.monotonic() + SOAK_SECONDS if SOAK_SECONDS > 0 else None
        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                switch_and_collect(config, new_id, until, cycles)
            except BaseException as exc:  # reported by the test below
                errors.append(exc)
            finally:
                switched.set()

        switcher = threading.Thread(target=guarded)
        switcher.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [
                pool.submit(client, port, server.pid, n, work, old, new, tally, until, switched)
                for n in range(CLIENTS)
            ]
            for future in futures:
                future.result()
        switcher.join(timeout=600)
        assert not switcher.is_alive() and not errors, errors

        rows = setup.wait_for_fetches(tally.recorded, "soak", deadline=120)
        slack = FD_SLACK * len(server_processes(server.pid))  # reader threads' connections
        fds_after = wait_until(
            lambda: (n := server_open_fds(server.pid)) <= fds_before + slack and n,
            lambda: f"fds back to {fds_before} + {slack} (now {server_open_fds(server.pid)})",
            deadline=120,
        )
        peak = server_status_kb(server.pid, "VmHWM")  # every process's peak, added up
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(
        f"soak: {tally.requests} requests ({CLIENTS} clients), {len(tally.wrong)} wrong, "
        f"{tally.recorded} recorded, {len(rows)} rows, fds {fds_before} -> {fds_after}, "
        f"peak RSS sampled {tally.peak_rss_kb} kB, VmHWM {peak} kB, {len(cycles)} switch cycles, "
        f"pinned 200s by manifest {tally.manifests}"
    )
    assert tally.wrong == [], tally.wrong[:10]
    assert len(rows) == tally.recorded
    assert peak < RSS_BOUND_KB
    assert cycles
