"""The writer thread fails loudly and at once: a dead writer fails every write and turns
/_/health to 503; an error that will not go away by waiting is not retried.

Runs the real writer thread on a real SQLite file, and the real app on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from debcache_server import make_config
from fake_mirror import FakeMirror

from debcache import db as queries
from debcache.db import Database
from debcache.errors import DatabaseUnavailable
from debcache.server.app import create_app
from debcache.server.keys import DATABASE

DEADLINE = 10.0  # seconds: far above any real answer, only stops a broken writer's hang

ROW = dict(
    time=1.0, client="127.0.0.1", recording="r", upstream="debian", path="pool/x.deb",
    method="GET", status=200, sha256=None, size=None, source="hit", duration=0.0, complete=1,
)  # fmt: skip


class WriterKilled(BaseException):
    """Not an Exception: escapes the per-job handling, as an error of the loop itself would
    (sqlite-utils 3.x's missing `atomic` was one)."""


def kill_the_writer(db) -> None:
    raise WriterKilled("killed by the test")


@pytest.fixture
def database(tmp_path: Path):
    database = Database(tmp_path / "debcache.db").open()
    yield database
    database.close()


def hold_the_writer(database: Database) -> tuple[Future, threading.Event]:
    """Occupy the writer thread until the returned event is set, so jobs queue up behind."""
    started, release = threading.Event(), threading.Event()

    def job(db) -> None:
        started.set()
        release.wait(DEADLINE)

    held = database.write_soon(job)
    assert started.wait(DEADLINE)
    return held, release


def fetch_row(**changes: object) -> tuple:
    row = {**ROW, **changes}
    return tuple(row[column] for column in queries.FETCH_COLUMNS)


def test_a_dead_writer_fails_every_waiting_and_later_write_at_once(database: Database) -> None:
    _, release = hold_the_writer(database)
    killer = database.write_soon(kill_the_writer)
    waiting = [database.write_soon(lambda db: "written") for _ in range(3)]
    release.set()
    for future in [killer, *waiting]:
        error = future.exception(DEADLINE)
        assert isinstance(error, DatabaseUnavailable), error
        assert "database writer stopped (WriterKilled: killed by the test)" in str(error)

    async def write_later() -> None:
        await asyncio.wait_for(database.write(lambda db: "written"), DEADLINE)

    with pytest.raises(DatabaseUnavailable, match="Restart debcache serve"):
        asyncio.run(write_later())
    database.log_fetch(fetch_row())  # dropped, not queued for ever: no error either


def test_health_answers_503_with_the_reason_when_the_writer_died(
    tmp_path: Path, mirror: FakeMirror
) -> None:
    config = make_config(tmp_path / "data", {"debian": [f"{mirror.url}/debian"]})

    async def scenario() -> None:
        app = create_app(config)
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as client:
            async with client.get(server.make_url("/_/health")) as reply:
                assert reply.status == 200
            killer = app[DATABASE].write_soon(kill_the_writer)
            with pytest.raises(DatabaseUnavailable):
                await asyncio.wait_for(asyncio.wrap_future(killer), DEADLINE)
            async with client.get(server.make_url("/_/health")) as reply:
                body = await reply.text()
                assert reply.status == 503, body
                assert body.count("\n") == 1 and "database writer stopped" in body, body

    asyncio.run(scenario())


def test_a_non_transient_error_fails_at_once_and_spoils_no_other_write(
    database: Database, tmp_path: Path
) -> None:
    """A fetch-log row that breaks a constraint is lost alone, at once: no retries for
    seconds, and the rows and jobs of its group are committed."""
    _, release = hold_the_writer(database)
    database.log_fetch(fetch_row(upstream=None))  # NOT NULL: fails the same way every time
    database.log_fetch(fetch_row(path="pool/good.deb"))
    violation = database.write_soon(
        lambda db: db.execute("INSERT INTO branches (name) VALUES ('no manifest')")
    )
    job = database.write_soon(lambda db: "written")
    release.set()
    assert job.result(DEADLINE) == "written"
    assert "NOT NULL constraint failed" in str(violation.exception(DEADLINE))
    connection = queries.connect(tmp_path / "debcache.db")
    try:
        assert [row["path"] for row in queries.fetches(connection, "r")] == ["pool/good.deb"]
    finally:
        connection.conn.close()
