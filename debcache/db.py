"""The SQLite schema (WAL) and every query; one writer thread, a connection per reader thread.

A `sqlite_utils.Database` keeps sqlite3's same-thread check, so connections are
never shared: writes go through `Database.write` (one thread, group commits),
reads through `Database.read` (a connection per reader thread, closed with the
`Database`). Query functions take the `sqlite_utils.Database` they run on, so the
CLI can call them directly; its read-only commands use `connect_read_only`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import queue
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 512
# How long the writer retries a group whose transaction meets a lock (a backup tool, an
# operator's sqlite3) before its fetch-log rows go to the journal and its jobs fail.
WRITE_RETRY_SECONDS = 60.0
JOURNAL_NAME = "fetchlog-journal.jsonl"
JOURNAL_RETRY_CAP = 2.0  # seconds between attempts to replay the journal, at most
# Jobs and rows queued behind a group that meets a lock, at most: beyond, the group's
# rows go to the journal now, and the queued ones after them (memory stays bounded).
MAX_WAITING = 20_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS cached (
    upstream TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    last_modified TEXT,          -- the upstream's header, sent back as If-Modified-Since
    etag TEXT,                   -- the upstream's, sent back as If-None-Match
    fetched_at REAL NOT NULL,
    validated_at REAL,           -- last 304 from the upstream: fresh for its coalesce_window
    PRIMARY KEY (upstream, path)
);
CREATE TABLE IF NOT EXISTS pool_hashes (
    upstream TEXT NOT NULL,
    path TEXT NOT NULL,          -- Filename of a Packages stanza
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (upstream, path)
);
CREATE TABLE IF NOT EXISTS fetches (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    client TEXT,
    recording TEXT,
    upstream TEXT NOT NULL,
    path TEXT NOT NULL,
    method TEXT NOT NULL,
    status INTEGER NOT NULL,
    sha256 TEXT,
    size INTEGER,
    source TEXT NOT NULL,        -- hit, miss, coalesced, stale, upstream, error
    duration REAL NOT NULL,
    complete INTEGER NOT NULL    -- 1 when the client received the whole response
);
CREATE INDEX IF NOT EXISTS fetches_by_recording ON fetches (recording, upstream, path);
CREATE INDEX IF NOT EXISTS fetches_by_time ON fetches (time);  -- status: the last 24 hours
CREATE TABLE IF NOT EXISTS manifests (
    id TEXT PRIMARY KEY,         -- sha256 of the canonical JSON of the entries
    label TEXT,
    created REAL NOT NULL,
    recordings TEXT NOT NULL,    -- JSON list of the recordings it was frozen from
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    releases TEXT NOT NULL,      -- JSON: "upstream suite" -> {date, sha256, path}
    unverified TEXT NOT NULL,    -- JSON list of entries let in by --allow-unverified
    completed TEXT NOT NULL DEFAULT '[]',  -- JSON list of "upstream/path" no recording fetched
    warnings TEXT NOT NULL DEFAULT '[]'  -- JSON list: what freeze warned of (a probe left out)
);
CREATE TABLE IF NOT EXISTS manifest_entries (
    manifest_id TEXT NOT NULL REFERENCES manifests (id),
    upstream TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    -- what the frozen Packages index says of a pool file (not part of the id):
    package TEXT,
    version TEXT,
    architecture TEXT,
    suite TEXT,
    PRIMARY KEY (manifest_id, upstream, path)
);
CREATE TABLE IF NOT EXISTS branches (
    name TEXT PRIMARY KEY,
    manifest_id TEXT NOT NULL REFERENCES manifests (id),
    previous_id TEXT REFERENCES manifests (id),  -- fills gaps during the grace period
    changed REAL NOT NULL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS branch_history (
    id INTEGER PRIMARY KEY,
    branch TEXT NOT NULL,
    action TEXT NOT NULL,        -- promote or rollback
    manifest_id TEXT NOT NULL REFERENCES manifests (id),
    previous_id TEXT,
    time REAL NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS branch_history_by_branch ON branch_history (branch, id);
CREATE TABLE IF NOT EXISTS resigned (
    manifest_id TEXT NOT NULL,
    upstream TEXT NOT NULL,
    suite TEXT NOT NULL,
    name TEXT NOT NULL,          -- InRelease, Release or Release.gpg, signed by debcache
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (manifest_id, upstream, suite, name)
);
-- Indices a Release lists that the upstream answered 404 for (Debian's uncompressed
-- Packages): freeze asks once per content, not at every freeze.
CREATE TABLE IF NOT EXISTS absent_files (
    upstream TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (upstream, path, sha256)
);
-- Fetch-log journals replayed (FetchJournal): a journal committed but not yet removed
-- when the process died is not replayed twice.
CREATE TABLE IF NOT EXISTS fetchlog_journals (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL
);
-- What the last `debcache verify` found of each branch's manifest (the status page).
CREATE TABLE IF NOT EXISTS branch_checks (
    branch TEXT PRIMARY KEY,
    manifest_id TEXT NOT NULL,   -- the manifest the branch served then
    time REAL NOT NULL,
    blobs INTEGER NOT NULL,      -- distinct blobs of that manifest
    lost INTEGER NOT NULL        -- of them, neither in the store nor fetched back
);
"""


