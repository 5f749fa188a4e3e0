"""The `debcache` command: parse, call, print. No logic lives here."""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import Config, load_config
from .errors import ConfigError, DebcacheError


class UserError(click.ClickException):
    """A DebcacheError as click prints it: `Error: <cause>. <remedy>.`, exit status 1."""


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn DebcacheError and OSError into one line on stderr, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DebcacheError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            raise UserError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

    return wrapper


@click.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DEBCACHE_CONFIG",
    help="TOML configuration (default: $DEBCACHE_CONFIG, /etc/debcache/debcache.toml, "
    "or built-in defaults from the host's apt sources).",
)
@click.pass_context
def cli(context: click.Context, config_path: Path | None) -> None:
    """debcache: a caching proxy for Debian archives that records, freezes and pins installs."""
    context.obj = config_path


def pass_config(command: Callable[..., Any]) -> Callable[..., Any]:
    """Load the configuration once, turning its errors into one-line messages."""

    @click.pass_context
    @reports_errors
    @functools.wraps(command)
    def wrapper(context: click.Context, *args: Any, **kwargs: Any) -> Any:
        return command(load_config(context.obj), *args, **kwargs)

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
    type=click.Path(file_okay=False, path_type=Path),
    help="Where blobs and the database live, instead of [server] data_dir.",
)
@pass_config
def serve(config: Config, listen: tuple[str, ...], data_dir: Path | None) -> None:
    """Run the caching proxy.

    \b
    Example:
        debcache serve --listen 127.0.0.1:3142
    """
    from .server.app import bind_sockets, serve_forever

    if listen:
        config = dataclasses.replace(config, listen=tuple(_parse_listen(v) for v in listen))
    if data_dir:
        config = dataclasses.replace(config, data_dir=data_dir)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        sockets = bind_sockets(config)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {', '.join(f'{h}:{p}' for h, p in config.listen)}: {exc.strerror}",
            "stop whatever uses the port, or pass --listen HOST:PORT",
        ) from None
    _print_start(config)
    serve_forever(config, sockets)


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"--listen {value!r} is not HOST:PORT", "write e.g. --listen 0.0.0.0:3142"
        )
    return host.strip("[]"), int(port)


def _print_start(config: Config) -> None:
    source = config.source or "built-in defaults (upstreams from this host's apt sources)"
    click.echo(f"debcache: configuration from {source}; data in {config.data_dir}", err=True)
    if not config.upstreams:
        click.echo(
            "debcache: no upstreams configured or found in apt sources; "
            "add [upstreams.NAME] to the configuration",
            err=True,
        )
    for upstream in config.upstreams.values():
        click.echo(f"debcache: upstream {upstream.name}: {' '.join(upstream.urls)}", err=True)
    for host, port in config.listen:
        click.echo(f"debcache: listening on http://{host}:{port}/", err=True)


def main() -> None:
    cli(prog_name="debcache")
