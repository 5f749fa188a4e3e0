"""The results: each row printed as it is measured, then ratios, targets, tables and JSON."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from pathlib import Path

import aiohttp

from benchmarks.peers import PEER_NAMES
from benchmarks.settings import REPO

TABLES = ("warm", "small", "cold", "herd", "apt", "rss")


class Report:
    """Every figure of a run, in the JSON's shape: rows per workload, freeze, diff, notes."""

    def __init__(self, peers: dict[str, str | None]) -> None:
        self.results: dict = {table: [] for table in TABLES}
        self.results |= {
            "freeze": {},
            "diff": {},
            "skipped": {k: v for k, v in peers.items() if v},
            "notes": [],
        }

    @staticmethod
    def say(text: str) -> None:
        print(text, flush=True)

    def row(self, kind: str, record: dict) -> None:
        """A figure of a table workload, printed as it is measured."""
        self.results[kind].append(record)
        keys = [k for k in record if k not in ("workload",)]
        self.say(f"  [{kind}] " + "  ".join(f"{k}={record[k]}" for k in keys))

    def single(self, kind: str, record: dict) -> None:
        """The one figure of a workload that is not a table (freeze, diff)."""
        self.results[kind] = record
        self.say(f"  [{kind}] {record}")

    def note(self, text: str) -> None:
        self.results["notes"].append(text)
        self.say(f"  note: {text}")

    def skip(self, peer: str, error: Exception) -> None:
        """A peer that failed while it was measured: no figure, the reason instead."""
        self.results["skipped"][peer] = f"failed while running: {error}"
        self.say(f"  {peer} failed: {error}")

    def rows(self, kind: str, system: str) -> list[dict]:
        return [r for r in self.results[kind] if r["system"] == system]


# --- ratios and targets ---------------------------------------------------------------


def ratio(value: float, base: float | None) -> float | None:
    return round(value / base, 3) if base else None


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
            peers = [r[measure] for r in same if r["system"] in PEER_NAMES and not r["errors"]]
            row["x_nginx"] = ratio(row[measure], base)
            row["x_best_peer"] = ratio(row[measure], max(peers) if peers else None)
    cold = results["cold"]
    direct = next((r["seconds"] for r in cold if r["system"] == "direct"), None)
    for row in cold:
        row["x_direct"] = ratio(row["seconds"], direct)


def target(name: str, met: bool | None, figure: str) -> dict:
    return {"target": name, "met": met, "figure": figure}


def evaluate_targets(results: dict) -> list[dict]:
    """The issue-7 targets, each MET (True), MISSED (False) or n/a (None) with its figure."""
    return [
        *warm_targets(results),
        *cold_targets(results),
        *herd_targets(results),
        *small_targets(results),
        *rss_targets(results),
        *freeze_targets(results),
        *diff_targets(results),
    ]


def mine(results: dict, table: str) -> list[dict]:
    return [r for r in results[table] if r["system"] == "debcache"]


def warm_targets(results: dict) -> list[dict]:
    targets = []
    for connections in (16, 64):
        row = next((r for r in mine(results, "warm") if r["concurrency"] == connections), None)
        if row:
            ahead = row["x_best_peer"] is None or row["x_best_peer"] > 1
            targets.append(
                target(
                    f"warm c={connections} >= 0.90x nginx and ahead of the peers",
                    row["x_nginx"] >= 0.90 and ahead and not row["errors"],
                    f"{row['x_nginx']}x nginx, {row['x_best_peer']}x best peer",
                )
            )
    return targets


def cold_targets(results: dict) -> list[dict]:
    return [
        target("cold <= 1.05x direct", row["x_direct"] <= 1.05, f"{row['x_direct']}x direct")
        for row in mine(results, "cold")[:1]
    ]


def herd_targets(results: dict) -> list[dict]:
    return [
        target(
            f"herd {row['clients']} clients: 1.00 upstream request per file",
            row["upstream_per_file"] == 1.0 and not row["failures"],
            f"{row['upstream_per_file']} per file, failures {row['failures'] or 'none'}",
        )
        for row in mine(results, "herd")
    ]


