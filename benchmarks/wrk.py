"""wrk, the load generator of the warm, small-file and RSS workloads, and what it measured.

A Lua script cycles over a list of paths; the client's CPU comes from
getrusage(RUSAGE_CHILDREN), the server's CPU and memory from its process tree.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path

from benchmarks.processes import RssSampler, status_kb, tree_cpu
from benchmarks.settings import MB
from benchmarks.systems import System

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
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


class Wrk:
    """Runs wrk against a system over a list of paths; one figure dict per run."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "wrk"
        self.dir.mkdir()
        self.script = self.dir / "paths.lua"
        self.script.write_text(WRK_LUA)
        self.count = 0

    def run(self, system: System, paths: list[str], connections: int, seconds: float) -> dict:
        """`connections` connections for `seconds` s over paths: rates, errors, CPU, memory."""
        self.count += 1
        listing = self.dir / f"paths{self.count}.txt"  # the name experiments/ reads
        listing.write_text("".join(f"{system.prefix}/{p}\n" for p in paths))
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server0 = tree_cpu(system.pid)
        hwm0 = status_kb(system.pid, "VmHWM")
        started = time.perf_counter()
        with RssSampler(system.pid) as sampler:
            result = subprocess.run(
                self.command(system, connections, seconds),
                env={**os.environ, "BENCH_PATHS": str(listing)},
                capture_output=True,
                text=True,
                timeout=seconds + 120,
                check=False,
            )
        wall = time.perf_counter() - started
        client_cpu = children_cpu() - cpu_of(children0)
        server_cpu = tree_cpu(system.pid) - server0
        return {
            **figures(summary_of(result)),
            # CPU seconds per wall second: 1.0 is one core of this 2-core machine.
            "client_cpu": round(client_cpu / wall, 2),
            "server_cpu": round(server_cpu / wall, 2),
            "server_rss_peak_mb": round(sampler.peak, 1),
            "server_pss_peak_mb": round(sampler.peak_pss, 1),
            "server_vmhwm_mb": round(max(hwm0, status_kb(system.pid, "VmHWM")) / 1024, 1),
        }

    def command(self, system: System, connections: int, seconds: float) -> list[str]:
        threads = 1 if connections == 1 else 2
        return [
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


def cpu_of(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the wrk runs)."""
    return cpu_of(resource.getrusage(resource.RUSAGE_CHILDREN))


def summary_of(result: subprocess.CompletedProcess) -> dict:
    """The JSON line the Lua script's done() printed."""
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {result.stdout} {result.stderr}")
    return json.loads(line[6:])


def figures(summary: dict) -> dict:
    """Rates, errors and latencies from wrk's summary."""
    duration = summary["duration_us"] / 1e6
    return {
        "requests": summary["requests"],
        "bytes": summary["bytes"],
        "seconds": round(duration, 3),
        "req_s": round(summary["requests"] / duration, 1),
        # responses that were not errors (non-2xx count as errors in wrk)
        "ok_req_s": round((summary["requests"] - summary["status"]) / duration, 1),
        "MB_s": round(summary["bytes"] / duration / MB, 1),
        "errors": sum(summary[k] for k in ERROR_KINDS),
        "error_kinds": {k: summary[k] for k in ERROR_KINDS if summary[k]},
        "latency_p50_ms": round(summary["latency_p50_us"] / 1000, 2),
        "latency_p99_ms": round(summary["latency_p99_us"] / 1000, 2),
    }
