"""Keeping the fetch log bounded: rows older than `[server] fetch_log_days` are pruned.

What goes (docs/decisions.md, "Fetch-log retention"): unrecorded rows by their
time; a recording only whole, once its newest row is older than the cut-off, so a
later freeze of a recording never meets half of it; never the rows of a recording
that a manifest was frozen from, while such a manifest exists. `debcache gc`
prunes, and `serve` prunes shortly after it starts and then once a day.

The deletes go in id windows of `PRUNE_BATCH_IDS`, a transaction each, so the
server's one writer thread (or a running server, while `gc` prunes) waits for one
small batch at most, never for the whole prune.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import sqlite_utils

from . import db as queries
from .config import Config
from .db import Database

log = logging.getLogger(__name__)

DAY = 86400.0
PRUNE_BATCH_IDS = 1000  # ids per transaction: ~30 ms of the writer at 1M rows (decisions.md)
FIRST_PRUNE_DELAY = 2.0  # seconds after start: the sockets listen first
PRUNE_INTERVAL = DAY
RETRY_INTERVAL = 3600.0  # after a prune failed (a locked database, a full disk)


def cutoff(days: int, now: float | None = None) -> float:
    """The time before which rows may be pruned."""
    return (time.time() if now is None else now) - days * DAY


def fetch_log_extent(db: sqlite_utils.Database, days: int) -> dict:
    """How far back the fetch log goes: the time of its oldest row that pruning may
    remove (None when there is none) and the days it keeps."""
    return {"since": queries.fetch_log_since(db), "days": days}


def _windows(ids: tuple[int, int] | None) -> Iterator[tuple[int, int]]:
    """(first_id, end_id) windows covering the ids of the rows to prune."""
    if ids is None:
        return
    first, last = ids
    for start in range(first, last + 1, PRUNE_BATCH_IDS):
        yield start, start + PRUNE_BATCH_IDS


def prune_fetch_log(
    db: sqlite_utils.Database, days: int, dry_run: bool = False, now: float | None = None
) -> int:
    """Prune the fetch log on this connection, one transaction per batch (`debcache gc`);
    the rows removed, or with `dry_run` the rows that would be."""
    before = cutoff(days, now)
    recordings = queries.prunable_recordings(db, before)
    if dry_run:
        return queries.count_prunable_fetches(db, before, recordings)
    removed = 0
    for first_id, end_id in _windows(queries.prunable_fetch_ids(db, before, recordings)):
        removed += queries.prune_fetches(db, first_id, end_id, before, recordings)
    return removed


async def prune_fetch_log_served(database: Database, days: int, now: float | None = None) -> int:
    """Prune through the server's `Database`: the planning on a reader thread, each batch
    a job of its own for the writer thread; the rows removed."""
    before = cutoff(days, now)
    recordings = await database.read(queries.prunable_recordings, before)
    ids = await database.read(queries.prunable_fetch_ids, before, recordings)
    removed = 0
    for first_id, end_id in _windows(ids):
        removed += await database.write(queries.prune_fetches, first_id, end_id, before, recordings)
    return removed


async def prune_daily(
    database: Database, config: Config, first_delay: float = FIRST_PRUNE_DELAY
) -> None:
    """Prune shortly after start, then once a day, until cancelled."""
    await asyncio.sleep(first_delay)
    while True:
        try:
            removed = await prune_fetch_log_served(database, config.fetch_log_days)
        except Exception:  # the next attempt may fare better; serving goes on meanwhile
            log.exception("pruning the fetch log failed; trying again in an hour")
            await asyncio.sleep(RETRY_INTERVAL)
            continue
        if removed:
            log.info("pruned %d fetch-log rows older than %d days", removed, config.fetch_log_days)
        await asyncio.sleep(PRUNE_INTERVAL)


def start_daily_prune(database: Database, config: Config) -> asyncio.Task:
    """`prune_daily` as a task of the running loop; its owner cancels it with
    `stop_daily_prune` before the database closes."""
    return asyncio.get_running_loop().create_task(
        prune_daily(database, config), name="fetch-log pruning"
    )


async def stop_daily_prune(task: asyncio.Task) -> None:
    """Cancel the pruning task and wait for it (a batch under way is committed or not)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