def small_targets(results: dict) -> list[dict]:
    targets = []
    for row in mine(results, "small"):
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
        targets.append(
            target(
                f"small files ({row['kind']}, c={row['concurrency']}) ahead of apt-cacher-ng",
                None if acng is None else row["ok_req_s"] > acng["ok_req_s"],
                f"{row['ok_req_s']} ok req/s vs {acng['ok_req_s'] if acng else 'n/a'}"
                + (f" ({acng['errors']} errors)" if acng and acng["errors"] else ""),
            )
        )
    return targets


def rss_targets(results: dict) -> list[dict]:
    targets = []
    for rss in mine(results, "rss")[:1]:
        targets.append(
            target(
                "peak RSS <= 200 MB at c=64",
                rss["peak_rss_mb"] <= 200 and rss["vmhwm_mb"] <= 200,
                f"peak {rss['peak_rss_mb']} MB (VmHWM {rss['vmhwm_mb']} MB), "
                f"{sum(rss['MB_pulled_each'])} MB pulled in {rss['runs']} runs",
            )
        )
        targets.append(
            target(
                "no RSS growth across repeated runs",
                rss["growth_run2_to_last_mb"] <= 5,
                f"RSS after each run {rss['rss_after_each_mb']} MB",
            )
        )
    return targets


def freeze_targets(results: dict) -> list[dict]:
    freeze = results["freeze"]
    if not freeze:
        return []
    return [
        target(
            f"freeze of {freeze['recorded_files']} files <= 5 s",
            freeze["freeze_ok"] and freeze["freeze_seconds"] <= 5,
            f"{freeze['freeze_seconds']} s",
        )
    ]


def diff_targets(results: dict) -> list[dict]:
    diff = results["diff"]
    if diff.get("diff_seconds") is None:
        return []
    return [
        target(
            f"diff of two {diff['packages_each']}-package manifests <= 2 s",
            diff["diff_seconds"] <= 2,
            f"{diff['diff_seconds']} s (--json {diff['diff_json_seconds']} s)",
        )
    ]


# --- the summary ----------------------------------------------------------------------


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    if not rows:
        return
    print(f"\n{title}")
    cells = [columns] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


SUMMARY_TABLES = (
    ("warm", "(1) warm throughput, all pool files (wrk)",
     ["system", "concurrency", "MB_s", "req_s", "x_nginx", "x_best_peer", "errors",
      "client_cpu", "server_cpu", "latency_p99_ms"]),
    ("cold", "(2) cold transfer through the rate-limited upstream (1 client)",
     ["system", "files", "MB", "seconds", "x_direct", "upstream_requests", "failures"]),
    ("herd", "(3) herd: upstream requests per unique file",
     ["system", "clients", "files", "seconds", "upstream_per_file", "upstream_200_per_file",
      "pool_per_file", "volatile_per_file", "volatile_max", "bodies_ok", "bodies_expected",
      "failures"]),
    ("small", "(4) small-file request rate (wrk)",
     ["system", "kind", "concurrency", "req_s", "MB_s", "x_nginx", "x_best_peer", "errors",
      "client_cpu", "server_cpu"]),
    ("apt", "(5) apt-get update + install --download-only",
     ["system", "ok", "update_s", "download_s", "total_s", "debs", "MB"]),
    ("rss", "(6) server RSS across repeated c=64 runs",
     ["system", "runs", "MB_pulled_each", "peak_rss_mb", "vmhwm_mb", "rss_after_each_mb"]),
)  # fmt: skip


def print_summary(results: dict) -> None:
    """A table per workload, freeze and diff, the targets and the skipped peers."""
    for table, title, columns in SUMMARY_TABLES:
        print_table(title, results[table], columns)
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


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


# --- where it ran ---------------------------------------------------------------------


def machine() -> dict:
    """CPU, memory, kernel and the versions of what served and loaded."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "?")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
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


def version(*command: str) -> str:
    """The first line a tool prints about its version; `-` when it can't run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "-"
    return (result.stdout + result.stderr).strip().splitlines()[0] if result else "-"


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return result.stdout.strip()
