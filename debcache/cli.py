"""The `debcache` command: parse, call, print. No logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import sqlite_utils
from click import ParameterSource

from . import db, edge
from .branches import Change, check_branch_name, current_manifest_id, promote, rollback
from .config import (
    Config,
    check_worker_count,
    default_data_dir,
    load_config,
    parse_listen_address,
    size_in_bytes,
    url_problem,
)
from .diff import diff, load_side
from .errors import ConfigError, DebcacheError, InvalidLockfile
from .fetchlog_retention import prune_fetch_log
from .freeze import freeze
from .lifecycle import collect_garbage, verify_store
from .lockfile import export_lockfile, import_manifest, parse_lockfile
from .manifest import SHORT_ID, load_manifest, resolve_manifest_id
from .recording import check_recordings_exist, recording_contents, recordings_listing
from .resign import export_public_key
from .status import collect_status, status_json
from .store import FileStore
from .supervisor import EarlySignals, configure_logging, exec_supervisor
from .systemd import listen_sockets
from .upstream import UpstreamClient, create_session

T = TypeVar("T")

# The exit status of every DebcacheError, whatever its class: scripts tell success from
# failure, and the message says which failure (2 is click's usage error, 141 a reader gone).
ERROR_EXIT_STATUS = 1


class UserError(click.ClickException):
    """A DebcacheError as click prints it: `Error: <cause>. <remedy>.`, ERROR_EXIT_STATUS."""

    exit_code = ERROR_EXIT_STATUS


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn DebcacheError and OSError into one line on stderr, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DebcacheError as exc:
            raise UserError(str(exc)) from None
        except BrokenPipeError:
            raise  # the reader went away: DebcacheGroup ends quietly, as Unix tools do
        except OSError as exc:
            raise UserError(str(file_error(exc))) from None

    return wrapper


def file_error(exc: OSError) -> ConfigError:
    """An OSError as `FILE: reason. Remedy.`, the remedy chosen by its errno."""
    cause = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror or exc)
    remedies = {
        errno.EACCES: ACCESS_REMEDY,
        errno.EPERM: ACCESS_REMEDY,
        errno.EROFS: "pass a --data-dir on a writable file system",
        errno.ENOSPC: "free space there, e.g. with debcache gc --max-size SIZE",
    }
    return ConfigError(cause, remedies.get(exc.errno or 0, ""))


@dataclasses.dataclass(frozen=True)
class GroupOptions:
    """What `debcache --config FILE --data-dir DIR` said, and where each value came from."""

    config_path: Path | None
    config_named_by: str  # "--config" or "$DEBCACHE_CONFIG"
    data_dir: Path | None
    data_dir_named_by: str  # "--data-dir" or "$DEBCACHE_DATA_DIR"


class DebcacheGroup(click.Group):
    """The `debcache` group: a command whose reader went away ends as Unix tools do."""

    def invoke(self, context: click.Context) -> Any:
        try:
            return super().invoke(context)
        except BrokenPipeError:
            # click would catch it and exit 1; `debcache ... | head` is no failure of ours.
            exit_for_closed_pipe()
        except click.NoSuchOption as exc:
            if exc.option_name in GROUP_OPTIONS and exc.ctx:  # `debcache recordings --data-dir D`
                option = f"{exc.option_name} {GROUP_OPTIONS[exc.option_name]}"
                command = " ".join(exc.ctx.command_path.split()[1:])
                exc.message = (
                    f"{exc.option_name} goes before the command, as it applies to every "
                    f"command: debcache {option} {command} ..."
                )
            raise


GROUP_OPTIONS = {"--config": "FILE", "--data-dir": "DIR"}


@click.group(cls=DebcacheGroup)
@click.option(
    "--config",
    "config_path",
    # No checks by click: its usage error would blame --config for $DEBCACHE_CONFIG;
    # load_config says what is wrong with the file and where its name came from.
    type=click.Path(path_type=Path, readable=False),
    envvar="DEBCACHE_CONFIG",
    help="TOML configuration (default: $DEBCACHE_CONFIG, /etc/debcache/debcache.toml, "
    "or built-in defaults from the host's apt sources).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, readable=False),  # checked by check_data_dir, as above
    metavar="DIR",
    envvar="DEBCACHE_DATA_DIR",
    help="Where blobs and the database live (default: $DEBCACHE_DATA_DIR, [server] data_dir, "
    "/var/lib/debcache as root, $XDG_DATA_HOME/debcache otherwise).",
)
@click.pass_context
def cli(context: click.Context, config_path: Path | None, data_dir: Path | None) -> None:
    """debcache: a caching proxy for Debian archives that records, freezes and pins installs.

    \b
    --config and --data-dir go before the command and apply to every one:
        debcache --data-dir /srv/debcache recordings
    """
    context.obj = GroupOptions(
        config_path,
        named_by(context, "config_path", "--config", "$DEBCACHE_CONFIG"),
        data_dir,
        named_by(context, "data_dir", "--data-dir", "$DEBCACHE_DATA_DIR"),
    )


def named_by(context: click.Context, parameter: str, option: str, variable: str) -> str:
    """Which of the option or its environment variable gave `parameter` its value."""
    from_environment = context.get_parameter_source(parameter) == ParameterSource.ENVIRONMENT
    return variable if from_environment else option


def pass_config(command: Callable[..., Any]) -> Callable[..., Any]:
    """Load the configuration once, turning its errors into one-line messages."""

    @click.pass_context
    @reports_errors
    @functools.wraps(command)
    def wrapper(context: click.Context, *args: Any, **kwargs: Any) -> Any:
        options = context.find_object(GroupOptions)
        config = load_config(options.config_path, named_by=options.config_named_by)
        if options.data_dir:
            config = dataclasses.replace(config, data_dir=options.data_dir)
        return command(config, *args, **kwargs)

    return wrapper


@cli.command()
@click.option(
    "--listen",
    multiple=True,
    metavar="HOST:PORT",
    help="Address to listen on, instead of [server] listen (repeatable).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, readable=False),
    metavar="DIR",
    help="The same as debcache --data-dir DIR serve (kept for compatibility).",
)
@click.option(
    "--workers",
    type=str,
    metavar="N",
    help="Server processes, instead of [server] workers (default: one per CPU).",
)
@pass_config
def serve(
    config: Config, listen: tuple[str, ...], data_dir: Path | None, workers: str | None
) -> None:
    """Run the caching proxy.

    \b
    Example:
        debcache serve --listen 127.0.0.1:3142 --workers 2
    """
    from .server.app import check_something_to_serve, serve_child
    from .supervisor import ChildSpec

    if listen:
        config = dataclasses.replace(config, listen=tuple(_parse_listen(v) for v in listen))
    if workers is not None:
        count = int(workers) if workers.strip().lstrip("-").isdigit() else workers
        config = dataclasses.replace(config, workers=check_worker_count(count, "--workers"))
    if data_dir:  # messages name serve's own --data-dir as they name the group's
        context = click.get_current_context()
        context.obj = dataclasses.replace(
            context.find_object(GroupOptions), data_dir=data_dir, data_dir_named_by="--data-dir"
        )
        config = dataclasses.replace(config, data_dir=data_dir)
    configure_logging()
    child = ChildSpec.from_env()
    if child is not None:  # one of the supervisor's server processes
        serve_child(config, child)
        return
    # Noted until the supervisor's handlers are in place: a SIGTERM while the database is
    # being prepared must stop the server cleanly, not halfway through the schema.
    early_signals = EarlySignals()
    check_something_to_serve(config)
    create_data_dir(config)
    activated = listen_sockets()  # systemd's, all of them, when socket-activated
    sockets = activated or listen_on(config.listen)  # before saying "listening on"
    prepare_data_dir(config)
    _print_start(config, activated)
    exec_supervisor(config.worker_count, sockets, early_signals)


def listen_on(addresses: tuple[tuple[str, int], ...]) -> list[socket.socket]:
    """A listening socket for each address, or a ConfigError naming the one that failed."""
    from .server.app import bind_sockets

    sockets: list[socket.socket] = []
    try:
        for index, address in enumerate(addresses):
            if address in addresses[:index]:
                raise ConfigError(
                    f"--listen {listen_name(*address)} is given twice", "give each address once"
                )
            try:
                sockets += bind_sockets((address,))
            except OSError as exc:
                raise listen_error(*address, exc, addresses[:index]) from None
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen_name(host: str, port: int) -> str:
    """HOST:PORT as --listen takes it: an IPv6 address in brackets, `[::1]:3142`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Why a socket could not listen, and what to do, by errno: (cause, remedy) of (host, port).
