"""The real `debcache serve` as a subprocess, for tests of the command itself (signals,
kill -9, start-up errors) and for the benchmarks, and waiting on a condition with a deadline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    condition: Callable[[], T], what: str | Callable[[], str], deadline: float = 20
) -> T:
    """Poll `condition` until it returns something true, and return that.

    The one polling loop of the tests: after `deadline` seconds it raises TimeoutError
    naming `what` (a callable `what` is called then, to describe what it saw last).
    """
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            described = what() if callable(what) else what
            raise TimeoutError(f"timed out after {deadline} s waiting for {described}")
        time.sleep(0.02)


def serve_command(config: Path) -> list[str]:
    """`python -m debcache --config CONFIG serve` with this interpreter."""
    return [sys.executable, "-m", "debcache", "--config", str(config), "serve"]


def start_serve(config: Path, port: int, **popen_options) -> subprocess.Popen:
    """`python -m debcache --config CONFIG serve`, once /_/health answers."""
    process = subprocess.Popen(serve_command(config), **popen_options)
    wait_healthy(process, port)
    return process


def wait_healthy(process: subprocess.Popen, port: int) -> None:
    """Until the `debcache serve` in `process` answers /_/health; RuntimeError if it exits."""

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"debcache serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_/health", timeout=1):
                return True
        except OSError:
            return False

    wait_until(healthy, "debcache serve to answer /_/health")


def server_processes(pid: int) -> dict[int, str]:
    """The processes of the `debcache serve` with this pid: pid → "supervisor", or the
    role its supervisor gave it (fetcher, worker, single), read from /proc."""
    found = {pid: "supervisor"}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) != pid:
            continue
        for variable in environ:
            if variable.startswith(b"DEBCACHE_CHILD="):
                found[int(entry.name)] = json.loads(variable.partition(b"=")[2])["role"]
    return found


def status_kb(pid: int, field_name: str) -> int:
    """A figure of /proc/PID/status in kB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/{pid}/status")


def server_status_kb(pid: int, field_name: str) -> int:
    """The sum of a /proc status figure over every process of the server."""
    return sum(status_kb(process, field_name) for process in server_processes(pid))


def server_open_fds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{process}/fd")) for process in server_processes(pid))
