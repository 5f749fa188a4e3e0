"""User story: the `debcache` command behaves like a Unix tool and its messages are true.

Every command reads the data dir that `--data-dir` (or `$DEBCACHE_DATA_DIR`) names, a
missing one is said to be missing; errors are one line that keeps names as written and
gives the remedy for the actual cause; `| head` ends it quietly. The real command runs
as a subprocess where the process matters (serve, pipes), in-process otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest
from archive_fixture import Archive
from click.testing import CliRunner
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import request
from processes import free_port, wait_until
from workflow import pin_a_recorded_inrelease, run

from debcache import db
from debcache.cli import cli
from debcache.errors import DebcacheError
from debcache.lockfile import LOCKFILE_FORMAT
from debcache.manifest import Entry, manifest_id
from debcache.recording import FetchLog

ROOT = Path(__file__).parent.parent
HELLO = "pool/main/h/hello/hello_2.10-3_amd64.deb"


def environment(**variables: str) -> dict[str, str]:
    """For a subprocess: this environment without debcache's own variables, plus these."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEBCACHE_")}
    return {**clean, **variables}


def cli_env(**variables: str) -> dict[str, str | None]:
    """For CliRunner (which only adds to the environment): debcache's variables unset,
    then these."""
    return {"DEBCACHE_CONFIG": None, "DEBCACHE_DATA_DIR": None, **variables}


def write_config(path: Path, mirror_url: str, keyring: Path, port: int = 0) -> Path:
    """A configuration with no data_dir (so the data dir comes from the command line)."""
    listen = f'[server]\nlisten = ["127.0.0.1:{port}"]\n' if port else ""
    path.write_text(
        f'{listen}[upstreams.debian]\nurls = ["{mirror_url}/debian"]\nkeyring = "{keyring}"\n'
    )
    return path


def recorded_data_dir(data_dir: Path, recording: str, files: int) -> Path:
    """A config file naming a data dir whose fetch log holds `files` files of `recording`,
    written with debcache's own database code (as the server writes them)."""
    data_dir.mkdir(parents=True)
    database = db.Database(data_dir / "debcache.db").open()
    fetch_log = FetchLog(database)
    for number in range(files):
        path = f"pool/main/p/pkg{number}/pkg{number}_1.0-1_amd64.deb"
        record = fetch_log.begin("127.0.0.1", recording, "debian", path, "GET")
        record.status, record.source, record.complete = 200, "miss", True
        record.sha256, record.size = f"{number:064x}", 1000 + number
        fetch_log.finish(record)
    database.close()  # commits what is queued
    config = data_dir.parent / "debcache.toml"
    config.write_text(f'[server]\ndata_dir = "{data_dir}"\n')
    return config


# --- --data-dir and $DEBCACHE_DATA_DIR apply to every command ---------------------------