def connect(path: Path, check_same_thread: bool = True) -> sqlite_utils.Database:
    """A connection for the calling thread only (closable from another: check_same_thread)."""
    conn = sqlite3.connect(path, timeout=30, check_same_thread=check_same_thread)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
    return sqlite_utils.Database(conn)


def connect_read_only(path: Path) -> sqlite_utils.Database:
    """A connection that writes nothing, no schema and no file, so that it works for a
    user who may only read the data dir and leaves no file of theirs behind.

    With a -wal file there, a connection has the database open (a server) or had it
    (a crash): read through the WAL and its -shm index (`mode=ro`). Without one, nobody
    has it open (the last connection to close checkpointed the WAL into the file and
    removed it), so the file alone is the whole database: read it `immutable`, which
    creates no -wal or -shm. See docs/decisions.md, "The database".
    """
    uri = path.resolve().as_uri()
    if path.with_name(path.name + "-wal").exists():
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
    else:
        conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
    return sqlite_utils.Database(conn)


# Columns added after a release: (table, column, definition) for databases made before.
# Indexes need no entry: SCHEMA creates each IF NOT EXISTS at every open, which builds a
# new one on an old database too (one on an added column belongs in migrate(), after it).
ADDED_COLUMNS = (
    ("cached", "validated_at", "REAL"),
    ("manifests", "completed", "TEXT NOT NULL DEFAULT '[]'"),
    ("manifests", "warnings", "TEXT NOT NULL DEFAULT '[]'"),
)
TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))


def create_schema(path: Path) -> None:
    db = connect(path)
    db.enable_wal()
    db.conn.executescript(SCHEMA)
    migrate(db)
    db.conn.close()


def schema_lacks(db: sqlite_utils.Database) -> list[str]:
    """The tables and added columns this debcache needs that the database lacks: what a
    read-only command, which may not migrate, finds in one made by an older version."""
    tables = set(db.table_names())
    lacks = [table for table in TABLES if table not in tables]
    lacks += [
        f"{table}.{column}"
        for table, column, _ in ADDED_COLUMNS
        if table in tables and column not in db[table].columns_dict
    ]
    return lacks


def migrate(db: sqlite_utils.Database) -> None:
    """Add the columns a database made by an older debcache lacks."""
    for table, column, definition in ADDED_COLUMNS:
        if column not in db[table].columns_dict:
            try:
                db.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise


class Database:
    """The server's access to debcache.db: one writer thread, thread-local readers."""

    def __init__(
        self, path: Path, retry_seconds: float = WRITE_RETRY_SECONDS, journal: str | None = None
    ) -> None:
        """journal: the file name of this process's fetch-log journal, if not the default
        (each of several server processes writes its own)."""
        self.path = path
        self.retry_seconds = retry_seconds
        self.journal = FetchJournal(path.with_name(journal or JOURNAL_NAME))
        self._jobs: queue.SimpleQueue[tuple[Callable, tuple, Future] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="db-writer", daemon=True)
        # Set once when the writer thread dies; under _queueing, so that no job is queued
        # after the dead writer failed the queue (it would wait forever).
        self.failure: DatabaseUnavailable | None = None
        self._queueing = threading.Lock()
        self._in_progress: list[Future] = []  # the writer's current group
        self._reading = ThreadPoolExecutor(thread_name_prefix="db-reader")
        self._readers = threading.local()
        self._reader_connections: list[sqlite_utils.Database] = []

    def open(self) -> Database:
        create_schema(self.path)
        # A process died with rows on disk: replay them first (this process's name, or
        # one of a server process that is gone).
        leftovers = [j for j in orphaned_journals(self.path.parent) if j.path != self.journal.path]
        if self.journal.pending() or leftovers:
            db = connect(self.path)
            try:
                for journal in leftovers:
                    journal.replay(db)
                if self.journal.pending():
                    self.journal.replay(db)
            finally:
                db.conn.close()
        self._writer.start()
        return self

    def close(self) -> None:
        """Commit what is queued, stop the writer, and close the readers' connections
        once the reads under way have finished."""
        if self._writer.is_alive():
            self._put(None)
            self._writer.join()
        self._reading.shutdown(wait=True)
        for db in self._reader_connections:
            db.conn.close()
        self._reader_connections.clear()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(db, *args)` on the writer thread, in a transaction; await its result.

        Raises DatabaseUnavailable at once when the writer thread has died."""
        return await asyncio.wrap_future(self.write_soon(fn, *args))

    def write_soon(self, fn: Callable[..., T], *args: Any) -> Future:
        """Queue `fn(db, *args)` for the writer; it is committed with the next group."""
        future: Future = Future()
        if not self._put((fn, args, future)):
            future.set_exception(self._unavailable())
        return future

    def log_fetch(self, row: tuple) -> None:
        """Queue a fetch-log row (values in FETCH_COLUMNS order); no result to wait for.

        The hot path: one per request, so no Future and no savepoint of its own, one
        executemany for all the rows of a group. When the writer has died (/_/health
        says so), it goes to the journal, replayed at the next start.
        """
        if not self._put(FetchRow(row)):
            with self._queueing:  # the writer no longer appends: the callers take turns
                self._journal_rows([row])

    def _put(self, job: Any) -> bool:
        """Queue a job for a live writer; False when it has died."""
        with self._queueing:
            if self.failure is not None:
                return False
            self._jobs.put(job)
            return True

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(db, *args)` on a reader thread with that thread's own connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reading, functools.partial(self._read, fn, *args))

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        db = getattr(self._readers, "db", None)
        if db is None:
            # Used by this thread only, closed by close() once the readers are done.
            db = self._readers.db = connect(self.path, check_same_thread=False)
            self._reader_connections.append(db)
        return fn(db, *args)

    def _write_loop(self) -> None:
        try:
            self._write_until_closed()
        except BaseException as exc:  # the thread ends here: say why to every writer
            self._fail_queued(exc)

    def _fail_queued(self, cause: BaseException) -> None:
        """The writer died: fail every job queued and, through `failure`, every later one."""
        log.error("the database writer stopped", exc_info=cause)
        reason = str(cause).splitlines()[0] if str(cause) else ""
        failure = DatabaseUnavailable(
            f"the database writer stopped ({type(cause).__name__}: {reason})",
            "restart debcache serve; its log has the details",
        )
        failure.__cause__ = cause
        with self._queueing:
            self.failure = failure
        rows = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, FetchRow):
                rows.append(job)
            elif job is not None and job[2].set_running_or_notify_cancel():
                job[2].set_exception(self._unavailable())
        for future in self._in_progress:
            if not future.done():
                future.set_exception(self._unavailable())
        if rows:
            with self._queueing:  # log_fetch may append too, now that `failure` is set
                self._journal_rows(rows)

    def _journal_rows(self, rows: list[tuple]) -> None:
        """Rows the dead writer will never commit: on disk, replayed at the next start."""
        try:
            self.journal.append(rows)
        except OSError as exc:
            log.error("lost %d fetch-log rows: %s", len(rows), exc)
            return
        log.error("%d fetch-log rows wait in %s for the next start", len(rows), self.journal.path)

    def _unavailable(self) -> DatabaseUnavailable:
        """A fresh copy of `failure` for one caller (a raise extends its traceback)."""
        assert self.failure is not None
        error = DatabaseUnavailable(self.failure.cause, self.failure.remedy)
        error.__cause__ = self.failure.__cause__
        return error

    def _write_until_closed(self) -> None:
        db = connect(self.path)
        # Each attempt waits at most this long for a lock; the retries make up the rest
        # (and between them the writer sees how much is waiting).
        db.conn.execute(f"PRAGMA busy_timeout = {int(min(self.retry_seconds, 5.0) * 1000)}")
        running = True
        while running:
            batch = self._next_batch()
            if None in batch:
                running = False
                batch = [job for job in batch if job is not None]
            if self.journal.due() or (not running and self.journal.pending()):
                self.journal.replay(db)
            rows = [job for job in batch if isinstance(job, FetchRow)]
            jobs = [job for job in batch if not isinstance(job, FetchRow)]
            if rows and self.journal.pending():  # behind the journal's, in order
                self.journal.append(rows)
                rows = []
            self._in_progress = [future for _, _, future in jobs]
            self._run_batch(db, jobs, rows)
            self._in_progress = []
        db.conn.close()

    def _next_batch(self) -> list:
        """The next group of jobs; empty when the journal is due for a replay first."""
        try:
            batch = [self._jobs.get(timeout=self.journal.wait())]
        except queue.Empty:
            return []
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run_batch(self, db: sqlite_utils.Database, batch: list, rows: list[tuple]) -> None:
        # A future cancelled meanwhile (its awaiter went away at shutdown) is skipped.
        batch = [job for job in batch if job[2].set_running_or_notify_cancel()]
        if not batch and not rows:
            return
        deadline = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            try:
                results = self._run_in_one_transaction(db, batch, rows)
                break
            except sqlite3.Error as exc:
                # Busy or locked past the busy timeout (a long CLI transaction, a backup):
                # wait and retry the whole group. When that takes too long, or for any
                # other error, the jobs fail and the rows wait in the journal on disk.
                left = deadline - time.monotonic()
                if not is_transient(exc) or left <= 0 or self._jobs.qsize() > MAX_WAITING:
                    if rows:
                        log.warning(
                            "%d fetch-log rows wait in %s (%s); written when the database "
                            "takes writes again",
                            len(rows),
                            self.journal.path,
                            exc,
                        )
                        self.journal.append(rows)
                    results = [(future, None, exc) for _, _, future in batch]
                    break
                log.warning("database write failed (%s), attempt %d", exc, attempt + 1)
                time.sleep(min(0.1 * 2**attempt, 5.0, left))
                attempt += 1
        for future, result, error in results:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    @staticmethod
    def _run_in_one_transaction(db: sqlite_utils.Database, batch: list, rows: list) -> list:
        """One transaction, one commit; each job in a savepoint, so one bad job spoils none."""
        results = []
        with db.atomic():
            if rows:
                _insert_fetch_rows(db, rows)
            for fn, args, future in batch:
                try:
                    with db.atomic():
                        results.append((future, fn(db, *args), None))
                except sqlite3.Error as exc:
                    if is_transient(exc):
                        raise  # busy or locked: the whole group is retried
                    results.append((future, None, exc))
                except Exception as exc:
                    results.append((future, None, exc))
        return results


