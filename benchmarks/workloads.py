"""The workloads, one function each: warm, small files, cold, herd, apt, RSS, freeze.

debcache's own record-and-pin and freeze at scale are here; diff at scale, with the
lockfiles it imports, is in diff_scale.py.

Each takes the `Bench` (what every workload shares) and the system to measure, and
adds its figures to the report as it measures them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from apt import AptRoot
from processes import wait_until

from benchmarks.clients import fetch_parallel, fetch_sequentially, own_cpu
from benchmarks.fixture import Fixture
from benchmarks.processes import status_kb, tree_rss_mb
from benchmarks.profiler import Profiler
from benchmarks.report import Report
from benchmarks.settings import MB, META_PACKAGE, SUITE, Settings
from benchmarks.systems import Debcache, Pinned, System
from benchmarks.upstream import AccessLog, Nginx
from benchmarks.wrk import Wrk


@dataclass
class Bench:
    """What every workload uses: settings, the fixture and mirror, wrk, the report."""

    settings: Settings
    work: Path
    fx: Fixture
    nginx: Nginx
    wrk: Wrk
    report: Report
    profiler: Profiler

    def profiled(
        self, system: System, phase: str, wanted: bool = True
    ) -> contextlib.AbstractContextManager[None]:
        """py-spy on debcache's process during a phase, with --profile."""
        if wanted and system.profiled:
            return self.profiler.attach(f"{system.name}-{phase}", system.pid)
        return contextlib.nullcontext()

    def prefetch(self, system: System, paths: list[str], what: str) -> None:
        """Fetch every path once, 8 at a time, so the system has them; note failures."""
        stats = asyncio.run(fetch_parallel(system, paths, self.fx, 8))
        if stats.failures:
            self.report.note(f"{system.name}: {what} failures {stats.failures}")


def warm(bench: Bench, system: System, concurrencies: tuple[int, ...] = (1, 16, 64)) -> None:
    """wrk over every pool file, already fetched once, at each concurrency."""
    bench.prefetch(system, bench.fx.pool, "warm-up fetch")
    for connections in concurrencies:
        with bench.profiled(system, f"warm-c{connections}", connections == 64):
            record = bench.wrk.run(system, bench.fx.pool, connections, bench.settings.wrk_seconds)
        bench.report.row("warm", {"system": system.name, "concurrency": connections, **record})


def small_lists(fx: Fixture) -> dict[str, list[str]]:
    """The small-file sets: by-hash files, index files, pool files under 200 KB."""
    pool_small = [p for p in fx.pool if fx.size[p] < 200_000]
    index = [p for p in fx.dists if "/installer-" not in p]
    return {"by-hash": fx.by_hash, "index": index, "small-pool": pool_small}


def small(bench: Bench, system: System) -> None:
    """wrk over each small-file set, already fetched once, at each concurrency."""
    lists = small_lists(bench.fx)
    for kind in bench.settings.small_kinds:
        paths = lists[kind]
        bench.prefetch(system, paths, f"{kind} warm-up")
        for connections in bench.settings.small_concurrency:
            record = bench.wrk.run(system, paths, connections, bench.settings.wrk_seconds)
            bench.report.row(
                "small", {"system": system.name, "kind": kind, "concurrency": connections, **record}
            )


def cold(bench: Bench, system: System, upstream_log: AccessLog | None) -> None:
    """One client fetches indices, images and every pool file in order from an empty cache."""
    fx = bench.fx
    paths = [*fx.dists, *fx.pool]
    if upstream_log:
        upstream_log.mark()
    cpu0, started = own_cpu(), time.perf_counter()
    with bench.profiled(system, "cold"):
        stats = asyncio.run(fetch_sequentially(system, paths, fx, 1))
    wall = time.perf_counter() - started
    record = {
        "system": system.name,
        "files": len(paths),
        "MB": round(fx.total(paths) / MB, 1),
        "seconds": round(wall, 2),
        "MB_s": round(fx.total(paths) / wall / MB, 1),
        "failures": stats.failures,
        "client_cpu": round((own_cpu() - cpu0) / wall, 2),
    }
    if upstream_log:
        time.sleep(0.3)
        record["upstream_requests"] = len(upstream_log.since_mark())
    bench.report.row("cold", record)


def herd_set(fx: Fixture, budget: int) -> list[str]:
    """Indices and installer images first (as apt and d-i), then pool files to a budget."""
    pool, total = [], 0
    for path in fx.pool:
        if total + fx.size[path] > budget:
            continue
        pool.append(path)
        total += fx.size[path]
    return [*fx.dists, *pool]


def herd(bench: Bench, system: System, clients: int, upstream_log: AccessLog) -> None:
    """`clients` clients fetch the same cold set at once; upstream requests per file."""
    fx = bench.fx
    paths = herd_set(fx, bench.settings.herd_budget)
    upstream_log.mark()
    cpu0, started = own_cpu(), time.perf_counter()
    stats = asyncio.run(fetch_sequentially(system, paths, fx, clients))
    wall = time.perf_counter() - started
    time.sleep(0.5)  # downloads that clients left run to their end
    record = {
        "system": system.name,
        "clients": clients,
        "files": len(paths),
        "MB_per_client": round(fx.total(paths) / MB, 1),
        "seconds": round(wall, 2),
        **upstream_counts(paths, set(fx.volatile), upstream_log.since_mark()),
        "bodies_ok": stats.files,
        "bodies_expected": clients * len(paths),
        "failures": stats.failures,
        "failure_examples": stats.examples,
        "client_cpu": round((own_cpu() - cpu0) / wall, 2),
    }
    bench.report.row("herd", record)


