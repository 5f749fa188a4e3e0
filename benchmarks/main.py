"""The command: parse the options, install what is missing, run every workload in order
against every system, and report.

nginx first (the limit), then debcache (live, pinned, freeze, diff), then each peer
that could be installed; every server is stopped at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import report as summary
from benchmarks import systems
from benchmarks import workloads as load
from benchmarks.diff_scale import diff_at_scale
from benchmarks.fixture import build_fixture
from benchmarks.peers import PEERS, PeerCache
from benchmarks.processes import stop_all
from benchmarks.profiler import Profiler
from benchmarks.relay import Relay
from benchmarks.report import Report
from benchmarks.settings import FULL, MB, QUICK, RATE_LIMIT, SUITE, Settings
from benchmarks.systems import Debcache, NginxDirect
from benchmarks.tools import ensure_tools
from benchmarks.upstream import AccessLog, Nginx
from benchmarks.workloads import Bench
from benchmarks.wrk import Wrk

DESCRIPTION = (
    "Benchmark debcache beside nginx (the limit) and the Debian caches apt-cacher-ng and approx."
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="~30 MB archive, short runs (<2 min)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--no-peers", action="store_true", help="skip apt-cacher-ng and approx")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy flame graphs of debcache's phases"
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="debcache's worker processes (default: its own)"
    )
    return parser.parse_args()


def fixture_figures(bench: Bench, build_seconds: float) -> dict:
    """What the archive holds: pool sizes, fillers, the Packages index."""
    fx = bench.fx
    packages_size = fx.path(f"dists/{SUITE}/main/binary-amd64/Packages").stat().st_size
    return {
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
        "build_seconds": round(build_seconds, 1),
    }


def prepare(settings: Settings, work: Path, report: Report, profiler: Profiler) -> Bench:
    """Build the fixture and start nginx: what every workload needs."""
    report.say(f"building the fixture archive ({settings.mode})")
    started = time.perf_counter()
    fx = build_fixture(work, settings)
    nginx = Nginx(work, fx.root)
    bench = Bench(settings, work, fx, nginx, Wrk(work), report, profiler)
    report.results["fixture"] = fixture_figures(bench, time.perf_counter() - started)
    report.say(f"  {report.results['fixture']}")
    nginx.start()
    return bench


def measure_nginx(bench: Bench, relay: Relay) -> None:
    """The limit: nginx direct, and through the relay for the cold transfer."""
    bench.report.say("nginx serving the files directly (the limit)")
    direct = NginxDirect(bench.nginx, "direct", relay.ports["direct-limited"])
    load.cold(bench, direct, None)
    nginx = NginxDirect(bench.nginx)
    load.warm(bench, nginx)
    load.small(bench, nginx)
    load.apt(bench, nginx)


def measure_debcache(bench: Bench, relay: Relay) -> None:
    """debcache live (herds, cold, warm, small, apt, RSS), pinned, and freeze at scale."""
    bench.report.say("debcache")
    debcache = Debcache(bench.work, relay.url("debcache"), bench.fx.keyring, bench.profiler)
    upstream = AccessLog(bench.nginx.log("debcache"))
    herds(bench, debcache, upstream)
    debcache.start()
    measure_live(bench, debcache, upstream)
    load.rss(bench, debcache)
    pinned = load.record_and_pin(bench, debcache, "b1")
    if pinned:
        load.warm(bench, pinned)
        load.apt(bench, pinned)
    load.freeze_at_scale(bench, debcache)
    debcache.stop()


def herds(bench: Bench, cache: Debcache | PeerCache, upstream: AccessLog) -> None:
    """A herd of 16 and one of 64 clients, each against an empty cache."""
    for clients in (16, 64):
        cache.start()
        load.herd(bench, cache, clients, upstream)
        cache.stop()


def measure_live(bench: Bench, cache: Debcache | PeerCache, upstream: AccessLog) -> None:
    """Cold (on the empty cache just started), then warm, small files and apt."""
    load.cold(bench, cache, upstream)
    load.warm(bench, cache)
    load.small(bench, cache)
    load.apt(bench, cache)


def measure_peer(bench: Bench, relay: Relay, kind: type[PeerCache]) -> None:
    """The same workloads as debcache live; a peer that fails is skipped with the reason."""
    bench.report.say(kind.name)
    peer = kind(bench.work, relay.url(kind.name))
    upstream = AccessLog(bench.nginx.log(kind.name))
    try:
        herds(bench, peer, upstream)
        peer.start()
        measure_live(bench, peer, upstream)
        if bench.settings.peer_rss:
            load.rss(bench, peer)
    except (RuntimeError, TimeoutError, OSError) as exc:
        bench.report.skip(kind.name, exc)
    finally:
        peer.stop()


def run(bench: Bench, peer_status: dict[str, str | None]) -> None:
    """Every workload against every system, in the order the README gives."""
    relay = Relay(bench.work, bench.nginx)
    relay.start()
    measure_nginx(bench, relay)
    measure_debcache(bench, relay)
    for kind in PEERS:
        if not peer_status.get(kind.name):
            measure_peer(bench, relay, kind)
    bench.report.say("debcache diff of two manifests")
    diff_at_scale(bench)


def finish(report: Report, args: argparse.Namespace, settings: Settings, seconds: float) -> None:
    """Ratios, targets and where it ran; the summary, and the JSON with --json."""
    results = report.results
    summary.add_ratios(results)
    results["targets"] = summary.evaluate_targets(results)
    results["meta"] = {
        "command": " ".join(["python3", "benchmarks/run.py", *sys.argv[1:]]),
        "mode": settings.mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": summary.machine(),
        "settings": settings.__dict__,
        "rate_limit_bytes_per_s_per_connection": RATE_LIMIT,
        "runtime_seconds": round(seconds, 1),
        "debcache_commit": summary.git("rev-parse", "--short", "HEAD"),
        "debcache_uncommitted": summary.git("status", "--short", "debcache/").splitlines(),
        "profiles": str(args.profile) if args.profile else None,
        "debcache_workers": args.workers or "default",
    }
    summary.print_summary(results)
    print(f"\nruntime {results['meta']['runtime_seconds']} s ({settings.mode})")
    if args.json:
        summary.write_json(results, args.json)


def main() -> None:
    args = parse_arguments()
    # nginx and the peers live in sbin, which a non-login root shell may lack.
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    profiler = Profiler(args.profile)
    systems.DEBCACHE_WORKERS = args.workers
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    if os.geteuid() != 0:
        sys.exit("run.py: run as root (it installs nginx and wrk, and runs apt-get)")
    peers = ensure_tools(not args.no_peers)
    work = Path(tempfile.mkdtemp(prefix="debcache-bench-"))
    report = Report(peers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        run(prepare(settings, work, report, profiler), peers)
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    finish(report, args, settings, time.perf_counter() - started)