def _insert_fetch_rows(db: sqlite_utils.Database, rows: list[tuple]) -> None:
    """All the rows in one statement; when one is bad (a bug), all but it, one by one."""
    try:
        with db.atomic():
            db.conn.executemany(INSERT_FETCH, rows)
        return
    except sqlite3.Error as exc:
        if is_transient(exc):
            raise
    for row in rows:
        try:
            with db.atomic():
                db.conn.execute(INSERT_FETCH, row)
        except sqlite3.Error as exc:
            if is_transient(exc):
                raise
            log.error("lost a fetch-log row (%s): %r", exc, row)


class FetchJournal:
    """Fetch-log rows the database would not take (locked for longer than the writer's
    retries), one JSON list a line after a header line with the journal's id; appended
    and fsynced by the writer thread, replayed in order when the database takes writes.

    The replay commits the rows and the journal's id in one transaction, so a process
    killed after that commit and before the file is removed replays nothing twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending = path.exists()  # the writer thread's alone once it runs: no stat
        self._next_try = 0.0  # monotonic time of the next replay attempt
        self._backoff = 0.1

    def pending(self) -> bool:
        return self._pending

    def due(self) -> bool:
        return self.pending() and time.monotonic() >= self._next_try

    def wait(self) -> float | None:
        """How long the writer may wait for a job before it should replay; None: for ever."""
        if not self.pending():
            return None
        return max(0.0, self._next_try - time.monotonic())

    def append(self, rows: list[tuple]) -> None:
        new = not self.path.exists()
        lines = [json.dumps({"journal": uuid.uuid4().hex})] if new else []
        lines += [json.dumps(list(row)) for row in rows]
        with open(self.path, "a", encoding="utf-8") as journal:
            journal.write("".join(line + "\n" for line in lines))
            journal.flush()
            os.fsync(journal.fileno())
        if new:  # its name must be durable too
            _fsync_directory(self.path.parent)
        self._pending = True

    def replay(self, db: sqlite_utils.Database) -> bool:
        """Write the journal's rows and remove it; False when the database is still locked."""
        try:
            journal_id, rows = self._read()
        except FileNotFoundError:  # another process replayed an orphan first
            self._pending = False
            return True
        busy_timeout = db.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        db.conn.execute("PRAGMA busy_timeout = 100")  # the writer has new rows to journal
        try:
            with db.atomic():
                done = (
                    journal_id is not None
                    and db.conn.execute(
                        "SELECT 1 FROM fetchlog_journals WHERE id = ?", (journal_id,)
                    ).fetchone()
                )
                if not done:
                    _insert_fetch_rows(db, rows)
                    if journal_id is not None:
                        db.conn.execute(
                            "INSERT INTO fetchlog_journals (id, time) VALUES (?, ?)",
                            (journal_id, time.time()),
                        )
        except sqlite3.Error as exc:
            self._backoff = min(self._backoff * 2, JOURNAL_RETRY_CAP)
            self._next_try = time.monotonic() + self._backoff
            log.warning("%d fetch-log rows still wait in %s (%s)", len(rows), self.path, exc)
            return False
        finally:
            db.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout)}")
        self.path.unlink(missing_ok=True)
        _fsync_directory(self.path.parent)
        self._pending = False
        self._backoff, self._next_try = 0.1, 0.0
        log.warning("wrote %d fetch-log rows from %s", len(rows), self.path)
        return True

    def _read(self) -> tuple[str | None, list[tuple]]:
        """The journal's id and rows; a torn last line (a crash mid-append) is skipped."""
        journal_id, rows = None, []
        with open(self.path, encoding="utf-8") as journal:
            for number, line in enumerate(journal):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: line %d is torn; skipped", self.path, number + 1)
                    continue
                if number == 0 and isinstance(value, dict):
                    journal_id = str(value.get("journal"))
                elif isinstance(value, list):
                    rows.append(tuple(value))
        return journal_id, rows


def orphaned_journals(directory: Path) -> list[FetchJournal]:
    """The journals of server processes that have exited (`fetchlog-journal.PID.jsonl`)."""
    orphans = []
    for path in directory.glob("fetchlog-journal.*.jsonl"):
        pid = path.name.split(".")[1]
        if pid.isdigit() and not _process_exists(int(pid)):
            orphans.append(FetchJournal(path))
    return orphans


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FetchRow(tuple):
    """A fetch-log row queued for the writer (a tuple in FETCH_COLUMNS order)."""

    __slots__ = ()


