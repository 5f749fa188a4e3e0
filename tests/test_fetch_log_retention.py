"""User story: the fetch log stays bounded, and never loses what a manifest came from.

Rows older than `[server] fetch_log_days` (90 by default) are pruned by
`debcache gc` and by `serve`, shortly after it starts and then daily: unrecorded
rows by their time, a recording only whole (once its newest row is old), and
never a recording that a manifest was frozen from. `debcache recordings` says
how far back the log goes. The rows are made by the real server, then dated in
the past with sqlite3 (the test's set-up; nothing else writes them).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from debcache_server import DebcacheServer, make_config
from fake_mirror import FakeMirror
from http_client import get
from processes import wait_until
from workflow import pin_a_recorded_inrelease, run

from debcache import db as queries
from debcache.cli import cli, day
from debcache.config import load_config
from debcache.fetchlog_retention import PRUNE_BATCH_IDS

DAY = 86400
OLD_ROWS = 100_000  # a hundred batches: the stop lands in the middle of most runs
INRELEASE = "debian/dists/bookworm/InRelease"
RELEASE = "debian/dists/bookworm/Release"


def make_history(server: DebcacheServer) -> dict[str, int]:
    """Fetch-log rows through the real server; then the server stops and the rows are
    dated: a frozen recording, an old one, a half-old one, a fresh one, and unrecorded
    rows old and new. Returns the id of each row that will be old, by name."""
    pin_a_recorded_inrelease(server, "b1")  # run-1: frozen (and pinned)
    for name in ("old-run", "half-old", "fresh-run"):
        assert get(server.url, f"/record/{name}/{INRELEASE}").status == 200
    assert get(server.url, f"/record/half-old/{RELEASE}").status == 200
    assert get(server.url, f"/{INRELEASE}").status == 200
    assert get(server.url, f"/{RELEASE}").status == 200
    server.wait_for_fetches(7)
    server.stop()  # its prune at start is over; nothing else writes the log now

    with sqlite3.connect(server.data_dir / "debcache.db") as database:

        def first_id(where: str) -> int:
            return database.execute(f"SELECT MIN(id) FROM fetches WHERE {where}").fetchone()[0]

        old = {
            "run-1": first_id("recording = 'run-1'"),
            "old-run": first_id("recording = 'old-run'"),
            "half-old": first_id("recording = 'half-old'"),  # its InRelease; Release stays new
            "unrecorded": first_id("recording IS NULL"),
        }
        # Far beyond the other ids: the prune's id windows must reach it across the gap.
        database.execute("UPDATE fetches SET id = 20000 WHERE id = ?", [old["unrecorded"]])
        old["unrecorded"] = 20000
        database.execute(
            f"UPDATE fetches SET time = time - 100 * {DAY} WHERE recording = 'run-1' "
            f"OR recording = 'old-run' OR id IN ({old['half-old']}, 20000)"
        )
    return old


def rows(data_dir: Path) -> list[tuple[int, str | None]]:
    with sqlite3.connect(data_dir / "debcache.db") as database:
        return database.execute("SELECT id, recording FROM fetches ORDER BY id").fetchall()


def kept_after_pruning(before: list[tuple[int, str | None]], old: dict[str, int]):
    """What must remain: all but the old unrecorded row and every row of old-run."""
    return [
        (row_id, name)
        for row_id, name in before
        if name != "old-run" and row_id != old["unrecorded"]
    ]


def test_gc_prunes_old_rows_and_keeps_frozen_half_old_and_recent_ones(
    keyed_debcache: DebcacheServer,
) -> None:
    old = make_history(keyed_debcache)
    before = rows(keyed_debcache.data_dir)
    expected = kept_after_pruning(before, old)
    pruned = len(before) - len(expected)
    assert pruned == 2  # old-run's InRelease and the old unrecorded InRelease

    dry = run(keyed_debcache, "gc", "--max-size", "100G", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["pruned_fetches"] == pruned
    assert rows(keyed_debcache.data_dir) == before

    result = run(keyed_debcache, "gc", "--max-size", "100G")
    assert result.exit_code == 0, result.output
    assert (
        f"Pruned {pruned} fetch-log rows older than 90 days; "
        "rows of recordings a manifest was frozen from kept." in result.output
    )
    assert rows(keyed_debcache.data_dir) == expected
    again = json.loads(run(keyed_debcache, "gc", "--max-size", "100G", "--json").output)
    assert again["pruned_fetches"] == 0

    # A recording pruned whole is simply gone: not listed, and named, a one-line error.
    listing = json.loads(run(keyed_debcache, "recordings", "--json").output)
    assert sorted(r["recording"] for r in listing["recordings"]) == [
        "fresh-run",
        "half-old",
        "run-1",
    ]
    for command in (["recordings", "show", "old-run"], ["freeze", "old-run"]):
        gone = run(keyed_debcache, *command)
        assert gone.exit_code == 1 and "No recording named 'old-run'" in gone.output
        assert "Traceback" not in gone.output and gone.output.count("\n") == 1


def test_serve_prunes_shortly_after_it_starts(keyed_debcache: DebcacheServer) -> None:
    old = make_history(keyed_debcache)
    expected = kept_after_pruning(rows(keyed_debcache.data_dir), old)

    with DebcacheServer(keyed_debcache.config):
        wait_until(
            lambda: rows(keyed_debcache.data_dir) == expected,
            lambda: f"serve to prune to {expected} ({rows(keyed_debcache.data_dir)})",
        )


def test_recordings_say_how_far_back_the_fetch_log_goes(
    keyed_debcache: DebcacheServer,
) -> None:
    empty = run(keyed_debcache, "recordings")
    assert empty.exit_code == 0, empty.output
    assert "fetch log: empty (rows older than 90 days are pruned" in empty.output
    old = make_history(keyed_debcache)
    assert run(keyed_debcache, "gc", "--max-size", "100G").exit_code == 0

    # The oldest row pruning may remove: half-old's (run-1's, older, stay for its manifest).
    with sqlite3.connect(keyed_debcache.data_dir / "debcache.db") as database:
        since = database.execute(
            "SELECT time FROM fetches WHERE id = ?", [old["half-old"]]
        ).fetchone()[0]
    listing = json.loads(run(keyed_debcache, "recordings", "--json").output)
    assert listing["fetch_log"] == {"since": since, "days": 90}
    table = run(keyed_debcache, "recordings").output
    assert (
        f"fetch log: since {day(since)} (rows older than 90 days are pruned, "
        "except those of recordings a manifest was frozen from)"
    ) in table


def test_serve_stops_cleanly_in_the_middle_of_a_prune(
    tmp_path: Path, mirror: FakeMirror, caplog: pytest.LogCaptureFixture
) -> None:
    """A prune spanning many batches is cancelled at shutdown; the next start finishes it."""
    config = make_config(tmp_path / "data", {"debian": [f"{mirror.url}/debian"]})
    config.data_dir.mkdir()
    path = config.data_dir / "debcache.db"
    queries.create_schema(path)
    database = queries.connect(path)
    row = dict(
        time=time.time() - 100 * DAY, client="127.0.0.1", recording=None, upstream="debian",
        path="dists/x/InRelease", method="GET", status=200, sha256="cd" * 32, size=1000,
        source="hit", duration=0.01, complete=1,
    )  # fmt: skip
    with database.conn:
        database.conn.executemany(
            queries.INSERT_FETCH,
            [tuple(row[column] for column in queries.FETCH_COLUMNS)] * OLD_ROWS,
        )
    database.conn.close()

    def count() -> int:
        with sqlite3.connect(path) as reader:
            return reader.execute("SELECT COUNT(*) FROM fetches").fetchone()[0]

    with DebcacheServer(config):  # stop() raises if serve failed, at start or at shutdown
        wait_until(lambda: count() < OLD_ROWS, "serve to start pruning")
    # Whole batches only: each window of ids went in one transaction, or not at all.
    assert count() % PRUNE_BATCH_IDS == 0
    with DebcacheServer(config):
        wait_until(lambda: count() == 0, lambda: f"serve to finish pruning ({count()} left)")
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]


@pytest.mark.parametrize("value", ["0", "-5", "1.5", '"90"', "true"])
def test_fetch_log_days_must_be_a_positive_whole_number(tmp_path: Path, value: str) -> None:
    path = tmp_path / "debcache.toml"
    path.write_text(f"[server]\nfetch_log_days = {value}\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "serve"])
    assert result.exit_code == 1
    output = result.output.strip()
    assert output.startswith("Error: ") and "\n" not in output, output
    assert f"{path}: server.fetch_log_days: " in output
    assert "is not a positive whole number of days" in output
    assert "fetch_log_days = 90" in output  # the remedy
    assert "Traceback" not in result.output


def test_fetch_log_days_is_read_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "debcache.toml"
    path.write_text("[server]\nfetch_log_days = 30\n")
    assert load_config(path).fetch_log_days == 30
    path.write_text("[server]\n")
    assert load_config(path).fetch_log_days == 90