def test_every_command_reads_the_data_dir_serve_was_given(
    tmp_path: Path, mirror: FakeMirror, archive: Archive
) -> None:
    port = free_port()
    config = write_config(tmp_path / "debcache.toml", mirror.url, archive.key.keyring, port)
    data = tmp_path / "data"
    serve = subprocess.Popen(
        [sys.executable, "-m", "debcache", "--config", str(config), "serve", "--data-dir", data],
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        url = f"http://127.0.0.1:{port}/record/run-1/debian/dists/bookworm/InRelease"

        def recorded() -> bool:
            if serve.poll() is not None:
                raise RuntimeError(f"debcache serve exited: {serve.stderr.read()}")
            try:
                urllib.request.urlopen(url, timeout=5).read()
            except OSError:
                return False
            return True

        wait_until(recorded, "debcache serve to record InRelease")
        listed = ["--config", str(config), "--data-dir", str(data), "recordings", "--json"]
        wait_until(
            lambda: "run-1" in CliRunner().invoke(cli, listed, env=cli_env()).output,
            "the recording to be listed",
        )
        by_variable = CliRunner().invoke(
            cli,
            ["--config", str(config), "recordings", "show", "run-1"],
            env=cli_env(DEBCACHE_DATA_DIR=str(data)),
        )
        assert by_variable.exit_code == 0, by_variable.output
        assert "dists/bookworm/InRelease" in by_variable.output
        frozen = CliRunner().invoke(
            cli,
            ["--config", str(config), "--data-dir", str(data), "freeze", "run-1", "--json"],
            env=cli_env(),
        )
        assert frozen.exit_code == 0, frozen.output
        # The recorded InRelease, and the indices a fresh host needs (completed at freeze).
        summary = json.loads(frozen.output)
        assert summary["files"] == 1 + summary["completed"] and summary["completed"] > 0
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
    assert f"data in {data}" in serve.stderr.read()


def test_serve_takes_the_data_dir_before_the_command_too(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "debcache.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
        '[upstreams.debian]\nurls = ["http://127.0.0.1:9/debian"]\n'
    )
    data = tmp_path / "new" / "data"
    serve = subprocess.Popen(
        [sys.executable, "-m", "debcache", "--config", str(config), "serve"],
        stderr=subprocess.DEVNULL,
        env=environment(DEBCACHE_DATA_DIR=str(data)),
    )
    try:
        wait_until(lambda: (data / "debcache.db").exists(), "serve to create the data dir")
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
    result = CliRunner().invoke(
        cli, ["--config", str(config), "--data-dir", str(data), "recordings"], env=cli_env()
    )
    assert (result.exit_code, result.output) == (
        0,
        "No recordings yet. Tag an install with http://NAME@cache:3142/ as its proxy.\n"
        "fetch log: empty (rows older than 90 days are pruned, except those of recordings "
        "a manifest was frozen from)\n",
    )


def test_a_missing_data_dir_is_named_with_where_it_came_from(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    remedy = (
        "Pass the data dir `debcache serve` uses with debcache --data-dir DIR "
        "(or $DEBCACHE_DATA_DIR), or start `debcache serve` to create it.\n"
    )
    for args, variables, origin in [
        (["--data-dir", str(absent)], {}, "--data-dir"),
        ([], {"DEBCACHE_DATA_DIR": str(absent)}, "$DEBCACHE_DATA_DIR"),
    ]:
        for command in (["recordings"], ["freeze", "run-1"], ["manifests"], ["key", "export"]):
            result = CliRunner().invoke(
                cli, [*args, *command], env=cli_env(**variables), catch_exceptions=False
            )
            assert (result.exit_code, result.output) == (
                1,
                f"Error: Data dir {absent} (from {origin}) does not exist. {remedy}",
            ), command
    config = tmp_path / "debcache.toml"
    config.write_text(f'[server]\ndata_dir = "{absent}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "branches"], env=cli_env())
    assert result.output == f"Error: Data dir {absent} (from {config}) does not exist. {remedy}"
    assert not absent.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["--data-dir", str(empty), "status"], env=cli_env())
    assert result.output == (
        f"Error: Data dir {empty} (from --data-dir) holds no debcache database. {remedy}"
    )


def test_the_group_options_after_the_command_say_where_they_go() -> None:
    result = CliRunner().invoke(
        cli, ["recordings", "show", "run-1", "--data-dir", "/srv/d"], prog_name="debcache"
    )
    assert (result.exit_code, result.output) == (
        2,
        "Usage: debcache recordings show [OPTIONS] NAME\n"
        "Try 'debcache recordings show --help' for help.\n\n"
        "Error: --data-dir goes before the command, as it applies to every command: "
        "debcache --data-dir DIR recordings show ...\n",
    )


# --- one line, or none --------------------------------------------------------------


def test_output_into_a_closed_pipe_ends_quietly_like_a_unix_tool(tmp_path: Path) -> None:
    config = recorded_data_dir(tmp_path / "data", "run-1", files=3)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before debcache writes its first line
    try:
        result = subprocess.run(
            [sys.executable, "-m", "debcache", "--config", config, "recordings", "show", "run-1"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=environment(),
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")


def test_piped_into_head_it_stops_quietly_with_the_status_of_sigpipe(tmp_path: Path) -> None:
    config = recorded_data_dir(tmp_path / "data", "run-1", files=5000)  # beyond a pipe buffer
    script = (
        f'"{sys.executable}" -m debcache --config "{config}" recordings show run-1 | head -n 2; '
        'echo "${PIPESTATUS[0]}" >&2'
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=environment()
    )
    assert result.stdout.splitlines()[0].split() == ["UPSTREAM", "PATH", "SHA256", "SIZE"]
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr == f"{128 + signal.SIGPIPE}\n"


IMPORT_ENTRIES = [
    Entry("debian", f"pool/main/p/pkg{n}/pkg{n}_1.0-1_amd64.deb", f"{n + 1:064x}", 10)
    for n in range(3)
]


def import_from(tmp_path: Path, site: str) -> tuple[str, str]:
    """`manifests import LOCK --from SITE` of a manifest of IMPORT_ENTRIES: (id, output)."""
    manifest = manifest_id(IMPORT_ENTRIES)
    lockfile = tmp_path / "lock.json"
    entries = [asdict(e) for e in IMPORT_ENTRIES]
    lockfile.write_text(json.dumps({"format": LOCKFILE_FORMAT, "id": manifest, "entries": entries}))
    config = tmp_path / "debcache.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    result = CliRunner().invoke(
        cli,
        ["--config", str(config), "manifests", "import", str(lockfile), "--from", site],
        env=cli_env(),
    )
    assert result.exit_code == 1
    return manifest, result.output


def test_an_import_from_an_unreachable_site_fails_in_one_line(tmp_path: Path) -> None:
    site = f"http://127.0.0.1:{free_port()}"
    manifest, output = import_from(tmp_path, site)
    assert output.startswith(
        f"Error: 3 of 3 files of manifest {manifest[:12]} could not be fetched from {site}; "
        f"the first, debian/{IMPORT_ENTRIES[0].path}: Cannot connect to host 127.0.0.1:"
    )
    assert output.endswith(
        ". Nothing was imported; check that it is a debcache that holds this manifest, "
        "or import without --from to fetch from the upstreams.\n"
    )
    assert output.count("\n") == 1 and output.count(site) == 1


def test_an_import_from_a_debcache_without_the_files_names_it_once(
    tmp_path: Path, debcache: DebcacheServer
) -> None:
    manifest, output = import_from(tmp_path, debcache.url)
    assert output == (
        f"Error: 3 of 3 files of manifest {manifest[:12]} could not be fetched from "
        f"{debcache.url}; the first, debian/{IMPORT_ENTRIES[0].path}: HTTP 404. Nothing was "
        "imported; check that it is a debcache that holds this manifest, or import without "
        "--from to fetch from the upstreams.\n"
    )


@pytest.mark.parametrize(
    ("site", "remedy"),
    [
        ("127.0.0.1:18111", "Write --from http://127.0.0.1:18111."),
        ("ftp://x", "Write --from http://HOST:PORT, e.g. http://cache-a:3142."),
    ],
)
def test_an_import_from_a_url_that_is_no_http_url_is_refused_first(
    tmp_path: Path, site: str, remedy: str
) -> None:
    _, output = import_from(tmp_path, site)
    assert output == f"Error: --from {site!r} is not the http:// URL of a debcache. {remedy}\n"
    assert not (tmp_path / "data").exists()


def test_a_database_this_user_cannot_open_is_one_line(tmp_path: Path) -> None:
    config = recorded_data_dir(tmp_path / "data", "run-1", files=1)
    database = tmp_path / "data" / "debcache.db"
    database.chmod(0)
    # Root without CAP_DAC_OVERRIDE is refused as the user of someone else's data dir is.
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    wrapper = unprivileged if os.geteuid() == 0 else []
    result = subprocess.run(
        [*wrapper, sys.executable, "-m", "debcache", "--config", str(config), "recordings"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    database.chmod(0o644)
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: {database}: unable to open database file. "
        "Run debcache as the user `debcache serve` runs as, who owns the data dir.\n",
    )


# --- names keep their case --------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "remedy", "printed"),
    [
        ("bad.toml: cannot read it", "fix it", "bad.toml: cannot read it. Fix it."),
        (
            f"debian/{HELLO} is not in manifest 1a2b3c4d5e6f",
            "`debcache freeze` a new one",
            f"debian/{HELLO} is not in manifest 1a2b3c4d5e6f. `debcache freeze` a new one.",
        ),
        (
            "debcache does not tunnel connections",
            "gpgv must be installed",
            "debcache does not tunnel connections. gpgv must be installed.",
        ),
        (
            "'http://' has no host",
            "--listen elsewhere",
            "'http://' has no host. --listen elsewhere.",
        ),
        ("xen-4.19: no such branch", "", "xen-4.19: no such branch."),
        ("cafe1234 is ambiguous", "", "cafe1234 is ambiguous."),
        ("deadbeef does not verify", "", "deadbeef does not verify."),
        ("added files", "", "Added files."),
        ("cannot listen", "pass --listen", "Cannot listen. Pass --listen."),
        ("the manifest is gone", "", "The manifest is gone."),
    ],
)
def test_a_message_starting_with_a_name_keeps_its_case(cause: str, remedy: str, printed: str):
    assert str(DebcacheError(cause, remedy)) == printed


def test_a_relative_config_file_name_keeps_its_case(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.toml").write_text('[branches.b]\nfill = "sometimes"\n')
    result = CliRunner().invoke(cli, ["--config", "bad.toml", "branches"], env=cli_env())
    assert (result.exit_code, result.output) == (
        1,
        "Error: bad.toml: branches.b.fill: 'sometimes' is not a fill mode. "
        'Use "strict" or "verified".\n',
    )


def test_http_errors_keep_the_names_they_start_with(keyed_debcache: DebcacheServer) -> None:
    connect = request(keyed_debcache.url, "mirror.example.org:443", method="CONNECT")
    assert (connect.status, connect.body.decode()) == (
        405,
        "debcache does not tunnel connections (CONNECT mirror.example.org:443). Use an http:// "
        "source with this proxy, or http://cache:3142/UPSTREAM/ as the mirror.\n",
    )
    recorded = request(keyed_debcache.url, "/record/run-1/debian/dists/bookworm/InRelease")
    assert recorded.status == 200
    keyed_debcache.wait_for_fetches(1, recording="run-1")
    frozen = run(keyed_debcache, "freeze", "run-1", "--json")
    assert frozen.exit_code == 0, frozen.output
    manifest = json.loads(frozen.output)["id"]
    missing = request(keyed_debcache.url, f"/manifest/{manifest}/debian/{HELLO}")
    assert (missing.status, missing.body.decode()) == (
        404,
        f"debian/{HELLO} is not in manifest {manifest[:12]}. "
        "Manifests never change; freeze a new one that includes it.\n",
    )


def test_an_unknown_upstream_in_a_pin_is_named_with_the_manifests_upstreams(
    keyed_debcache: DebcacheServer,
) -> None:
    manifest = pin_a_recorded_inrelease(keyed_debcache, "main")
    unknown = request(keyed_debcache.url, "/pin/main/nosuch/README")
    assert (unknown.status, unknown.body.decode()) == (
        404,
        f"No upstream named 'nosuch' in manifest {manifest[:12]}, which holds files of debian. "
        "Write /pin/main/debian/README.\n",
    )
    by_id = request(keyed_debcache.url, f"/manifest/{manifest}/nosuch/README")
    assert (by_id.status, by_id.body.decode()) == (
        404,
        f"No upstream named 'nosuch' in manifest {manifest[:12]}, which holds files of debian. "
        f"Write /manifest/{manifest}/debian/README.\n",
    )


def test_an_unknown_branch_is_named_in_the_remedy(keyed_debcache: DebcacheServer) -> None:
    pinned = request(keyed_debcache.url, "/pin/main/debian/README")
    assert (pinned.status, pinned.body.decode()) == (
        404,
        "No branch named 'main' (branches: none). "
        "Promote a manifest to it with `debcache promote main MANIFEST`.\n",
    )
    logged = run(keyed_debcache, "log", "main")
    assert (logged.exit_code, logged.output) == (
        1,
        "Error: No branch named 'main' (branches: none). "
        "Create it with `debcache promote main MANIFEST`.\n",
    )


# --- the remedy that fits the cause -----------------------------------------------


def serve_on(tmp_path: Path, address: str, *wrapper: str) -> subprocess.CompletedProcess:
    """`debcache serve --listen address`, run by `wrapper` (e.g. setpriv) if given."""
    config = tmp_path / "debcache.toml"
    config.write_text('[upstreams.debian]\nurls = ["http://127.0.0.1:9/debian"]\n')
    options = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "debcache", *options, "serve", "--listen", address],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )


def test_listening_on_an_address_of_another_host_says_so(tmp_path: Path) -> None:
    address = "192.0.2.1"  # TEST-NET-1 (RFC 5737): on no host
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
            pytest.fail(f"{address} is an address of this host; the test needs one that is not")
        except OSError:
            pass
    result = serve_on(tmp_path, f"{address}:18002")
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: Cannot listen on {address}:18002: {address} is not an address of this host. "
        "Pass --listen with one of its addresses, or 0.0.0.0:18002 for all of them.\n",
    )


def test_listening_on_a_busy_port_says_another_process_has_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve_on(tmp_path, f"127.0.0.1:{port}")
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: Cannot listen on 127.0.0.1:{port}: another process listens on that port. "
        "Stop it, or pass --listen 127.0.0.1:PORT with a free port.\n",
    )