def is_transient(error: sqlite3.Error) -> bool:
    """Busy or locked (another connection's transaction): worth retrying later.

    Anything else (a constraint, a bad statement, a full disk, an I/O error, a closed
    connection) fails the same way again, so its callers hear of it at once."""
    name = getattr(error, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


# --- queries ----------------------------------------------------------------------


def cached_row(db: sqlite_utils.Database, upstream: str, path: str) -> dict | None:
    cursor = db.conn.execute(
        "SELECT * FROM cached WHERE upstream = ? AND path = ?", (upstream, path)
    )
    row = cursor.fetchone()
    return dict(zip([c[0] for c in cursor.description], row, strict=True)) if row else None


def mark_validated(db: sqlite_utils.Database, upstream: str, path: str, when: float) -> None:
    db.conn.execute(
        "UPDATE cached SET validated_at = ? WHERE upstream = ? AND path = ?", (when, upstream, path)
    )


def load_cached(db: sqlite_utils.Database) -> list[dict]:
    return list(db.query("SELECT * FROM cached"))


def upsert_cached(db: sqlite_utils.Database, row: dict) -> None:
    db["cached"].upsert(row, pk=("upstream", "path"))


def add_pool_hashes(
    db: sqlite_utils.Database, upstream: str, entries: Iterable[tuple[str, int, str]]
) -> int:
    rows = [
        {"upstream": upstream, "path": path, "size": size, "sha256": sha256}
        for path, size, sha256 in entries
    ]
    db["pool_hashes"].upsert_all(rows, pk=("upstream", "path"), batch_size=1000)
    return len(rows)


def pool_hash(db: sqlite_utils.Database, upstream: str, path: str) -> tuple[str, int] | None:
    row = db.execute(
        "SELECT sha256, size FROM pool_hashes WHERE upstream = ? AND path = ?", [upstream, path]
    ).fetchone()
    return (row[0], row[1]) if row else None


FETCH_COLUMNS = (
    "time", "client", "recording", "upstream", "path", "method", "status", "sha256", "size",
    "source", "duration", "complete",
)  # fmt: skip
INSERT_FETCH = "INSERT INTO fetches ({}) VALUES ({})".format(
    ", ".join(FETCH_COLUMNS), ", ".join("?" * len(FETCH_COLUMNS))
)


def _received(row: str = "fetches") -> str:
    """A file counts as received when its client got the whole body."""
    return (
        f"{row}.complete = 1 AND {row}.method = 'GET' AND {row}.status IN (200, 206, 304) "
        f"AND {row}.sha256 IS NOT NULL"
    )


def _failed(row: str) -> str:
    """A request that got no whole success answer (a HEAD's 200 is not a failure)."""
    return f"({row}.complete = 0 OR {row}.status NOT IN (200, 206, 304))"


def recorded_files(db: sqlite_utils.Database, recordings: list[str]) -> list[dict]:
    """Distinct (upstream, path, sha256, size) that the recordings' clients received whole."""
    marks = ",".join("?" * len(recordings))
    return list(
        db.query(
            f"""SELECT DISTINCT upstream, path, sha256, size FROM fetches
            WHERE recording IN ({marks}) AND {_received()}
            ORDER BY upstream, path""",
            recordings,
        )
    )


def failed_fetches(db: sqlite_utils.Database, recordings: list[str] | None = None) -> list[dict]:
    """Per recording (all when None), each path it asked for and never received whole,
    with the status and completeness of the last attempt."""
    where, arguments = "f.recording IS NOT NULL", []
    if recordings is not None:
        where, arguments = f"f.recording IN ({','.join('?' * len(recordings))})", recordings
    return list(
        db.query(
            f"""SELECT f.recording, f.upstream, f.path, f.status, f.complete, MAX(f.id) AS last
            FROM fetches f WHERE {where} AND {_failed("f")}
            AND NOT EXISTS (SELECT 1 FROM fetches g WHERE g.recording = f.recording
                AND g.upstream = f.upstream AND g.path = f.path AND {_received("g")})
            GROUP BY f.recording, f.upstream, f.path
            ORDER BY f.recording, f.upstream, f.path""",
            arguments,
        )
    )


def received_dists_paths(db: sqlite_utils.Database, recordings: list[str]) -> set[tuple]:
    """(recording, upstream, path) of every dists/ file the recordings received whole."""
    marks = ",".join("?" * len(recordings))
    rows = db.execute(
        f"""SELECT DISTINCT recording, upstream, path FROM fetches
        WHERE recording IN ({marks}) AND path LIKE 'dists/%' AND {_received()}""",
        recordings,
    ).fetchall()
    return {tuple(row) for row in rows}


def recording_summaries(db: sqlite_utils.Database, limit: int | None = None) -> list[dict]:
    """One row per recording, newest first (the `limit` newest when given): first/last
    fetch, files received, clients, upstreams."""
    return list(
        db.query(
            f"""SELECT recording, MIN(time) AS first, MAX(time) AS last,
            COUNT(DISTINCT CASE WHEN {_received()} THEN upstream || '/' || path END) AS files,
            COUNT(DISTINCT client) AS clients,
            GROUP_CONCAT(DISTINCT upstream) AS upstreams
            FROM fetches WHERE recording IS NOT NULL
            GROUP BY recording ORDER BY MAX(time) DESC LIMIT ?""",
            [-1 if limit is None else limit],
        )
    )


def cached_sha256(db: sqlite_utils.Database, upstream: str, path: str) -> str | None:
    row = db.execute(
        "SELECT sha256 FROM cached WHERE upstream = ? AND path = ?", [upstream, path]
    ).fetchone()
    return row[0] if row else None


def insert_manifest(db: sqlite_utils.Database, manifest: dict, entries: list[dict]) -> bool:
    """Store a manifest and its entries in one transaction; False if that id existed."""
    with db.conn:
        cursor = db.conn.execute(
            """INSERT OR IGNORE INTO manifests
            (id, label, created, recordings, files, bytes, releases, unverified, completed,
            warnings)
            VALUES (:id, :label, :created, :recordings, :files, :bytes, :releases, :unverified,
            :completed, :warnings)""",
            {"completed": "[]", "warnings": "[]", **manifest},
        )
        if cursor.rowcount == 0:
            return False
        db.conn.executemany(
            """INSERT INTO manifest_entries
            (manifest_id, upstream, path, sha256, size, package, version, architecture, suite)
            VALUES (:manifest_id, :upstream, :path, :sha256, :size, :package, :version,
            :architecture, :suite)""",
            [{**entry, "manifest_id": manifest["id"]} for entry in entries],
        )
    return True


def set_manifest_label(db: sqlite_utils.Database, manifest_id: str, label: str) -> None:
    """A label is not part of the id: a second freeze of the same set may rename it."""
    with db.conn:
        db.conn.execute("UPDATE manifests SET label = ? WHERE id = ?", [label, manifest_id])


def manifest_rows(db: sqlite_utils.Database) -> list[dict]:
    return list(db.query("SELECT * FROM manifests ORDER BY created DESC"))


def manifest_ids_with_prefix(db: sqlite_utils.Database, prefix: str) -> list[str]:
    return [
        row[0]
        for row in db.execute(
            "SELECT id FROM manifests WHERE id LIKE ? ORDER BY id", [prefix.lower() + "%"]
        ).fetchall()
    ]


def manifest_row(db: sqlite_utils.Database, manifest_id: str) -> dict | None:
    rows = list(db.query("SELECT * FROM manifests WHERE id = ?", [manifest_id]))
    return rows[0] if rows else None


def manifest_entries(db: sqlite_utils.Database, manifest_id: str) -> list[dict]:
    return list(
        db.query(
            """SELECT upstream, path, sha256, size, package, version, architecture, suite
            FROM manifest_entries WHERE manifest_id = ? ORDER BY upstream, path""",
            [manifest_id],
        )
    )


def set_branch(
    db: sqlite_utils.Database,
    branch: str,
    action: str,
    manifest_id: str,
    note: str | None,
    now: float,
) -> str | None:
    """Point a branch at a manifest and log it, atomically; the id it pointed at before."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")  # concurrent promotes of one branch serialize here
        row = db.conn.execute(
            "SELECT manifest_id, changed FROM branches WHERE name = ?", [branch]
        ).fetchone()
        previous = row[0] if row else None
        # Pinned paths are dated by the branch's last change, in whole seconds as HTTP
        # dates are: each change gets a second of its own, so a client holding the
        # state before it never gets a 304.
        now = max(math.ceil(now), math.ceil(row[1]) + 1) if row else math.ceil(now)
        db.conn.execute(
            """INSERT INTO branches (name, manifest_id, previous_id, changed, note)
            VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET manifest_id = excluded.manifest_id,
            previous_id = excluded.previous_id, changed = excluded.changed, note = excluded.note""",
            [branch, manifest_id, previous, now, note],
        )
        db.conn.execute(
            """INSERT INTO branch_history (branch, action, manifest_id, previous_id, time, note)
            VALUES (?, ?, ?, ?, ?, ?)""",
            [branch, action, manifest_id, previous, now, note],
        )
    return previous


def data_version(db: sqlite_utils.Database) -> int:
    """Changes whenever another connection commits (SQLite's PRAGMA data_version)."""
    return db.conn.execute("PRAGMA data_version").fetchone()[0]


def branch_row(db: sqlite_utils.Database, branch: str) -> dict | None:
    rows = list(db.query("SELECT * FROM branches WHERE name = ?", [branch]))
    return rows[0] if rows else None


def branch_rows(db: sqlite_utils.Database) -> list[dict]:
    return list(
        db.query(
            """SELECT b.*, m.label, m.files, m.bytes FROM branches b
            JOIN manifests m ON m.id = b.manifest_id ORDER BY b.name"""
        )
    )


def branch_history(db: sqlite_utils.Database, branch: str, limit: int = 1000) -> list[dict]:
    """Newest first."""
    return list(
        db.query(
            "SELECT * FROM branch_history WHERE branch = ? ORDER BY id DESC LIMIT ?",
            [branch, limit],
        )
    )


def save_branch_checks(db: sqlite_utils.Database, rows: list[dict]) -> None:
    """Replace what the last verify found (rows of branch_checks) with this one's."""
    with db.conn:
        db.conn.execute("DELETE FROM branch_checks")
        db.conn.executemany(
            """INSERT INTO branch_checks (branch, manifest_id, time, blobs, lost)
            VALUES (:branch, :manifest_id, :time, :blobs, :lost)""",
            rows,
        )


def branch_checks(db: sqlite_utils.Database) -> dict[str, dict]:
    """branch → what the last verify found of its manifest then."""
    return {row["branch"]: row for row in db.query("SELECT * FROM branch_checks")}


def resigned_files(
    db: sqlite_utils.Database, manifest_id: str, upstream: str, suite: str
) -> dict[str, tuple[str, int]]:
    rows = db.execute(
        """SELECT name, sha256, size FROM resigned
        WHERE manifest_id = ? AND upstream = ? AND suite = ?""",
        [manifest_id, upstream, suite],
    ).fetchall()
    return {name: (sha256, size) for name, sha256, size in rows}


def insert_resigned(db: sqlite_utils.Database, rows: list[dict]) -> None:
    db.conn.executemany(
        """INSERT OR IGNORE INTO resigned (manifest_id, upstream, suite, name, sha256, size)
        VALUES (:manifest_id, :upstream, :suite, :name, :sha256, :size)""",
        rows,
    )


def protected_sha256s(db: sqlite_utils.Database, recent: int) -> set[str]:
    """Blobs of manifests a branch points at, or pointed at within its last `recent` changes."""
    rows = db.execute(
        """WITH recent_history AS (
            SELECT manifest_id FROM (
                SELECT manifest_id, ROW_NUMBER() OVER (PARTITION BY branch ORDER BY id DESC) AS n
                FROM branch_history) WHERE n <= ?),
        protected AS (
            SELECT manifest_id FROM branches UNION SELECT previous_id FROM branches
            UNION SELECT manifest_id FROM recent_history)
        SELECT sha256 FROM manifest_entries
        WHERE manifest_id IN (SELECT manifest_id FROM protected)
        UNION SELECT sha256 FROM resigned
        WHERE manifest_id IN (SELECT manifest_id FROM protected)""",
        [recent],
    ).fetchall()
    return {row[0] for row in rows}


def blob_last_used(db: sqlite_utils.Database) -> dict[str, float]:
    """When each blob was last served, from the fetch log."""
    rows = db.execute(
        "SELECT sha256, MAX(time) FROM fetches WHERE sha256 IS NOT NULL GROUP BY sha256"
    ).fetchall()
    return dict(rows)


def forget_cached_blobs(db: sqlite_utils.Database, sha256s: list[str]) -> None:
    """Drop live-cache entries whose blob is going away (they will be fetched again)."""
    with db.conn:
        db.conn.executemany("DELETE FROM cached WHERE sha256 = ?", [[s] for s in sha256s])


def paths_of_blob(db: sqlite_utils.Database, sha256: str) -> list[tuple[str, str]]:
    """(upstream, path) pairs known to have this content: live cache and manifests."""
    rows = db.execute(
        """SELECT upstream, path FROM cached WHERE sha256 = ?
        UNION SELECT upstream, path FROM manifest_entries WHERE sha256 = ?""",
        [sha256, sha256],
    ).fetchall()
    return [(upstream, path) for upstream, path in rows]


def fetches(db: sqlite_utils.Database, recording: str | None = None) -> list[dict]:
    """Fetch-log rows, oldest first; only those of `recording` when given."""
    if recording is None:
        return list(db.query("SELECT * FROM fetches ORDER BY id"))
    return list(db.query("SELECT * FROM fetches WHERE recording = ? ORDER BY id", [recording]))


def has_manifests(db: sqlite_utils.Database) -> bool:
    return db.execute("SELECT 1 FROM manifests LIMIT 1").fetchone() is not None


def manifest_count(db: sqlite_utils.Database) -> int:
    return db.execute("SELECT COUNT(*) FROM manifests").fetchone()[0]


def recording_exists(db: sqlite_utils.Database, name: str) -> bool:
    return (
        db.execute("SELECT 1 FROM fetches WHERE recording = ? LIMIT 1", [name]).fetchone()
        is not None
    )


def recording_names(db: sqlite_utils.Database) -> set[str]:
    rows = db.execute("SELECT DISTINCT recording FROM fetches WHERE recording IS NOT NULL")
    return {row[0] for row in rows.fetchall()}


# --- fetch-log retention: what fetchlog_retention.py prunes ---------------------------

# The recordings some manifest was frozen from (manifests.recordings is a JSON list).
FROZEN_RECORDINGS = "SELECT j.value FROM manifests m, json_each(m.recordings) j"
# An old row that goes: unrecorded, or of a recording in the JSON list given. The unary +
# keeps SQLite off the recording index: for `recording IS NULL OR ...` it would walk every
# unrecorded entry there (seconds), rather than the id range or the time index.
_PRUNABLE = "(+recording IS NULL OR +recording IN (SELECT value FROM json_each(?)))"


def prunable_recordings(db: sqlite_utils.Database, cutoff: float) -> set[str]:
    """Recordings whose newest row is older than `cutoff` and that no manifest was frozen
    from: pruned whole. Only recordings with an old row are looked at: `+recording` keeps
    SQLite on the time index rather than walking the whole recording index."""
    rows = db.execute(
        f"""SELECT c.recording FROM (
            SELECT DISTINCT +recording AS recording FROM fetches
            WHERE time < :cutoff AND +recording IS NOT NULL
        ) c
        WHERE NOT EXISTS (
            SELECT 1 FROM fetches f WHERE f.recording = c.recording AND f.time >= :cutoff)
        AND c.recording NOT IN ({FROZEN_RECORDINGS})""",
        {"cutoff": cutoff},
    )
    return {row[0] for row in rows.fetchall()}


def prunable_fetch_ids(
    db: sqlite_utils.Database, cutoff: float, recordings: set[str]
) -> tuple[int, int] | None:
    """The lowest and highest id of the rows `prune_fetches` would delete; None when there
    are none. Not of every old row: the kept ones (frozen recordings) reach back years."""
    first, last = db.execute(
        f"""SELECT MIN(id), MAX(id) FROM fetches WHERE time < ? AND {_PRUNABLE}""",
        [cutoff, json.dumps(sorted(recordings))],
    ).fetchone()
    return None if first is None else (first, last)


def prune_fetches(
    db: sqlite_utils.Database, first_id: int, end_id: int, cutoff: float, recordings: set[str]
) -> int:
    """Delete, among ids first_id <= id < end_id, the rows older than `cutoff` that are
    unrecorded or of `recordings` (never of one a manifest was frozen from meanwhile), in
    one transaction (a savepoint on the writer thread); how many went."""
    with db.atomic():
        present = db.execute(
            """SELECT DISTINCT +recording FROM fetches
            WHERE id >= ? AND id < ? AND +recording IS NOT NULL""",
            [first_id, end_id],
        ).fetchall()
        names = sorted({row[0] for row in present} & recordings)
        # A manifest frozen from one of them since the plan was made keeps it.
        cursor = db.conn.execute(
            f"""DELETE FROM fetches WHERE id >= ? AND id < ? AND +time < ? AND {_PRUNABLE}
            AND (+recording IS NULL OR +recording NOT IN ({FROZEN_RECORDINGS}))""",
            [first_id, end_id, cutoff, json.dumps(names)],
        )
        return cursor.rowcount


def count_prunable_fetches(db: sqlite_utils.Database, cutoff: float, recordings: set[str]) -> int:
    """How many rows `prune_fetches` would delete over all ids (gc --dry-run)."""
    return db.execute(
        f"SELECT COUNT(*) FROM fetches WHERE time < ? AND {_PRUNABLE}",
        [cutoff, json.dumps(sorted(recordings))],
    ).fetchone()[0]


def fetch_log_since(db: sqlite_utils.Database) -> float | None:
    """The time of the oldest row that pruning may remove (not one of a recording a
    manifest was frozen from: those stay); None when there is none."""
    row = db.execute(  # ORDER BY + LIMIT: the time index, stopping at the first match
        f"""SELECT time FROM fetches
        WHERE recording IS NULL OR recording NOT IN ({FROZEN_RECORDINGS})
        ORDER BY time LIMIT 1"""
    ).fetchone()
    return row[0] if row else None


def served_by_source(db: sqlite_utils.Database, since: float) -> dict[str, dict[str, int]]:
    """Requests and bytes served whole since `since`, by source (hit, miss, pinned, ...)."""
    rows = db.execute(
        """SELECT source, COUNT(*), COALESCE(SUM(size), 0) FROM fetches
        WHERE time > ? AND complete = 1 GROUP BY source""",
        [since],
    ).fetchall()
    return {source: {"requests": count, "bytes": size} for source, count, size in rows}


def cached_totals(db: sqlite_utils.Database) -> tuple[int, int]:
    """Paths and bytes in the live cache (not the blobs freeze fetched: FileStore.totals)."""
    files, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cached").fetchone()
    return files, size


def suite_beyond_release(
    db: sqlite_utils.Database, manifest_id: str, upstream: str, suite: str
) -> bool:
    """Whether the manifest holds more of the suite than its Release forms (an index):
    without, the suite is a probe (debian-installer's mirror check)."""
    prefix = f"dists/{suite}/"
    release_forms = [prefix + name for name in ("InRelease", "Release", "Release.gpg")]
    row = db.execute(
        """SELECT 1 FROM manifest_entries WHERE manifest_id = ? AND upstream = ?
        AND path >= ? AND path < ? AND path NOT IN (?, ?, ?) LIMIT 1""",
        [manifest_id, upstream, prefix, prefix[:-1] + "0", *release_forms],
    ).fetchone()
    return row is not None


def branch_upstreams(db: sqlite_utils.Database) -> list[tuple[str, str]]:
    """(branch, upstream) for every upstream that a branch's current manifest holds files of."""
    return db.execute(
        """SELECT DISTINCT b.name, e.upstream FROM branches b
        JOIN manifest_entries e ON e.manifest_id = b.manifest_id ORDER BY b.name, e.upstream"""
    ).fetchall()


def absent_files(db: sqlite_utils.Database, upstream: str) -> set[tuple[str, str]]:
    """(path, sha256) of the files `upstream` answered 404 for when freeze asked."""
    rows = db.execute("SELECT path, sha256 FROM absent_files WHERE upstream = ?", [upstream])
    return {(path, sha256) for path, sha256 in rows.fetchall()}


def remember_absent(
    db: sqlite_utils.Database, upstream: str, files: Iterable[tuple[str, str]]
) -> None:
    """Keep the upstream's 404 for these files (their content: a new Release asks again)."""
    rows = [(upstream, path, sha256, time.time()) for path, sha256 in files]
    if rows:
        with db.conn:
            db.conn.executemany("INSERT OR REPLACE INTO absent_files VALUES (?, ?, ?, ?)", rows)
