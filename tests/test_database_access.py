"""Who may open debcache.db, and for how long: the read-only commands work for a user who
can only read the data dir (with or without a server writing it), and every connection a
command or the server opens is closed when it ends.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from debcache_server import DebcacheServer, make_config
from fake_mirror import FakeMirror
from http_client import get

from debcache import db as queries
from debcache.cli import cli
from debcache.db import Database

ROOT = Path(__file__).parent.parent
# Root without CAP_DAC_OVERRIDE is held to file modes as any other user is.
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
MANIFEST = "ab" * 32
READ_ONLY_COMMANDS = [
    ["status"],
    ["recordings"],
    ["recordings", "show", "run-1"],
    ["manifests"],
    ["manifests", "show", MANIFEST[:12]],
    ["manifests", "export", MANIFEST[:12]],
    ["branches"],
    ["log", "main"],
    ["diff", "main", MANIFEST[:12]],
]


def fetch_row(recording: str, path: str) -> tuple:
    row = dict(
        time=1.7e9, client="127.0.0.1", recording=recording, upstream="debian", path=path,
        method="GET", status=200, sha256="cd" * 32, size=1000, source="miss", duration=0.01,
        complete=1,
    )  # fmt: skip
    return tuple(row[column] for column in queries.FETCH_COLUMNS)


def fill(data_dir: Path) -> None:
    """A recording (as the server logs it), a manifest and a branch (as the CLI saves them)."""
    database = Database(data_dir / "debcache.db").open()
    database.log_fetch(fetch_row("run-1", "pool/main/h/hello/hello_1.0_amd64.deb"))
    database.close()
    manifest = {
        "id": MANIFEST, "label": "first", "created": 1.7e9, "recordings": '["run-1"]',
        "files": 0, "bytes": 0, "releases": "{}", "unverified": "[]",
    }  # fmt: skip
    connection = queries.connect(data_dir / "debcache.db")
    queries.insert_manifest(connection, manifest, [])
    queries.set_branch(connection, "main", "promote", MANIFEST, None, 1.7e9)
    connection.conn.close()  # the last connection: the WAL is checkpointed and removed


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    fill(data_dir)
    return data_dir


def files_of(data_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data_dir.iterdir()}


@pytest.fixture
def read_only(data_dir: Path) -> Iterator[list[str]]:
    """The data dir made read-only; the command prefix of a user held to that."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run as root without CAP_DAC_OVERRIDE")
    for path in data_dir.iterdir():
        path.chmod(0o444)
    data_dir.chmod(0o555)
    yield UNPRIVILEGED if os.geteuid() == 0 else []
    data_dir.chmod(0o755)
    for path in data_dir.iterdir():
        path.chmod(0o644)


def run_as_reader(prefix: list[str], data_dir: Path, *command: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEBCACHE_")}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "debcache", "--data-dir", str(data_dir), *command],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=ROOT,
    )


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_a_read_only_command_works_for_a_user_who_can_only_read_the_data_dir(
    data_dir: Path, read_only: list[str], command: list[str]
) -> None:
    before = files_of(data_dir)
    result = run_as_reader(read_only, data_dir, *command)
    assert (result.returncode, result.stderr) == (0, "")
    assert files_of(data_dir) == before  # nothing written, no -wal or -shm left behind


def test_a_read_only_command_sees_what_a_running_server_has_not_checkpointed(
    data_dir: Path, read_only: list[str]
) -> None:
    """With the server's -wal and -shm there, the reader reads through them: rows still in
    the WAL count (a reader that ignored the WAL would miss the recording)."""
    data_dir.chmod(0o755)
    database = Database(data_dir / "debcache.db").open()
    try:
        database.log_fetch(fetch_row("run-2", "pool/main/h/hello/hello_2.0_amd64.deb"))
        database.write_soon(lambda db: None).result(10)  # committed to the WAL
        for path in data_dir.iterdir():
            path.chmod(0o444)
        data_dir.chmod(0o555)
        assert {"debcache.db-wal", "debcache.db-shm"} <= set(os.listdir(data_dir))
        result = run_as_reader(read_only, data_dir, "recordings", "--json")
    finally:
        database.close()
    assert (result.returncode, result.stderr) == (0, "")
    assert '"recording": "run-2"' in result.stdout


def test_a_read_only_command_leaves_an_old_schema_alone_and_says_so(data_dir: Path) -> None:
    database = queries.connect(data_dir / "debcache.db")
    database.conn.execute("ALTER TABLE manifests DROP COLUMN completed")  # as before 0.3
    database.conn.close()
    before = files_of(data_dir)
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "manifests"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {data_dir}/debcache.db was made by an older debcache (it lacks "
        "manifests.completed). Start `debcache serve` of this version once, which upgrades it.\n"
    )
    assert files_of(data_dir) == before


def test_a_database_made_before_the_time_index_gets_it_at_the_next_start(data_dir: Path) -> None:
    path = data_dir / "debcache.db"
    database = queries.connect(path)
    database.conn.execute("DROP INDEX fetches_by_time")  # as an older debcache made it
    database.conn.close()
    Database(path).open().close()
    database = queries.connect_read_only(path)
    try:
        plan = database.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM fetches WHERE time > 0"
        ).fetchall()
    finally:
        database.conn.close()
    assert "fetches_by_time" in str(plan)


# --- connections are closed ---------------------------------------------------------


def open_files_of(data_dir: Path) -> list[str]:
    """This process's open files in the data dir: debcache.db and its -wal and -shm."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own fd)
            continue
        if target.startswith(f"{data_dir}/"):
            found.append(target)
    return found


@pytest.mark.parametrize(
    "command",
    [["status"], ["log", "nowhere"], ["gc", "--max-size", "1G", "--dry-run"]],
    ids=" ".join,
)
def test_a_command_closes_its_connection(data_dir: Path, command: list[str]) -> None:
    """Whether it succeeds or fails, and whether it reads or writes."""
    CliRunner().invoke(cli, ["--data-dir", str(data_dir), *command])
    assert open_files_of(data_dir) == []


def test_a_stopped_server_has_closed_every_connection(tmp_path: Path, mirror: FakeMirror) -> None:
    """The writer's, the branch reader's and each reader thread's."""
    config = make_config(tmp_path / "data", {"debian": [f"{mirror.url}/debian"]})
    with DebcacheServer(config) as server:
        for path in ("/_/api/status", "/_/", "/_/api/recordings"):
            assert get(server.url, path).status == 200
        assert open_files_of(server.data_dir) != []
    assert open_files_of(server.data_dir) == []
