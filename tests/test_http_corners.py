"""User story: HTTP details that clients rely on hold in the corners too.

A failure after the headers never turns into a second response; HTTP/1.0
clients get bodies of unknown length; a client using debcache as its proxy can
still reach debcache's own URLs; Last-Modified and If-Modified-Since are those
of the path, not of a blob that other paths share; a rollback is never hidden
behind a 304. (Found in review: each of these failed once.)
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from archive_fixture import Archive
from debcache_server import DebcacheServer, make_config
from fake_mirror import FakeMirror, Fault
from http_client import get
from processes import wait_until

INRELEASE = "dists/bookworm/InRelease"


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send raw bytes; everything received until the server closes, and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return received, True
                received += data
        except TimeoutError:
            return received, False


# --- an exception after the headers went out writes a second response into the body ---


def test_a_reader_error_after_the_headers_closes_the_connection_without_a_second_response(
    debcache: DebcacheServer, mirror: FakeMirror, archive: Archive
) -> None:
    """Any failure while streaming (here EISDIR from pread; EMFILE or EIO in production)
    ends the connection short, never with an error response written into the body."""
    path = archive.pool_path("bigpkg", "1:3.0-1")
    mirror.set_fault(f"/debian/{path}", Fault.slow(chunk=16384, delay=0.05))

    def written_temp_files() -> list[Path]:
        return [p for p in debcache.temp_files() if p.stat().st_size > 0]

    first = socket.create_connection(("127.0.0.1", debcache.port), timeout=30)
    try:
        first.sendall(f"GET /debian/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert first.recv(100).startswith(b"HTTP/1.1 200")
        # Swapped only once the download writes into it (its own descriptor then keeps
        # the moved file): only readers that open it from now on meet the directory.
        (temp,) = wait_until(written_temp_files, "the download to write its partial file")
        moved = temp.with_name(temp.name + ".moved")
        os.rename(temp, moved)
        os.mkdir(temp)  # the next reader's os.open works, its os.pread fails (EISDIR)
        try:
            received, closed = raw_exchange(
                debcache.port, f"GET /debian/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 5
            )
        finally:
            os.rmdir(temp)
            os.rename(moved, temp)
    finally:
        first.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert received.count(b"HTTP/1.1 ") == 1, received[:600]
    assert closed, "the broken response must end with the connection closed"


# --- HTTP/1.0 clients and upstream bodies of unknown length ----------------------------


def test_an_http10_client_gets_a_body_of_unknown_length(
    debcache: DebcacheServer, mirror: FakeMirror, archive: Archive
) -> None:
    """HTTP/1.0 has no chunked encoding: the body is sent whole, once verified."""
    path = archive.pool_path("hello", "2.10-3")
    mirror.set_fault(f"/debian/{path}", Fault.chunked(times=1))
    received, _ = raw_exchange(
        debcache.port, f"GET /debian/{path} HTTP/1.0\r\nHost: x\r\n\r\n".encode()
    )
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200", head
    assert body == archive.read(path)


# --- absolute-form requests that name debcache itself ----------------------------------


def test_an_absolute_uri_naming_debcache_itself_is_served_not_refused(
    debcache: DebcacheServer, archive: Archive
) -> None:
    """RFC 9112 3.2.2: a server must accept the absolute form. apt with debcache as its
    proxy and a debcache mirror URL sends `GET http://cache:3142/debian/...`."""
    reply = get(debcache.url, f"{debcache.url}/debian/{INRELEASE}")
    assert reply.status == 200, reply.body
    assert reply.body == archive.read(INRELEASE)


# --- Last-Modified and If-Modified-Since on hits come from a blob shared by paths ------


def _put(root: Path, path: str, content: bytes, age: float) -> None:
    target = root / "debian" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    moment = time.time() - age
    os.utime(target, (moment, moment))


def test_a_hit_answers_if_modified_since_with_its_own_paths_date(tmp_path: Path) -> None:
    """Blobs are shared by every path with the same content, so a path whose content
    changes to bytes another path brought in earlier must keep its own, newer date."""
    year = 365 * 86400
    other = "dists/stable/main/installer-amd64/20230101/images/MANIFEST"
    path = "dists/stable/main/installer-amd64/current/images/MANIFEST"
    same = b"netboot/initrd.gz -- version 20230101\n"
    root = tmp_path / "www"
    _put(root, other, same, age=5 * year)
    _put(root, path, b"netboot/initrd.gz -- version 20220101\n", age=2 * year)
    with FakeMirror(root) as mirror:
        config = make_config(
            tmp_path / "data", {"debian": [f"{mirror.url}/debian"]}, timeout=5, coalesce_window=0
        )
        with DebcacheServer(config) as server:
            old = get(server.url, f"/debian/{path}")  # a client keeps this copy
            assert get(server.url, f"/debian/{other}").body == same
            _put(root, path, same, age=0)  # the path changes to the other path's bytes
            new = get(server.url, f"/debian/{path}")
            assert new.body == same and new.header("X-Debcache") == "miss"
            hit = get(server.url, f"/debian/{path}")
            assert hit.header("X-Debcache") == "hit"
            assert hit.header("Last-Modified") == new.header("Last-Modified")
            conditional = get(
                server.url,
                f"/debian/{path}",
                headers={"If-Modified-Since": old.header("Last-Modified") or ""},
            )
            assert conditional.status == 200 and conditional.body == same


def test_after_a_rollback_a_client_holding_the_newer_inrelease_is_not_told_304(
    tmp_path: Path,
) -> None:
    """After a rollback apt's next update sends the newer InRelease's date; a 304 would
    keep it on the rolled-back state."""
    from apt import AptRoot
    from archive_fixture import build_test_archive, point_release
    from workflow import freeze_json, keyed_debcache_for, record_install, run

    archive = build_test_archive(tmp_path / "www")
    with FakeMirror(archive.root) as mirror:
        cache = keyed_debcache_for(tmp_path, mirror, archive)
        try:
            record_install(cache, AptRoot(tmp_path / "a"), archive, mirror, "old", "hello")
            old = freeze_json(cache, "old", "--promote", "b1")["id"]
            point_release(archive)
            record_install(cache, AptRoot(tmp_path / "b"), archive, mirror, "new", "hello")
            new = freeze_json(cache, "new")["id"]
            assert run(cache, "promote", "b1", new[:12]).exit_code == 0
            newer = get(cache.url, f"/pin/b1/debian/{INRELEASE}")
            assert newer.header("X-Debcache-Manifest") == new
            assert run(cache, "rollback", "b1").exit_code == 0
            again = get(
                cache.url,
                f"/pin/b1/debian/{INRELEASE}",
                headers={"If-Modified-Since": newer.header("Last-Modified") or ""},
            )
            assert again.status == 200, "a 304 keeps the client on the rolled-back state"
            assert again.header("X-Debcache-Manifest") == old
        finally:
            cache.stop()
