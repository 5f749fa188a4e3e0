"""The real nginx as an edge cache, configured by `debcache edge-config`, on loopback.

nginx runs in the foreground (`daemon off`) as a child of the test, its cache, temp
files and logs under the test's directory, its pid file too (`-g 'pid ...;'`: the
generated configuration leaves `pid` and `user` to the command line for this).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from click.testing import CliRunner
from processes import free_port, wait_until

from debcache.cli import cli

# .ci/install-deps installs it; a non-login root shell may lack /usr/sbin in PATH.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# debcache_edge's access log line: ... "GET /pin/... HTTP/1.1" 200 123 cache=HIT origin=- 0.000
_LOG_LINE = re.compile(r'"(\S+) (\S+) [^"]*" (\d+) \d+ cache=(\S+) origin=(\S+)')


class EdgeNginx:
    """nginx with edge-config's configuration in front of `origin`; .url is the edge's."""

    def __init__(self, directory: Path, origin: str) -> None:
        """Write the configuration (nginx not started): .config, the logs under directory."""
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = directory / "log"
        self.log_dir.mkdir(parents=True)
        (directory / "cache").mkdir()
        result = CliRunner().invoke(
            cli,
            [
                "edge-config",
                "--origin",
                origin,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--cache-dir",
                str(directory / "cache"),
                "--max-size",
                "1g",
                "--log-dir",
                str(self.log_dir),
            ],
        )
        assert result.exit_code == 0, result.output
        self.config = directory / "nginx.conf"
        self.config.write_text(result.output)
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        # As root, nginx's workers would run as nobody, who may not enter the test's
        # directory: `user` is left to the command line by edge-config.
        user = "user root; " if os.geteuid() == 0 else ""
        globals_ = f"daemon off; pid {self.directory / 'nginx.pid'}; {user}"
        prefix = str(self.directory)
        return [NGINX, "-c", str(self.config), "-p", prefix, "-e", "stderr", "-g", globals_]

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the configuration: does nginx accept it?"""
        return subprocess.run(
            [*self.command(), "-t"], capture_output=True, text=True, timeout=60, check=False
        )

    def start(self) -> EdgeNginx:
        with open(self.directory / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(self.command(), stderr=stderr)
        wait_until(self._answers, "nginx to answer on its port")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            stderr = (self.directory / "stderr.log").read_text()
            raise RuntimeError(f"nginx exited with {self.process.returncode}: {stderr}")
        try:
            with urllib.request.urlopen(f"{self.url}/_/health", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # nginx answers; the origin may be down
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def __enter__(self) -> EdgeNginx:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def requests(self) -> list[dict]:
        """The access log so far: method, path, status, cache (HIT, MISS...), origin status."""
        log = self.log_dir / "debcache-edge-access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        keys = ("method", "path", "status", "cache", "origin")
        return [dict(zip(keys, m.groups(), strict=True)) for m in map(_LOG_LINE.search, lines) if m]