_LISTEN_FAILURES: dict[int, tuple[Callable[[str, int], str], Callable[[str, int], str]]] = {
    errno.EADDRINUSE: (
        lambda host, port: "another process listens on that port",
        lambda host, port: (
            f"stop it, or pass --listen {listen_name(host, 'PORT')} with a free port"
        ),
    ),
    errno.EADDRNOTAVAIL: (
        lambda host, port: f"{host} is not an address of this host",
        lambda host, port: (
            f"pass --listen with one of its addresses, or 0.0.0.0:{port} for all of them"
        ),
    ),
    errno.EACCES: (
        lambda host, port: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
        lambda host, port: (
            f"pass --listen {listen_name(host, 3142)} (or another port above 1023), or run as root"
        ),
    ),
    errno.EAFNOSUPPORT: (
        lambda host, port: f"this host has no {'IPv6' if ':' in host else 'IPv4'}",
        lambda host, port: "pass --listen with an address of a protocol it has, e.g. 0.0.0.0:3142",
    ),
}


def listen_error(
    host: str, port: int, exc: OSError, earlier: tuple[tuple[str, int], ...] = ()
) -> ConfigError:
    """Why debcache can't listen on host:port, with the remedy for that reason."""
    cause = f"cannot listen on {listen_name(host, port)}"
    overlapping = [listen_name(*address) for address in earlier if address[1] == port]
    if exc.errno == errno.EADDRINUSE and overlapping:  # e.g. 0.0.0.0:P then 127.0.0.1:P
        return ConfigError(
            f"{cause}: it overlaps --listen {overlapping[0]}, on which debcache listens already",
            f"drop one of the two; 0.0.0.0:{port} covers every IPv4 address, [::]:{port} "
            "every IPv6 one",
        )
    if isinstance(exc, socket.gaierror):
        return ConfigError(
            f"{cause}: {host} is not an IP address or a name this host resolves ({exc.strerror})",
            "pass --listen with an IP address of this host, e.g. 0.0.0.0:3142",
        )
    reasons = _LISTEN_FAILURES.get(exc.errno)
    if reasons is not None:
        why, remedy = reasons
        return ConfigError(f"{cause}: {why(host, port)}", remedy(host, port))
    return ConfigError(f"{cause}: {exc.strerror or exc}", "pass --listen with another HOST:PORT")


