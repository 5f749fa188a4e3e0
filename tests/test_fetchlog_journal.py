"""No fetch-log row is ever lost: while another connection holds debcache.db locked for
longer than every retry of the writer, rows wait in a journal on disk, and are written,
in order, when the lock goes; a journal left by a killed process is replayed at start.

The real app on 127.0.0.1 and the real writer thread; the lock is a real second sqlite3
connection in this process (what a backup tool or an operator's `sqlite3` holds).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from debcache_server import make_config
from fake_mirror import FakeMirror
from processes import wait_until

from debcache import db as queries
from debcache.db import JOURNAL_NAME, FetchJournal
from debcache.server.app import create_app

PATHS = [
    "dists/bookworm/InRelease",
    "dists/bookworm/Release",
    "dists/bookworm/Release.gpg",
    "dists/bookworm/main/binary-amd64/Packages.gz",
    "dists/bookworm/InRelease",
]
RETRY_SECONDS = 0.2  # the writer's whole retry budget: the lock outlasts it by far


def recorded_paths(path: Path, recording: str) -> list[str]:
    connection = queries.connect(path)
    try:
        return [row["path"] for row in queries.fetches(connection, recording)]
    finally:
        connection.conn.close()


def journal_rows(journal: Path) -> int:
    """The rows the journal holds (its first line is its id)."""
    return len(journal.read_text().splitlines()) - 1 if journal.exists() else 0


def test_rows_wait_out_an_exclusive_lock_longer_than_every_retry(
    tmp_path: Path, mirror: FakeMirror
) -> None:
    config = make_config(tmp_path / "data", {"debian": [f"{mirror.url}/debian"]})
    database_path = config.data_dir / "debcache.db"
    journal = config.data_dir / JOURNAL_NAME

    async def scenario() -> None:
        app = create_app(config, write_retry_seconds=RETRY_SECONDS)
        auth = {"Authorization": aiohttp.encode_basic_auth("locked", "")}
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as client:
            lock = sqlite3.connect(database_path, isolation_level=None, timeout=0)
            lock.execute("BEGIN EXCLUSIVE")
            try:
                for path in PATHS:
                    async with client.get(
                        server.make_url(f"/debian/{path}"), headers=auth
                    ) as reply:
                        assert reply.status == 200, path
                        await reply.read()
                await asyncio.to_thread(
                    wait_until,
                    lambda: journal_rows(journal) == len(PATHS),
                    f"{len(PATHS)} rows in the journal",
                )
                assert lock.execute("SELECT count(*) FROM fetches").fetchone()[0] == 0
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            await asyncio.to_thread(
                wait_until,
                lambda: not journal.exists(),
                lambda: f"the journal replayed (it holds {journal_rows(journal)} rows)",
            )

    asyncio.run(scenario())
    assert recorded_paths(database_path, "locked") == PATHS


def row(path: str) -> tuple:
    values = dict(
        time=1.0, client="127.0.0.1", recording="killed", upstream="debian", path=path,
        method="GET", status=200, sha256=None, size=None, source="miss", duration=0.0,
        complete=1,
    )  # fmt: skip
    return tuple(values[column] for column in queries.FETCH_COLUMNS)


def test_a_journal_left_by_a_killed_process_is_replayed_before_serving(
    tmp_path: Path, mirror: FakeMirror
) -> None:
    """What a process killed while the database was locked leaves: a journal (its last
    line torn by the kill), replayed once the next process opens the database."""
    config = make_config(tmp_path / "data", {"debian": [f"{mirror.url}/debian"]})
    config.data_dir.mkdir(parents=True)
    queries.create_schema(config.data_dir / "debcache.db")
    journal = config.data_dir / JOURNAL_NAME
    FetchJournal(journal).append([row(p) for p in PATHS[:3]])
    FetchJournal(journal).append([row(PATHS[3])])
    with journal.open("a") as torn:
        torn.write(json.dumps(list(row("pool/torn.deb")))[:20])

    async def scenario() -> list[str]:
        app = create_app(config, write_retry_seconds=RETRY_SECONDS)
        async with TestServer(app, host="127.0.0.1"):
            return recorded_paths(config.data_dir / "debcache.db", "killed")

    assert asyncio.run(scenario()) == PATHS[:4]
    assert not journal.exists()


def test_a_journal_committed_but_not_removed_is_not_replayed_twice(tmp_path: Path) -> None:
    """Killed between the replay's commit and the journal's removal: its id says so."""
    path = tmp_path / "debcache.db"
    queries.create_schema(path)
    journal = tmp_path / JOURNAL_NAME
    FetchJournal(journal).append([row(p) for p in PATHS])
    kept = journal.read_text()
    connection = queries.connect(path)
    try:
        assert FetchJournal(journal).replay(connection)
    finally:
        connection.conn.close()
    journal.write_text(kept)  # as if the process died before unlinking it
    queries.Database(path).open().close()
    assert recorded_paths(path, "killed") == PATHS
    assert not journal.exists()


def test_the_journal_of_a_server_process_that_is_gone_is_replayed_by_the_next(
    tmp_path: Path,
) -> None:
    """Each of several server processes journals into a file of its own
    (fetchlog-journal.PID.jsonl); whichever process opens the database next writes the
    rows of one whose process is gone, and leaves a live one's alone."""
    path = tmp_path / "debcache.db"
    queries.create_schema(path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f"fetchlog-journal.{dead.pid}.jsonl"
    alive = tmp_path / f"fetchlog-journal.{os.getpid()}.jsonl"
    FetchJournal(orphan).append([row(p) for p in PATHS[:2]])
    FetchJournal(alive).append([row(PATHS[2])])
    queries.Database(path, journal="fetchlog-journal.other.jsonl").open().close()
    assert recorded_paths(path, "killed") == PATHS[:2]
    assert not orphan.exists() and alive.exists()