def test_a_privileged_port_says_it_needs_root(tmp_path: Path) -> None:
    # Root without CAP_NET_BIND_SERVICE is refused as any other user is (setpriv is in
    # util-linux, on every Debian).
    unprivileged = ["setpriv", "--bounding-set=-net_bind_service"] if os.geteuid() == 0 else []
    result = serve_on(tmp_path, "127.0.0.1:1", *unprivileged)
    assert (result.returncode, result.stderr) == (
        1,
        "Error: Cannot listen on 127.0.0.1:1: ports below 1024 need root or "
        "CAP_NET_BIND_SERVICE. Pass --listen 127.0.0.1:3142 (or another port above 1023), "
        "or run as root.\n",
    )


def test_a_missing_config_file_names_what_named_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    by_option = CliRunner().invoke(cli, ["--config", str(missing), "branches"], env=cli_env())
    assert by_option.output == (
        f"Error: {missing}: no such configuration file (named by --config). "
        "Pass an existing file to --config, or none to use the built-in defaults.\n"
    )
    by_variable = CliRunner().invoke(cli, ["branches"], env=cli_env(DEBCACHE_CONFIG=str(missing)))
    assert (by_variable.exit_code, by_variable.output) == (
        1,
        f"Error: {missing}: no such configuration file (named by $DEBCACHE_CONFIG). "
        "Point $DEBCACHE_CONFIG at an existing file, or unset it to use the built-in defaults.\n",
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://",
            "'http://' has no host. Write the mirror's host and path, "
            'e.g. "http://mirror.example.org/debian".',
        ),
        (
            "http://mirror.example.org:port/debian",
            "'http://mirror.example.org:port/debian' has an invalid host or port. Write HOST or "
            'HOST:PORT after http://, e.g. "http://mirror.example.org:8080/debian".',
        ),
        (
            "ftp://mirror.example.org/debian/",
            "'ftp://mirror.example.org/debian/' is not an http:// or https:// URL. "
            "Use an http:// or https:// URL.",
        ),
    ],
)
def test_a_bad_upstream_url_is_quoted_as_written(tmp_path: Path, url: str, message: str) -> None:
    config = tmp_path / "debcache.toml"
    config.write_text(f'[upstreams.debian]\nurls = ["{url}"]\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "serve"], env=cli_env())
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {config}: upstreams.debian.urls: {message}\n",
    )


# --- the key goes out through the supported binary stream -----------------------------


def test_key_export_writes_the_binary_key_without_deprecated_click_calls(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "debcache.toml"
    config.write_text(f'[server]\ndata_dir = "{data}"\n')
    warnings_are_errors = [sys.executable, "-W", "error::DeprecationWarning"]
    result = subprocess.run(
        [*warnings_are_errors, "-m", "debcache", "--config", str(config), "key", "export"],
        capture_output=True,
        timeout=120,
        env=environment(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout[0] & 0x80  # an OpenPGP packet, not text
    assert (data / "signing" / "debcache-archive-keyring.gpg").read_bytes() == result.stdout
    assert b"get_binary_stream" not in (ROOT / "debcache" / "cli.py").read_bytes()


def test_dependencies_are_bounded_to_the_majors_they_are_tested_with() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    unbounded = [r for r in requirements if "<" not in r and "==" not in r]
    assert unbounded == []
