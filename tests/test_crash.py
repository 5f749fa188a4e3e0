"""User story: the cache host loses power or gets kill -9 mid-download; nothing is corrupt.

The real `debcache serve` process is killed while a download streams; after a
restart the partial file is gone, every blob matches its name, and the file is
fetched whole on the next request.
"""

from __future__ import annotations

import hashlib
import os
import resource
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
    server = start_serve(config, port, start_new_session=True, **quiet)
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        client.sendall(f"GET /debian/{bigpkg} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert client.recv(100).startswith(b"HTTP/1.1 200")
        partials = lambda: [p for p in (data / "tmp").iterdir() if p.stat().st_size > 0]  # noqa: E731
        wait_until(partials, "a partial download")
        # A power cut: every process of the server at once (start_serve's own session).
        os.killpg(server.pid, signal.SIGKILL)
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


def test_a_full_disk_mid_download_fails_that_download_alone(
    tmp_path: Path, archive: Archive, mirror: FakeMirror
) -> None:
    """A write to the temp file failing (here EFBIG from a file size limit; ENOSPC on a
    full disk) ends that download with its cause logged in one line: the client's
    connection ends short, the partial file goes, and the server serves on."""
    port, data = free_port(), tmp_path / "data"
    config = tmp_path / "debcache.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{data}"\n'
        f'[upstreams.debian]\nurls = ["{mirror.url}/debian"]\nkeyring = "{archive.key.keyring}"\n'
    )
    bigpkg, hello = archive.pool_path("bigpkg"), archive.pool_path("hello")
    assert len(archive.read(hello)) < FILE_SIZE_LIMIT < len(archive.read(bigpkg))
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        server = start_serve(
            config, port, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=limit_file_size
        )
    try:
        received, closed = exchange(port, f"GET /debian/{bigpkg} HTTP/1.1\r\nHost: x\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 200") and closed
        assert len(received) < len(archive.read(bigpkg))
        wait_until(lambda: "File too large" in log.read_text(), "the failed download's log line")
        wait_until(lambda: not list((data / "tmp").iterdir()), "the partial file to go")
        reply = get(f"http://127.0.0.1:{port}", f"/debian/{hello}")
        assert reply.status == 200 and reply.body == archive.read(hello)
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text and "never retrieved" not in text, text


FILE_SIZE_LIMIT = 1024 * 1024


def limit_file_size() -> None:
    """In the child: writes past FILE_SIZE_LIMIT fail with EFBIG (not SIGXFSZ's kill)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def exchange(port: int, request: str) -> tuple[bytes, bool]:
    """Everything received for `request` until the server closes, and whether it did."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode())
        received = b""
        while data := sock.recv(65536):
            received += data
        return received, True
