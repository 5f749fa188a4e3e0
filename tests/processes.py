"""The real `debcache serve` as a subprocess, for tests of the command itself (signals,
kill -9, start-up errors) and for the benchmarks, and waiting on a condition with a deadline."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], what: str, deadline: float = 20) -> None:
    """Poll `condition` until it is true; TimeoutError naming `what` after `deadline` s."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
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
