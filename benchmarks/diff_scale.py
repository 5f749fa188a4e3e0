"""The diff workload: two manifests of tens of thousands of packages, imported, then diffed.

The manifests are written as lockfiles (`debcache manifests import` reads them), so
no server is involved and nothing is fetched: every pool entry shares one blob, since
diff compares packages, never bytes. The entries are as freeze writes them.
"""

from __future__ import annotations

import json
import random
import time

from benchmarks.settings import SUITE
from benchmarks.systems import debcache_command, run_timed, write_config
from benchmarks.workloads import Bench
from debcache.lockfile import LOCKFILE_FORMAT
from debcache.manifest import Entry, manifest_id
from debcache.store import FileStore

RELEASE_DATES = {"a": "Sat, 10 Jun 2023 08:53:51 UTC", "b": "Sat, 07 Oct 2023 09:12:44 UTC"}


def diff_at_scale(bench: Bench) -> None:
    """Two manifests of diff_packages packages each, imported as lockfiles, then diffed."""
    directory = bench.work / "diff"
    directory.mkdir()
    data, config = directory / "data", directory / "debcache.toml"
    write_config(config, 1, data, bench.nginx.url(), bench.fx.keyring)
    sha256, _ = FileStore(data).create_directories().put(b"!<arch>\nbenchmark blob\n")
    n = bench.settings.diff_packages
    rng = random.Random(5)
    changed = set(rng.sample(range(n), n // 100))
    removed = set(rng.sample(range(n), n // 200)) - changed
    ids, import_seconds = [], []
    for side in ("a", "b"):
        lockfile = make_lockfile(side, sha256, n, changed, removed)
        path = directory / f"{side}.lock.json"
        path.write_text(json.dumps(lockfile))
        result, seconds = run_timed(debcache_command(config, "manifests", "import", str(path)))
        import_seconds.append(round(seconds, 2))
        if result.returncode != 0:
            bench.report.note(f"manifests import {side} failed: {result.stderr.strip()[-300:]}")
            bench.report.results["diff"] = {"ok": False}
            return
        ids.append(lockfile["id"])
    diff = debcache_command(config, "diff", ids[0][:12], ids[1][:12])
    if bench.profiler.dir is not None:
        run_timed(bench.profiler.wrap("diff", diff))
    timings, lines = time_diff(bench, diff)
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
    bench.report.single("diff", record)


def time_diff(bench: Bench, diff: list[str]) -> tuple[dict[str, float], int]:
    """Seconds of `debcache diff` as text and as --json; the lines of the JSON."""
    timings = {}
    for label, extra in (("text", []), ("json", ["--json"])):
        result, seconds = run_timed([*diff, *extra])
        timings[label] = round(seconds, 2)
        if result.returncode != 0:
            bench.report.note(f"diff failed: {result.stderr.strip()[-300:]}")
    return timings, result.stdout.count("\n")


def make_lockfile(side: str, sha256: str, n: int, changed: set[int], removed: set[int]) -> dict:
    """Side a: n packages; side b: some changed, some removed, n // 200 added."""
    rows = []
    for number in range(n):
        if side == "b" and number in removed:
            continue
        name = f"pkg{number:05d}"
        version = f"1.{number % 97}-1"
        if side == "b" and number in changed:
            version += "+deb12u1"
        rows.append(entry(name, f"pool/main/{name[0]}/{name}", version, sha256))
    if side == "b":
        for number in range(n // 200):
            name = f"newpkg{number:04d}"
            rows.append(entry(name, f"pool/main/n/{name}", "1.0-1", sha256))
    return {
        "format": LOCKFILE_FORMAT,
        "id": manifest_id(rows),
        "label": f"bench {side}",
        "created": time.time(),
        "recordings": [],
        "releases": {f"debian {SUITE}": {"date": RELEASE_DATES[side], "sha256": sha256}},
        "unverified": [],
        "entries": [r.__dict__ for r in rows],
    }


def entry(name: str, directory: str, version: str, sha256: str) -> Entry:
    """A manifest entry of an amd64 .deb of 23 bytes, as freeze writes it."""
    path = f"{directory}/{name}_{version}_amd64.deb"
    return Entry("debian", path, sha256, 23, name, version, "amd64", SUITE)
