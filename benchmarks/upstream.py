"""The remote mirror: nginx serving the fixture, with a port and access log per cache.

The unlimited port is the limit every cache is compared with; each cache reaches its
own logged port through the relay (relay.py), and its log counts its upstream requests.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.processes import low_free_port, spawn, wait_port

NGINX_CONF = """user root;
worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {d}/body;
    {temp}
    log_format bench '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log off;
{servers}
}}
"""


class Nginx:
    """One nginx: an unlimited port, and per client of the relay a port with its own log."""

    LOGGED = ("direct-limited", "debcache", "apt-cacher-ng", "approx")

    def __init__(self, work: Path, root: Path) -> None:
        self.dir = work / "nginx"
        self.dir.mkdir()
        self.root = root
        self.port = low_free_port()
        self.logged = {name: low_free_port() for name in self.LOGGED}
        self.process: subprocess.Popen | None = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/debian"

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def start(self) -> None:
        d = self.dir
        (d / "nginx.conf").write_text(self.configuration())
        self.process = spawn(
            ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")],
            d / "stdout.log",
        )
        for port in [self.port, *self.logged.values()]:
            wait_port(port, self.process, "nginx")

    def configuration(self) -> str:
        servers = [f"    server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}"]
        for name, port in self.logged.items():
            servers.append(
                f"    server {{ listen 127.0.0.1:{port}; root {self.root}; "
                f"access_log {self.log(name)} bench; }}"
            )
        temp = " ".join(
            f"{kind}_temp_path {self.dir}/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
        )
        return NGINX_CONF.format(d=self.dir, temp=temp, servers="\n".join(servers))


class AccessLog:
    """The upstream requests a cache made, read from its nginx port's log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> list[tuple[str, str, int]]:
        """(method, archive path, status) of each request logged since mark()."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            lines = f.read().decode(errors="replace").splitlines()
        rows = []
        for line in lines:
            parts = line.split(" ")
            if len(parts) >= 3:
                rows.append((parts[0], parts[1].removeprefix("/debian/"), int(parts[2])))
        return rows
