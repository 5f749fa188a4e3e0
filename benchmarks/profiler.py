"""py-spy flame graphs of debcache's phases, with `--profile DIR` (none otherwise)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


class Profiler:
    """Samples debcache's phases into DIR/NAME.svg; does nothing without a directory."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            if not shutil.which("py-spy"):
                subprocess.run(
                    [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False
                )
            if not shutil.which("py-spy"):
                print("py-spy could not be installed: no profiles")
                self.dir = None

    @contextlib.contextmanager
    def attach(self, name: str, pid: int, gil: bool = True) -> Iterator[None]:
        """Sample a running process (without pausing it) until the block ends."""
        if self.dir is None:
            yield
            return
        command = ["py-spy", "record", "--pid", str(pid), "--nonblocking", "--rate", "100"]
        command += ["--gil"] if gil else []
        command += ["-o", str(self.dir / f"{name}.svg")]
        sampler = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            yield
        finally:
            sampler.send_signal(signal.SIGINT)  # py-spy writes the flame graph on SIGINT
            try:
                sampler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()

    def wrap(self, name: str, command: list[str]) -> list[str]:
        """A command run under py-spy (its timing then includes the sampling overhead)."""
        if self.dir is None:
            return command
        return [
            "py-spy",
            "record",
            "--rate",
            "200",
            "-o",
            str(self.dir / f"{name}.svg"),
            "--",
            *command,
        ]