def _parse_listen(value: str) -> tuple[str, int]:
    address = parse_listen_address(value)
    if address is None:
        raise ConfigError(
            f"--listen {value!r} is not HOST:PORT", "write e.g. --listen 0.0.0.0:3142"
        )
    return address


def _print_start(config: Config, activated: list[socket.socket]) -> None:
    source = config.source or "built-in defaults (upstreams from this host's apt sources)"
    click.echo(f"debcache: configuration from {source}; data in {config.data_dir}", err=True)
    if not config.upstreams:
        click.echo(
            "debcache: no upstreams configured or found in apt sources; "
            "serving the pinned branches only",
            err=True,
        )
    for upstream in config.upstreams.values():
        click.echo(f"debcache: upstream {upstream.name}: {' '.join(upstream.urls)}", err=True)
    addresses = [sock.getsockname()[:2] for sock in activated] or config.listen
    for host, port in addresses:
        click.echo(f"debcache: listening on http://{listen_name(host, port)}/", err=True)
    count = config.worker_count
    click.echo(f"debcache: {count} worker process{'es' if count > 1 else ''}", err=True)


# --- shared pieces of the data commands ----------------------------------------------


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--json`: machine-readable output instead of the table for humans."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)


def print_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True))


def open_state(
    config: Config, read_only: bool = False, any_thread: bool = False
) -> tuple[sqlite_utils.Database, FileStore]:
    """The database and the store of `config.data_dir`, for a command-line operation.

    `read_only` commands neither create nor migrate the schema, so a user who may only
    read the data dir can run them. `any_thread`: for an operation that runs on
    `with_upstream_client`'s worker thread. The connection closes with the command.
    """
    check_data_dir(config)
    if not (config.data_dir / "debcache.db").exists():
        raise ConfigError(
            f"data dir {config.data_dir} ({data_dir_origin(config)}) holds no debcache database",
            DATA_DIR_REMEDY,
        )
    path = config.data_dir / "debcache.db"
    try:
        if read_only:
            database = db.connect_read_only(path)
        else:
            db.create_schema(path)
            database = db.connect(path, check_same_thread=not any_thread)
        lacks = db.schema_lacks(database) if read_only else []
    except sqlite3.Error as exc:  # most often: another user's data dir
        raise ConfigError(f"{path}: {exc}", ACCESS_REMEDY) from None
    if lacks:
        database.conn.close()
        raise ConfigError(
            f"{path} was made by an older debcache (it lacks {', '.join(lacks)})",
            "start `debcache serve` of this version once, which upgrades it",
        )
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(database.conn.close)
    return database, FileStore(config.data_dir)


def with_upstream_client(operation: Callable[[UpstreamClient], T]) -> T:
    """Run `operation(client)` with the command's one event loop, which holds the HTTP
    session and the UpstreamClient it downloads through.

    The operation blocks (SQLite, gpgv, hashing), so it runs on a worker thread, as in
    the server; its downloads run on the loop. A daemon thread: Ctrl-C ends the command
    at once, as before, instead of waiting for the operation to finish.
    """

    async def main() -> T:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = loop.create_future()

        def report(settle: Callable[[Any], None], value: Any) -> None:
            if not outcome.done():
                settle(value)

        def work(client: UpstreamClient) -> None:
            try:
                result = operation(client)
            except BaseException as exc:
                settle, value = outcome.set_exception, exc
            else:
                settle, value = outcome.set_result, result
            with contextlib.suppress(RuntimeError):  # the loop is gone: Ctrl-C ended it
                loop.call_soon_threadsafe(report, settle, value)

        async with create_session() as session:
            client = UpstreamClient(session)
            threading.Thread(target=work, args=(client,), daemon=True).start()
            return await outcome

    return asyncio.run(main())


ACCESS_REMEDY = "run debcache as the user `debcache serve` runs as, who owns the data dir"
DATA_DIR_REMEDY = (
    "pass the data dir `debcache serve` uses with debcache --data-dir DIR "
    "(or $DEBCACHE_DATA_DIR), or start `debcache serve` to create it"
)


def check_data_dir(config: Config) -> None:
    """A data command reads an existing data dir: a missing one is a mistake, not empty."""
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise ConfigError(
            f"data dir {config.data_dir} ({data_dir_origin(config)}) is a file, not a directory",
            f"point {data_dir_setting(config)} at the directory `debcache serve` uses",
        )
    if not config.data_dir.is_dir():
        raise ConfigError(
            f"data dir {config.data_dir} ({data_dir_origin(config)}) does not exist",
            DATA_DIR_REMEDY,
        )


def prepare_data_dir(config: Config) -> None:
    """What the server processes share, done once before they start: partial downloads
    a crash left are removed and the database schema is brought up to date."""
    FileStore(config.data_dir).open()
    db.create_schema(config.data_dir / "debcache.db")


def create_data_dir(config: Config) -> None:
    """Create the data dir that serve and import write to, or say why it can't be."""
    cause = f"cannot create data dir {config.data_dir} ({data_dir_origin(config)})"
    remedy = f"point {data_dir_setting(config)} at a directory, or at a path to create"
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # exist_ok tolerates directories only
        raise ConfigError(f"{cause}: it is a file", remedy) from None
    except NotADirectoryError as exc:
        parent = next(p for p in config.data_dir.parents if p.exists())
        raise ConfigError(f"{cause}: {parent} is a file, not a directory", remedy) from exc
    except OSError as exc:
        raise ConfigError(f"{cause}: {exc.strerror}", file_error(exc).remedy or remedy) from None


def data_dir_setting(config: Config) -> str:
    """What to change to name another data dir: the option, variable or key that named it."""
    origin = data_dir_origin(config)
    if origin == "the default":
        return "--data-dir"
    named_by = origin.removeprefix("from ")
    return named_by if named_by.startswith(("-", "$")) else f"[server] data_dir in {named_by}"


def data_dir_origin(config: Config) -> str:
    """Where the data dir came from, in the words of the message: `from --data-dir`."""
    context = click.get_current_context(silent=True)
    options = context.find_object(GroupOptions) if context else None
    if options and options.data_dir == config.data_dir:
        return f"from {options.data_dir_named_by}"
    if config.source and config.data_dir != default_data_dir():
        return f"from {config.source}"
    return "the default"


@contextlib.contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal; nothing otherwise."""
    if not sys.stderr.isatty() or total == 0:
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


@contextlib.contextmanager
def growing_progress_bar(
    total: int, label: str
) -> Iterator[tuple[Callable[[int], None] | None, Callable[[int], None] | None]]:
    """progress_bar whose total grows as work is found: (advance, add to the total)."""
    if not sys.stderr.isatty():
        yield None, None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:

        def grow(count: int) -> None:
            bar.length = (bar.length or 0) + count

        yield bar.update, grow


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def size(count: int | None) -> str:
    value = float(count or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


Column = Callable[[dict], object]


def print_listing(
    rows: list[dict], as_json: bool, columns: dict[str, Column], empty: str | None = None
) -> bool:
    """A listing command's output: the rows as JSON, `empty` when there are none, or a
    table of `columns` (header → cell of a row); True when it printed a table."""
    if as_json:
        print_json(rows)
        return False
    if not rows and empty:
        click.echo(empty)
        return False
    print_table(list(columns), [[cell(row) for cell in columns.values()] for row in rows])
    return True


# --- recordings -----------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def recordings(context: click.Context, as_json: bool) -> None:
    """List recordings: the installs tagged with a name.

    \b
    Tag an install with http://NAME@cache:3142/ as its proxy, or
    http://cache:3142/record/NAME/UPSTREAM as its mirror.
    """
    if context.invoked_subcommand is None:
        context.invoke(list_recordings, as_json=as_json)


@pass_config
def list_recordings(config: Config, as_json: bool) -> None:
    database, _ = open_state(config, read_only=True)
    listing = recordings_listing(database, config.fetch_log_days)
    if as_json:
        print_json(listing)
        return
    rows = listing["recordings"]
    columns: dict[str, Column] = {
        "RECORDING": lambda r: r["recording"],
        "FIRST": lambda r: when(r["first"]),
        "LAST": lambda r: when(r["last"]),
        "FILES": lambda r: r["files"],
        "FAILED": _failed_count,
        "CLIENTS": lambda r: r["clients"],
        "UPSTREAMS": lambda r: r["upstreams"],
    }
    empty = "No recordings yet. Tag an install with http://NAME@cache:3142/ as its proxy."
    tabled = print_listing(rows, False, columns, empty)
    click.echo(("\n" if tabled else "") + fetch_log_line(listing["fetch_log"]))
    if tabled:
        click.echo("\nFreeze one with: debcache freeze RECORDING")


def fetch_log_line(extent: dict) -> str:
    """How far back the fetch log goes, and what pruning keeps."""
    pruned = (
        f"rows older than {extent['days']} days are pruned, "
        "except those of recordings a manifest was frozen from"
    )
    if extent["since"] is None:
        return f"fetch log: empty ({pruned})"
    return f"fetch log: since {day(extent['since'])} ({pruned})"


def _failed_count(row: dict) -> str:
    if not row["expected_failures"]:
        return str(row["failed"])
    return f"{row['failed']} ({row['expected_failures']} expected)"


@recordings.command("show")
@click.argument("name")
@json_option
@pass_config
def show_recording(config: Config, name: str, as_json: bool) -> None:
    """List the files a recording received, with their sha256, and its failed fetches."""
    database, _ = open_state(config, read_only=True)
    check_recordings_exist(database, [name])
    contents = recording_contents(database, name)
    if as_json:
        print_json(contents)
        return
    files, failed = contents["files"], contents["failed"]
    print_table(
        ["UPSTREAM", "PATH", "SHA256", "SIZE"],
        [[f["upstream"], f["path"], f["sha256"][:SHORT_ID], size(f["size"])] for f in files],
    )
    if failed:
        click.echo(f"\nFailed fetches ({len(failed)}, not part of the recording):")
        print_table(
            ["UPSTREAM", "PATH", "STATUS", "NOTE"],
            [
                [
                    f["upstream"],
                    f["path"],
                    f["status"] if f["complete"] else f"{f['status']} incomplete",
                    f["expected"] or "-",
                ]
                for f in failed
            ],
        )


# --- freeze and manifests -------------------------------------------------------------


@cli.command("freeze")
@click.argument("recording_names", metavar="RECORDING...", nargs=-1, required=True)
@click.option("--name", "label", help="A label for the manifest.")
@click.option("--promote", "branch", metavar="BRANCH", help="Then point BRANCH at the manifest.")
@click.option(
    "--allow-unverified", is_flag=True, help="Include files that can't be verified, marked so."
)
@click.option(
    "--strict", is_flag=True, help="Refuse recordings with failed fetches (404s, cut transfers)."
)
@click.option(
    "--installer",
    type=click.Choice(["recorded", "complete"]),
    default="recorded",
    show_default=True,
    help="complete: also every udeb of the frozen debian-installer Packages of each "
    "architecture recorded, so hosts with other hardware install from the pin.",
)
@json_option
@pass_config
def freeze_command(
    config: Config,
    recording_names: tuple[str, ...],
    label: str | None,
    branch: str | None,
    allow_unverified: bool,
    strict: bool,
    installer: str,
    as_json: bool,
) -> None:
    """Verify what recordings fetched and store it as an immutable manifest.

    \b
    Example:
        debcache freeze xen-4.19-run-1234 --name "xen-4.19 2024-06"
    """
    database, store = open_state(config, any_thread=True)
    # The freeze says how many files it verifies, and adds those completing downloads.
    with growing_progress_bar(0, "Verifying") as (progress, more_work):
        manifest, created = with_upstream_client(
            lambda client: freeze(
                config,
                database,
                store,
                list(recording_names),
                client=client,
                promote=branch,
                label=label,
                allow_unverified=allow_unverified,
                strict=strict,
                installer=installer,
                progress=progress,
                more_work=more_work,
            )
        )
    summary = {
        "id": manifest.id,
        "label": manifest.label,
        "files": len(manifest.entries),
        "bytes": manifest.bytes,
        "created": created,
        "recordings": manifest.recordings,
        "unverified": manifest.unverified,
        "warnings": manifest.warnings,
        "completed": len(manifest.completed),
    }
    if branch:
        summary["promoted"] = branch
    if as_json:
        print_json(summary)
        return
    state = "Froze" if created else "Already frozen as"
    click.echo(
        f"{state} manifest {manifest.short_id}: {len(manifest.entries)} files, "
        f"{size(manifest.bytes)}"
        + (f", {len(manifest.completed)} not recorded but completed" if manifest.completed else "")
        + "."
    )
    if not created and label is not None:
        click.echo(f"Its label is now {label!r}.")
    for problem in manifest.unverified:
        click.echo(f"  unverified: {problem}")
    for warning in manifest.warnings:
        click.echo(f"  warning: {warning}")
    if branch:
        click.echo(f"Branch {branch} now serves it at /pin/{branch}/UPSTREAM/.")
    else:
        click.echo(f"Pin it with: debcache promote BRANCH {manifest.short_id}")


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def manifests(context: click.Context, as_json: bool) -> None:
    """List manifests; show, export and import them."""
    if context.invoked_subcommand is None:
        context.invoke(list_manifests, as_json=as_json)


@pass_config
def list_manifests(config: Config, as_json: bool) -> None:
    database, _ = open_state(config, read_only=True)
    # The list's JSON leaves out what only `manifests show` prints (Release data, files).
    hidden = ("releases", "unverified", "completed", "warnings")
    rows = [{k: v for k, v in r.items() if k not in hidden} for r in db.manifest_rows(database)]
    columns: dict[str, Column] = {
        "ID": lambda r: r["id"][:SHORT_ID],
        "LABEL": lambda r: r["label"] or "-",
        "CREATED": lambda r: when(r["created"]),
        "FILES": lambda r: r["files"],
        "SIZE": lambda r: size(r["bytes"]),
        "RECORDINGS": lambda r: ",".join(json.loads(r["recordings"])),
    }
    print_listing(
        rows, as_json, columns, "No manifests yet. Make one with: debcache freeze RECORDING"
    )


@manifests.command("show")
@click.argument("manifest_ref", metavar="ID")
@json_option
@pass_config
def show_manifest(config: Config, manifest_ref: str, as_json: bool) -> None:
    """Show a manifest's files (ID may be a unique prefix)."""
    database, _ = open_state(config, read_only=True)
    manifest = load_manifest(database, resolve_manifest_id(database, manifest_ref))
    if as_json:
        document = export_lockfile(manifest)
        document.pop("format")
        print_json(document)
        return
    click.echo(f"manifest {manifest.id}")
    click.echo(f"label    {manifest.label or '-'}")
    click.echo(f"created  {when(manifest.created)}")
    click.echo(f"from     {', '.join(manifest.recordings) or '-'}")
    for key, release in sorted(manifest.releases.items()):
        click.echo(f"release  {key}: {release.get('date')}")
    completed = set(manifest.completed)
    if completed:
        click.echo(
            f"completed {len(completed)} file(s) no recording fetched (FROM: completed), "
            "for fresh installs"
        )
    for problem in manifest.unverified:
        click.echo(f"unverified {problem}")
    for warning in manifest.warnings:
        click.echo(f"warning  {warning}")
    click.echo()
    print_table(
        ["UPSTREAM", "PATH", "SHA256", "SIZE", "FROM"],
        [
            [
                e.upstream,
                e.path,
                e.sha256[:SHORT_ID],
                size(e.size),
                "completed" if f"{e.upstream}/{e.path}" in completed else "recorded",
            ]
            for e in manifest.entries
        ],
    )


@manifests.command("export")
@click.argument("manifest_ref", metavar="ID")
@pass_config
def export_manifest(config: Config, manifest_ref: str) -> None:
    """Print a manifest as a JSON lockfile: debcache manifests export ID > lock.json"""
    database, _ = open_state(config, read_only=True)
    print_json(
        export_lockfile(load_manifest(database, resolve_manifest_id(database, manifest_ref)))
    )


@manifests.command("import")
@click.argument("lockfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--from",
    "source_url",
    metavar="URL",
    help="Another debcache (e.g. http://cache-a:3142) to fetch missing files from; "
    "default: the upstreams.",
)
@pass_config
def import_manifest_command(config: Config, lockfile: Path, source_url: str | None) -> None:
    """Recreate a manifest from a lockfile, fetching and verifying missing files."""
    try:
        document = json.loads(lockfile.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidLockfile(
            f"{lockfile}: not JSON ({exc})", "pass a file from `manifests export`"
        ) from None
    if source_url:
        check_peer_url(source_url)
    manifest = parse_lockfile(document, str(lockfile))
    create_data_dir(config)
    db.create_schema(config.data_dir / "debcache.db")
    database, store = open_state(config, any_thread=True)
    with progress_bar(len(manifest.entries), "Fetching") as progress:
        imported = with_upstream_client(
            lambda client: import_manifest(
                config, database, store, manifest, client, source_url, progress
            )
        )
    files, short_id = len(manifest.entries), manifest.short_id
    restored = f"{imported.restored_files} missing file(s) ({size(imported.restored_bytes)})"
    if imported.created:
        fetched = f"fetched {restored}" if imported.restored_files else "all already stored"
        click.echo(f"Imported manifest {short_id}: {files} files, {fetched}.")
    elif imported.restored_files:
        click.echo(f"Manifest {short_id} was already known; restored {restored}.")
    else:
        click.echo(f"Manifest {short_id} was already known, with all {files} files stored.")
    click.echo(f"Pin it with: debcache promote BRANCH {short_id}")


def check_peer_url(url: str) -> None:
    """`--from` names another debcache by its http:// URL; say so before fetching anything."""
    if not url_problem(url):
        return
    bare = url.partition("://")[2] if "://" in url else url
    fixed = f"http://{bare}" if parse_listen_address(bare.rstrip("/")) else None
    raise ConfigError(
        f"--from {url!r} is not the http:// URL of a debcache",
        f"write --from {fixed}"
        if fixed
        else "write --from http://HOST:PORT, e.g. http://cache-a:3142",
    )


# --- branches -------------------------------------------------------------------------


@cli.command("promote")
@click.argument("branch")
@click.argument("manifest_ref", metavar="MANIFEST")
@click.option("--note", help="Why; kept in the branch's log.")
@pass_config
def promote_command(config: Config, branch: str, manifest_ref: str, note: str | None) -> None:
    """Point BRANCH at MANIFEST (an id or unique prefix); creates the branch if new.

    \b
    Example:
        debcache promote xen-4.19 1a2b3c4d --note "after 12.7"
    """
    check_branch_name(branch)  # before the manifest: a bad name is the first thing to fix
    database, store = open_state(config)
    manifest_id = resolve_manifest_id(database, manifest_ref)
    with growing_progress_bar(0, "Checking blobs") as (progress, more_work):
        change = promote(database, store, branch, manifest_id, note, progress, more_work)
    _report_change(change, "now serves")


@cli.command("rollback")
@click.argument("branch")
@click.option("--to", "to", metavar="MANIFEST", help="Go to this manifest, not the previous one.")
@click.option("--note", help="Why; kept in the branch's log.")
@pass_config
def rollback_command(config: Config, branch: str, to: str | None, note: str | None) -> None:
    """Point BRANCH back at the manifest it served before (or at --to)."""
    database, store = open_state(config)
    _report_change(rollback(database, store, branch, to, note), "is back on")


def _report_change(change: Change, verb: str) -> None:
    before = f" (was {change.previous_id[:SHORT_ID]})" if change.previous_id else ""
    click.echo(f"Branch {change.branch} {verb} manifest {change.manifest_id[:SHORT_ID]}{before}.")
    click.echo(f"History: debcache log {change.branch}")


@cli.command("branches")
@json_option
@pass_config
def branches_command(config: Config, as_json: bool) -> None:
    """List branches and the manifest each serves."""
    database, _ = open_state(config, read_only=True)
    rows = db.branch_rows(database)
    columns: dict[str, Column] = {
        "BRANCH": lambda r: r["name"],
        "MANIFEST": lambda r: r["manifest_id"][:SHORT_ID],
        "LABEL": lambda r: r["label"] or "-",
        "CHANGED": lambda r: when(r["changed"]),
        "NOTE": lambda r: r["note"] or "-",
        "FILES": lambda r: r["files"],
        "SIZE": lambda r: size(r["bytes"]),
    }
    print_listing(
        rows, as_json, columns, "No branches yet. Make one with: debcache promote BRANCH MANIFEST"
    )


@cli.command("log")
@click.argument("branch")
@json_option
@pass_config
def log_command(config: Config, branch: str, as_json: bool) -> None:
    """A branch's history, newest first."""
    database, _ = open_state(config, read_only=True)
    current_manifest_id(database, branch)
    rows = db.branch_history(database, branch)
    columns: dict[str, Column] = {
        "WHEN": lambda r: when(r["time"]),
        "ACTION": lambda r: r["action"],
        "MANIFEST": lambda r: r["manifest_id"][:SHORT_ID],
        "FROM": lambda r: (r["previous_id"] or "-")[:SHORT_ID],
        "NOTE": lambda r: r["note"] or "-",
    }
    print_listing(rows, as_json, columns)


# --- status -----------------------------------------------------------------------------


@cli.command("status")
@json_option
@pass_config
def status_command(config: Config, as_json: bool) -> None:
    """Upstreams, branches, recent recordings, cache size and hit ratio (as /_/ shows)."""
    database, _ = open_state(config, read_only=True)
    status = collect_status(config, database)
    if as_json:
        click.echo(status_json(status))
        return
    last = status["last_24h"]
    ratio = "-" if last["hit_ratio"] is None else f"{last['hit_ratio']:.1%}"
    click.echo(f"data       {status['data_dir']}")
    store, cache = status["store"], status["cache"]
    click.echo(
        f"store      {store['blobs']} blobs, {size(store['bytes'])}; live cache "
        f"{cache['files']} paths, {size(cache['bytes'])}"
    )
    click.echo(f"last 24 h  {last['requests']} requests, hit ratio {ratio}")
    for upstream in status["upstreams"]:
        click.echo(f"upstream   {upstream['name']}: {' '.join(upstream['urls'])}")
    for branch in status["branches"]:
        click.echo(f"branch     {branch['name']} → {branch['short']} {branch['label'] or ''}")
    click.echo(f"manifests  {status['manifests']}; recordings {len(status['recordings'])} recent")


# --- store lifecycle ------------------------------------------------------------------


def parse_size(text: str) -> int:
    size = size_in_bytes(text)
    if size is None:
        raise ConfigError(f"--max-size {text!r} is not a size", "write e.g. 50G, 800M or 0")
    return size


@cli.command("gc")
@click.option(
    "--max-size", required=True, metavar="SIZE", help="Evict until the store fits, e.g. 50G."
)
@click.option("--dry-run", is_flag=True, help="Only say what would go.")
@json_option
@pass_config
def gc_command(config: Config, max_size: str, dry_run: bool, as_json: bool) -> None:
    """Evict live-cache blobs, least recently used first; pinned manifests' blobs stay.
    Then prune fetch-log rows older than [server] fetch_log_days (frozen recordings stay).

    \b
    Example:
        debcache gc --max-size 50G --dry-run
    """
    database, store = open_state(config)
    report = collect_garbage(database, store, parse_size(max_size), dry_run)
    # After the eviction, which ranks blobs by their last use in the fetch log.
    pruned = prune_fetch_log(database, config.fetch_log_days, dry_run)
    summary = {
        "evicted": len(report.evicted),
        "freed": report.freed,
        "size_before": report.size_before,
        "kept_protected": report.kept_protected,
        "pruned_fetches": pruned,
        "dry_run": dry_run,
    }
    if as_json:
        print_json(summary)
        return
    verb = "Would evict" if dry_run else "Evicted"
    click.echo(
        f"{verb} {len(report.evicted)} blobs, {size(report.freed)} of {size(report.size_before)}; "
        f"{report.kept_protected} blobs of pinned manifests kept."
    )
    verb = "Would prune" if dry_run else "Pruned"
    click.echo(
        f"{verb} {pruned} fetch-log rows older than {config.fetch_log_days} days; "
        "rows of recordings a manifest was frozen from kept."
    )


@cli.command("verify")
@json_option
@pass_config
def verify_command(config: Config, as_json: bool) -> None:
    """Re-hash the store and check every blob branches reference; quarantine corrupt blobs
    and fetch corrupt or missing ones again where possible; exit 1 while one is lost."""
    database, store = open_state(config, any_thread=True)
    with growing_progress_bar(0, "Hashing") as (progress, more_work):
        report = with_upstream_client(
            lambda client: verify_store(config, database, store, client, progress, more_work)
        )
    if as_json:
        print_json(dataclasses.asdict(report))
    else:
        click.echo(
            f"Checked {report.checked} blobs: {len(report.corrupt)} corrupt "
            f"(moved to {config.data_dir / 'quarantine'}), {len(report.missing)} of branches "
            f"missing, {len(report.refetched)} fetched again."
        )
        for sha256 in report.lost:
            click.echo(f"  lost: {sha256} (no upstream has it)")
        for branch, lost in report.broken_branches.items():
            click.echo(f"  branch {branch} cannot serve {len(lost)} file(s) until repaired")
        if report.lost:
            click.echo(
                "Repair: run `debcache verify` again once an upstream has them, or take them "
                "from another debcache: `debcache manifests export MANIFEST > LOCK && "
                "debcache manifests import LOCK --from http://OTHER:3142`."
            )
    if report.lost:
        sys.exit(1)


