"""User story: the cache host loses power or gets kill -9 mid-download; nothing is corrupt.

The real `debcache serve` process is killed while a download streams; after a
restart the partial file is gone, every blob matches its name, and the file is
fetched whole on the next request.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
from pathlib import Path

from archive_fixture import Archive
from fake_mirror import FakeMirror, Fault
from http_client import get
from processes import free_port, start_serve, wait_until


def test_kill_9_mid_download_leaves_nothing_corrupt(
    tmp_path: Path, archive: Archive, mirror: FakeMirror
) -> None:
    port, data = free_port(), tmp_path / "data"
    config = tmp_path / "debcache.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{data}"\n'
        f'[upstreams.debian]\nurls = ["{mirror.url}/debian"]\nkeyring = "{archive.key.keyring}"\n'
    )
    bigpkg = archive.pool_path("bigpkg")
    mirror.set_fault(f"/debian/{bigpkg}", Fault.slow(chunk=65536, delay=0.05, times=1))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = start_serve(config, port, **quiet)
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        client.sendall(f"GET /debian/{bigpkg} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert client.recv(100).startswith(b"HTTP/1.1 200")
        partials = lambda: [p for p in (data / "tmp").iterdir() if p.stat().st_size > 0]  # noqa: E731
        wait_until(partials, "a partial download")
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        client.close()
        assert partials()  # the crash left a partial file behind...

        server = start_serve(config, port, **quiet)
        assert list((data / "tmp").iterdir()) == []  # ...which the restart swept away
        for blob in (data / "blobs" / "sha256").glob("*/*"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        reply = get(f"http://127.0.0.1:{port}", f"/debian/{bigpkg}")
        assert reply.status == 200 and reply.body == archive.read(bigpkg)
        assert reply.header("X-Debcache") == "miss"
    finally:
        server.kill()
        server.wait()