def upstream_counts(
    paths: list[str], volatile: set[str], requests: list[tuple[str, str, int]]
) -> dict:
    """Upstream requests per file (all, whole 200s, pool, volatile) and requests for others."""
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

    return {
        "upstream_per_file": per_file(paths, counts),
        "upstream_200_per_file": per_file(paths, full),
        "pool_per_file": per_file(pool, counts),
        "pool_max": max((counts[p] for p in pool), default=0),
        "volatile_per_file": per_file(vol, counts),
        "volatile_max": max((counts[p] for p in vol), default=0),
        "other_upstream_requests": other,
    }


def apt(bench: Bench, system: System) -> None:
    """A real `apt-get update` and `apt-get install --download-only` of the meta package."""
    fx = bench.fx
    root = AptRoot(bench.work / f"apt-{system.name}-{len(bench.report.results['apt'])}")
    root.write_sources([f"deb [signed-by={fx.keyring}] {system.url('').rstrip('/')} {SUITE} main"])
    started = time.perf_counter()
    update = root.update(timeout=600)
    middle = time.perf_counter()
    download = root.download(META_PACKAGE, timeout=900) if update.returncode == 0 else None
    ended = time.perf_counter()
    debs = list(root.archives.glob("*.deb"))
    ok = update.returncode == 0 and download is not None and download.returncode == 0
    expected = len([p for p in fx.pool if p.endswith(".deb")])
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
    bench.report.row("apt", record)
    shutil.rmtree(root.directory, ignore_errors=True)


def rss(bench: Bench, system: System) -> None:
    """Repeated c=64 runs that pull rss_bytes each: peak and growth of the server's RSS."""
    s = bench.settings
    warm64 = [r for r in bench.report.rows("warm", system.name) if r["concurrency"] == 64]
    rate = warm64[-1]["MB_s"] if warm64 else 500
    seconds = round(min(max(s.rss_bytes / MB / max(rate, 1), s.wrk_seconds), 30))
    before = tree_rss_mb(system.pid)
    after_runs, pulled, peaks, pss_peaks = [], [], [], []
    for _ in range(s.rss_runs):
        record = bench.wrk.run(system, bench.fx.pool, 64, seconds)
        pulled.append(round(record["bytes"] / MB))
        peaks.append(record["server_rss_peak_mb"])
        pss_peaks.append(record["server_pss_peak_mb"])
        time.sleep(0.5)
        after_runs.append(round(tree_rss_mb(system.pid), 1))
    record = {
        "system": system.name,
        "runs": s.rss_runs,
        "seconds_each": round(seconds, 1),
        "MB_pulled_each": pulled,
        "rss_before_mb": round(before, 1),
        "rss_after_each_mb": after_runs,
        "peak_rss_mb": max(peaks),
        "peak_pss_mb": max(pss_peaks),
        "vmhwm_mb": round(status_kb(system.pid, "VmHWM") / 1024, 1),
        "growth_run2_to_last_mb": round(
            after_runs[-1] - after_runs[min(1, len(after_runs) - 1)], 1
        ),
    }
    bench.report.row("rss", record)


# --- debcache's own: recording, freeze, pinned -----------------------------------------


def wait_rows(
    bench: Bench, debcache: Debcache, recording: str, count: int, deadline: float = 60
) -> None:
    """Until the server committed `count` complete rows of a recording; a note if it didn't."""
    try:
        wait_until(
            lambda: debcache.complete_rows(recording) >= count,
            f"{count} rows of recording {recording}",
            deadline,
        )
    except TimeoutError:
        bench.report.note(f"only {debcache.complete_rows(recording)} of {count} rows committed")


def record_and_pin(bench: Bench, debcache: Debcache, branch: str) -> Pinned | None:
    """Record an install-like fetch of every file, freeze it and promote it to branch."""
    fx, report = bench.fx, bench.report
    recorder = Pinned(debcache, "/record/bench/debian")
    stats = asyncio.run(fetch_parallel(recorder, [*fx.dists, *fx.pool], fx, 8))
    if stats.failures:
        report.note(f"recording for the pinned branch: failures {stats.failures}")
    wait_rows(bench, debcache, "bench", stats.files)
    result, seconds = debcache.cli("freeze", "bench", "--promote", branch, "--json")
    if result.returncode != 0:
        report.note(f"freeze bench failed ({result.stderr.strip()[-300:]}); --allow-unverified")
        result, seconds = debcache.cli(
            "freeze", "bench", "--promote", branch, "--allow-unverified", "--json"
        )
        if result.returncode != 0:
            report.note(f"freeze bench --allow-unverified failed: {result.stderr.strip()}")
            return None
    summary = json.loads(result.stdout)
    report.say(
        f"  froze {summary['files']} files into {summary['id'][:12]} and promoted {branch} "
        f"in {seconds:.2f} s"
    )
    return Pinned(debcache, f"/pin/{branch}/debian")


def freeze_at_scale(bench: Bench, debcache: Debcache) -> None:
    """A recording of freeze_files pool files (plus its indices) made through the server."""
    fx = bench.fx
    count = min(bench.settings.freeze_files, len(fx.fillers))
    recorder = Pinned(debcache, "/record/f10k/debian")
    indices = [p for p in fx.dists if p.endswith(("InRelease", "amd64/Packages.xz"))]
    first = asyncio.run(fetch_parallel(recorder, indices, fx, 1))
    started = time.perf_counter()
    stats = asyncio.run(fetch_parallel(recorder, fx.fillers[:count], fx, 32))
    seconds = time.perf_counter() - started
    wait_rows(bench, debcache, "f10k", count + first.files, deadline=120)
    result, freeze_seconds = debcache.cli("freeze", "f10k", "--name", "f10k", "--json")
    if bench.profiler.dir is not None:  # again, under py-spy (the timing above is without it)
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
    bench.report.single("freeze", record)