# --- debcache's key -----------------------------------------------------------------


@cli.group("key")
def key_group() -> None:
    """debcache's own archive signing key (for branches with resign = true)."""


@key_group.command("export")
@click.option("--armor", is_flag=True, help="ASCII-armoured instead of binary.")
@pass_config
def key_export(config: Config, armor: bool) -> None:
    """Print the public key; generated on first use.

    \b
    Example (apt's signed-by, or a d-i initrd's keyring):
        debcache key export > /usr/share/keyrings/debcache-archive-keyring.gpg
    """
    check_data_dir(config)
    sys.stdout.buffer.write(export_public_key(config.data_dir, armor))


# --- diff -----------------------------------------------------------------------------


@cli.command("diff")
@click.argument("a")
@click.argument("b")
@json_option
@click.option("--exit-code", is_flag=True, help="Exit with 1 when any file of A and B differs.")
@pass_config
def diff_command(config: Config, a: str, b: str, as_json: bool, exit_code: bool) -> None:
    """What differs between two manifests, branches or recordings.

    Packages and udebs added, removed and changed, installer images (old → new
    sha256, the version behind `current`), Release dates, a count of the index
    files, and any other file.

    \b
    Example:
        debcache diff xen-4.19 run-after-point-release
    """
    database, store = open_state(config, read_only=True)
    result = diff(load_side(config, database, store, a), load_side(config, database, store, b))
    if as_json:
        print_json(result.as_json())
    else:
        click.echo(result.as_text())
    if exit_code and result.differs:
        sys.exit(1)


