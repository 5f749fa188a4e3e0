"""The fetch log must not lose rows: group commits, and one bad job spoils no other.

Runs the real writer thread on a real SQLite file, fed as the server feeds it:
`FetchLog.finish` queues each row with `Database.log_fetch`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from debcache import db as queries
from debcache.db import Database
from debcache.recording import FetchLog


@pytest.fixture
def database(tmp_path: Path):
    database = Database(tmp_path / "debcache.db").open()
    yield database
    database.close()


def log_requests(database: Database, count: int) -> None:
    """`count` served requests of recording r, logged the way the server logs them."""
    fetch_log = FetchLog(database)
    for number in range(count):
        record = fetch_log.begin("127.0.0.1", "r", "debian", f"pool/x{number}.deb", "GET")
        record.status, record.source, record.complete = 200, "hit", True
        fetch_log.finish(record)


def committed_rows(database: Database, path: Path) -> list[dict]:
    """The rows of recording r, once every job queued so far is committed."""
    database.write_soon(lambda db: None).result(10)
    connection = queries.connect(path)
    try:
        return queries.fetches(connection, "r")
    finally:
        connection.conn.close()


def hold_the_writer(database: Database, statements: list[str] | None = None):
    """Occupy the writer thread until the returned event is set, so jobs queue up behind."""
    started, release = threading.Event(), threading.Event()

    def job(db) -> None:
        if statements is not None:
            db.conn.set_trace_callback(lambda sql: statements.append(sql.split()[0].upper()))
        started.set()
        release.wait(10)

    held = database.write_soon(job)
    assert started.wait(10)
    return held, release


def test_queued_fetch_rows_are_committed_as_one_group(database: Database, tmp_path: Path) -> None:
    statements: list[str] = []
    held, release = hold_the_writer(database, statements)
    log_requests(database, 50)
    release.set()
    held.result(10)
    assert len(committed_rows(database, tmp_path / "debcache.db")) == 50
    first_insert = statements.index("INSERT")
    group = statements[first_insert : statements.index("COMMIT", first_insert)]
    assert group.count("INSERT") == 50  # all of them before the first commit


def test_one_failing_job_does_not_drop_the_rows_queued_behind_it(
    database: Database, tmp_path: Path
) -> None:
    held, release = hold_the_writer(database)
    bad = database.write_soon(lambda db: db.execute("INSERT INTO no_such_table VALUES (1)"))
    log_requests(database, 5)
    release.set()
    held.result(10)
    assert bad.exception(10) is not None
    rows = committed_rows(database, tmp_path / "debcache.db")
    assert sorted(row["path"] for row in rows) == [f"pool/x{n}.deb" for n in range(5)]
    assert all(row["complete"] == 1 and row["status"] == 200 for row in rows)
