"""The benchmark's server processes: started in their own group, stopped by id, measured.

Waiting is the tests' `wait_until` (tests/processes.py); what is here the tests don't
need: process groups with a log file each, ports apt-cacher-ng can bind, and the CPU
and memory of a server's process tree read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
from pathlib import Path

from processes import wait_until

_started: list[subprocess.Popen] = []


def spawn(argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
    """Start a server process in its own process group; stop_all() ends it by its id."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    _started.append(process)
    return process


def stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """End a process started by spawn() and its forks (its own group), SIGKILL after 15 s."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def stop_all() -> None:
    """Stop every process spawn() started, the last started first."""
    for process in reversed(_started):
        stop(process)


def low_free_port() -> int:
    """A free loopback port below 32768: apt-cacher-ng 3.7 fails to bind to higher ones.

    (The tests' `free_port` asks the kernel for port 0, which gives ports above 32767.)
    """
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 20) -> None:
    """Until `process` listens on 127.0.0.1:port; RuntimeError if it exits first."""

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, f"{what} to listen on 127.0.0.1:{port}", timeout)


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name: field 3 (state) is index 0."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def tree_pids(root: int) -> list[int]:
    """root and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            children.setdefault(int(_stat_fields(entry)[1]), []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def tree_cpu(root: int) -> float:
    """CPU seconds of a process tree, including its reaped children."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            total += sum(int(x) for x in _stat_fields(pid)[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, key: str) -> int:
    """A kB figure (VmRSS, VmHWM) from /proc/PID/status; 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> float:
    """The summed resident memory of a process tree, in MiB."""
    return sum(status_kb(pid, "VmRSS") for pid in tree_pids(root)) / 1024


def tree_pss_mb(root: int) -> float:
    """The summed proportional set size of a process tree, in MiB: each process's
    private pages, and its share of the pages it shares (the interpreter, libraries),
    so that several processes of one program are not counted for the same page twice."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    return total / 1024


class RssSampler:
    """Samples the summed RSS (and PSS) of a process tree while a load runs."""

    def __init__(self, root: int) -> None:
        self.root, self.peak, self.peak_pss = root, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss_mb(self.root))
            self.peak_pss = max(self.peak_pss, tree_pss_mb(self.root))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