# --- edge tier ------------------------------------------------------------------------


@cli.command("edge-config")
@click.option(
    "--origin", required=True, metavar="URL", help="debcache's URL, e.g. http://cache:3142."
)
@click.option("--listen", default=edge.DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT")
@click.option("--cache-dir", default=edge.DEFAULT_CACHE_DIR, show_default=True, metavar="DIR")
@click.option("--max-size", default=edge.DEFAULT_MAX_SIZE, show_default=True, metavar="SIZE")
@click.option("--log-dir", default=edge.DEFAULT_LOG_DIR, show_default=True, metavar="DIR")
@reports_errors
def edge_config_command(
    origin: str, listen: str, cache_dir: str, max_size: str, log_dir: str
) -> None:
    """Print an nginx.conf for an edge cache in front of debcache at URL.

    \b
    Example:
        debcache edge-config --origin http://cache:3142 > /etc/nginx/nginx.conf
    """
    settings = edge.edge_settings(origin, listen, cache_dir, max_size, log_dir)
    click.echo(edge.edge_config(settings), nl=False)


def main() -> None:
    """The console script; its output is flushed here, so that a reader that left is seen."""
    try:
        cli.main(prog_name="debcache")
    except SystemExit:
        flush_stdout()
        raise


def flush_stdout() -> None:
    """Flush here, not at interpreter exit, where a closed pipe is reported as an error."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        exit_for_closed_pipe()


def exit_for_closed_pipe() -> NoReturn:
    """`debcache ... | head` closed our stdout: stop quietly with 128 + SIGPIPE, as a Unix
    tool killed by SIGPIPE does (what the shell shows for `yes | head -1`).

    Later writes, including the interpreter's flush at exit, go to /dev/null (see the
    Python signal module's note on SIGPIPE).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(128 + signal.SIGPIPE)
