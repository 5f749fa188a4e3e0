"""The fetch log must not lose rows: group commits, and one bad job spoils no other.

Runs the real writer thread on a real SQLite file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from debcache import db as queries
from debcache.db import Database

ROW = dict(
    time=1.0, client="127.0.0.1", recording="r", upstream="debian", path="pool/x.deb",
    method="GET", status=200, sha256=None, size=None, source="hit", duration=0.0, complete=1,
)  # fmt: skip


@pytest.fixture
def database(tmp_path: Path):
    database = Database(tmp_path / "debcache.db").open()
    yield database
    database.close()


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


def test_queued_fetch_rows_are_committed_as_one_group(database: Database) -> None:
    statements: list[str] = []
    held, release = hold_the_writer(database, statements)
    rows = [database.write_soon(queries.insert_fetch, ROW) for _ in range(50)]
    release.set()
    held.result(10)
    for future in rows:
        future.result(10)
    after_first_insert = statements[statements.index("INSERT") :]
    assert after_first_insert.count("INSERT") == 50
    assert after_first_insert.count("COMMIT") == 1


def test_one_failing_job_does_not_drop_the_rows_queued_behind_it(
    database: Database, tmp_path: Path
) -> None:
    held, release = hold_the_writer(database)
    bad = database.write_soon(lambda db: db.execute("INSERT INTO no_such_table VALUES (1)"))
    rows = [database.write_soon(queries.insert_fetch, ROW) for _ in range(5)]
    release.set()
    held.result(10)
    assert bad.exception(10) is not None
    for future in rows:
        assert future.exception(10) is None
    connection = queries.connect(tmp_path / "debcache.db")
    try:
        assert len(queries.fetches(connection, "r")) == 5
    finally:
        connection.conn.close()
