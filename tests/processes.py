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
