"""User story: memory stays bounded whatever an upstream sends.

A hostile or broken mirror serves a Packages.xz of a few kB that decompresses to
hundreds of MB without a newline (a decompression bomb), or a Packages index that its
signed Release does not list. debcache indexes (for the live cache's pool checks) only
a Packages index that the verified Release of its suite lists, so neither is read;
and every index parser reads in bounded chunks, so even a verified bomb (freeze's
`packages_stanzas`, the live cache's `packages_pool_entries`) costs no memory.

The bound is a memory figure (VmHWM, the process's peak resident set), never a time.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from archive_fixture import Archive
from debcache_server import DebcacheServer, make_config, write_config_file
from fake_mirror import FakeMirror
from http_client import get
from processes import free_port, server_processes, start_serve, status_kb, wait_until

ROOT = Path(__file__).parent.parent
INRELEASE = "dists/bookworm/InRelease"
PACKAGES_XZ = "dists/bookworm/main/binary-amd64/Packages.xz"
PACKAGES_GZ = "dists/bookworm/main/binary-amd64/Packages.gz"
BOMB_SIZE = 300 << 20  # bytes of one line without a newline, once decompressed
MEMORY_BUDGET_KB = 200 << 10  # peak RSS: the benchmarks' budget (benchmarks/report.py), 200 MB
LISTED = f"Package: a\nFilename: pool/main/a/a.deb\nSize: 1\nSHA256: {'a' * 64}\n\n".encode()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Packages.xz of about 50 kB: one good stanza, then 300 MB of one endless line."""
    path = tmp_path_factory.mktemp("bomb") / "Packages.xz"
    compressor = lzma.LZMACompressor(preset=1)
    chunk = b"x" * (1 << 20)
    with open(path, "wb") as f:
        f.write(compressor.compress(LISTED + b"Package: bomb\nDescription: "))
        for _ in range(BOMB_SIZE // len(chunk)):
            f.write(compressor.compress(chunk))
        f.write(compressor.flush())
    return path


def hostile_mirror_root(www: Path, archive: Archive, files: dict[str, bytes | Path]) -> Path:
    """A mirror root with the archive's genuine signed InRelease and these other files."""
    files = {INRELEASE: archive.path(INRELEASE), **files}
    for path, content in files.items():
        target = www / "debian" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    return www


def peak_rss_kb(pid: int) -> int:
    """The highest peak of one process of the server (the fetcher reads the index)."""
    return max(status_kb(process, "VmHWM") for process in server_processes(pid))


def pool_hashes(data_dir: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{data_dir / 'debcache.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT upstream, path FROM pool_hashes").fetchall()


def test_a_packages_bomb_costs_the_server_no_memory_and_is_not_indexed(
    tmp_path: Path, archive: Archive, bomb: Path
) -> None:
    www = hostile_mirror_root(tmp_path / "www", archive, {PACKAGES_XZ: bomb})
    port = free_port()
    log = tmp_path / "serve.log"
    with FakeMirror(www) as mirror, open(log, "w") as stderr:
        config = make_config(
            tmp_path / "data", {"debian": [f"{mirror.url}/debian"]}, keyring=archive.key.keyring
        )
        config_file = write_config_file(config, tmp_path / "debcache.toml")
        config_file.write_text(
            config_file.read_text().replace(
                "[server]\n", f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
            )
        )
        server = start_serve(config_file, port, stderr=stderr, cwd=ROOT)
        try:
            before = peak_rss_kb(server.pid)
            url = f"http://127.0.0.1:{port}"
            assert get(url, f"/debian/{INRELEASE}").status == 200
            reply = get(url, f"/debian/{PACKAGES_XZ}")
            assert reply.status == 200 and reply.body == bomb.read_bytes()
            done = wait_until(
                lambda: [line for line in log.read_text().splitlines() if "index" in line],
                lambda: f"a log line on indexing {PACKAGES_XZ} in {log.read_text()!r}",
                deadline=120,
            )
            after = peak_rss_kb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"server peak RSS: {before} kB at start, {after} kB after the bomb")
    assert after < MEMORY_BUDGET_KB, f"peak RSS {after} kB (was {before} kB at start)"
    assert len(done) == 1 and f"not indexing debian/{PACKAGES_XZ}" in done[0], done
    assert "does not list" in done[0]
    assert pool_hashes(tmp_path / "data") == []


PARSE = """
import sys
from pathlib import Path
from debcache.archive import packages_pool_entries, packages_stanzas
from debcache.errors import UnreadableIndex
bomb = Path(sys.argv[1])
print(list(packages_pool_entries(bomb)))
try:
    list(packages_stanzas(bomb))
except UnreadableIndex as exc:
    print(exc)
# VmHWM, not ru_maxrss: Linux carries the latter over from the forking pytest process
print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))
"""


def test_the_index_parsers_read_a_bomb_in_bounded_memory(bomb: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PARSE, str(bomb)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    entries, refused, peak = result.stdout.splitlines()
    assert entries == repr([("pool/main/a/a.deb", 1, "a" * 64)])  # the bomb's stanza skipped
    assert "Packages.xz: skipped 1 stanzas over the size limits" in result.stderr
    assert refused.startswith("Packages.xz: not a readable Packages index (a stanza has a line")
    assert int(peak) < MEMORY_BUDGET_KB, f"peak RSS {peak} kB"


def test_a_packages_index_the_verified_release_does_not_list_is_not_indexed(
    tmp_path: Path, archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="debcache.cache")
    # A well-formed index that vouches for a different hello: apt would refuse it, and
    # debcache must not check pool downloads against it either.
    genuine = gzip.decompress(archive.read(PACKAGES_GZ))
    hello = archive.sha256(archive.pool_path("hello", "2.10-3"))
    assert hello.encode() in genuine
    tampered = gzip.compress(genuine.replace(hello.encode(), b"b" * 64))
    digest = archive.sha256(PACKAGES_XZ)
    by_hash = f"dists/bookworm/main/binary-amd64/by-hash/SHA256/{digest}"
    www = hostile_mirror_root(
        tmp_path / "www", archive, {PACKAGES_GZ: tampered, by_hash: archive.path(by_hash)}
    )
    with FakeMirror(www) as mirror:
        config = make_config(
            tmp_path / "data", {"debian": [f"{mirror.url}/debian"]}, keyring=archive.key.keyring
        )
        with DebcacheServer(config) as debcache:
            assert get(debcache.url, f"/debian/{INRELEASE}").status == 200
            assert get(debcache.url, f"/debian/{PACKAGES_GZ}").body == tampered
            refused = wait_until(
                lambda: [r.getMessage() for r in caplog.records if "index" in r.getMessage()],
                "a log line on indexing Packages.gz",
            )
            assert refused == [
                f"not indexing debian/{PACKAGES_GZ}: the verified Release of bookworm does "
                f"not list sha256 {hashlib.sha256(tampered).hexdigest()[:12]}"
            ]
            assert pool_hashes(tmp_path / "data") == []
            # The genuine index of the same directory, by its by-hash name, is read at once.
            caplog.clear()
            assert get(debcache.url, f"/debian/{by_hash}").status == 200
            wait_until(
                lambda: any(r.getMessage().startswith("indexed ") for r in caplog.records),
                lambda: f"the genuine index to be indexed: {caplog.messages}",
            )
            assert ("debian", archive.pool_path("hello", "2.10-3")) in pool_hashes(
                tmp_path / "data"
            )
