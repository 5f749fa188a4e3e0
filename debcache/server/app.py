"""The app factory, its services, the error middleware and the server's main loop."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .. import db as queries
from ..cache import LiveCache, StoreHits
from ..config import Config
from ..db import WRITE_RETRY_SECONDS, Database
from ..errors import ApiNotAllowed, ConfigError, DebcacheError, UnsupportedMethod
from ..fetchlog_retention import start_daily_prune, stop_daily_prune
from ..inflight import Downloads
from ..integrity import CheckedBlobs
from ..metrics import Metrics
from ..pinned import PinnedFiles
from ..recording import FetchLog
from ..resign import ensure_key
from ..store import FileStore
from ..supervisor import ChildSpec
from ..upstream import UpstreamClient, create_session
from . import admin, api
from .errors import http_status
from .http_log import BatchedAccessLog, http_logger
from .keys import (
    BLOBS,
    CACHE,
    CONFIG,
    DATABASE,
    FETCH_LOG,
    MACHINE_NAMES,
    METRICS,
    PINNED,
    RELAY,
    UPSTREAM,
)
from .live import addressed_to_this_server, forwarded_upstream, is_absolute_form, serve_live
from .machine_names import MachineNames
from .pinned import pinned_root, serve_manifest, serve_pinned
from .relay import CLIENT_HEADER, FetcherRelay, RelayedResponse
from .responses import SOURCE_HEADER

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Role:
    """What one server process does (see supervisor.py).

    single: everything (the one process of `workers = 1`, and in-process tests);
    fetcher: everything, but only for the workers, on a private Unix socket;
    worker: hits from the store; the rest relayed to the fetcher at `fetcher_socket`.
    """

    name: str = "single"
    fetcher_socket: str | None = None
    supervised: bool = False  # then the supervisor swept the temp files, not us

    @property
    def relays(self) -> bool:
        return self.name == "worker"


SINGLE = Role()


def create_app(
    config: Config, write_retry_seconds: float = WRITE_RETRY_SECONDS, role: Role = SINGLE
) -> web.Application:
    """The debcache web application for `config`; services start with the app.

    write_retry_seconds: how long the database writer retries a locked database before
    fetch-log rows wait in its journal (tests make it short)."""
    first = [relayed_client_middleware] if role.name == "fetcher" else []
    relaying = [relay_middleware] if role.relays else []
    app = web.Application(
        middlewares=[
            *first,
            metrics_middleware,
            error_middleware,
            *relaying,
            forward_proxy_middleware,
            status_access_middleware,
        ]
    )
    app[CONFIG] = config
    app.cleanup_ctx.append(
        functools.partial(services, write_retry_seconds=write_retry_seconds, role=role)
    )
    app.router.add_get("/", admin.front_page)
    app.router.add_get("/_/", admin.status_page)
    app.router.add_get("/_/branches/{branch}", admin.branch_page)
    app.router.add_get("/_/health", admin.health)
    app.router.add_get("/_/metrics", admin.metrics)
    app.router.add_get("/_/api/", admin.api_index)
    app.router.add_get("/_/api/status", admin.status_api)
    app.router.add_routes(api.routes())
    app.router.add_get("/_/key.gpg", admin.public_key)
    app.router.add_get("/_/key.asc", admin.public_key)
    # /_/ is debcache's own namespace, never an upstream's: after its real pages, any
    # other path there is a 404 that lists them. [\s\S], not ".": a %0A in a path
    # must reach the handlers, which answer it, not fall through the router.
    app.router.add_route("*", "/_", admin.unknown_page)
    app.router.add_route("*", r"/_/{tail:[\s\S]*}", admin.unknown_page)
    # The roots of the mirrors the front page links to answer how to use them.
    app.router.add_get(r"/pin/{branch:[^/]+}/{upstream:[^/]+}/", pinned_root)
    app.router.add_get(r"/pin/{tail:[\s\S]+}", serve_pinned)
    app.router.add_get(r"/manifest/{tail:[\s\S]+}", serve_manifest)
    app.router.add_get(r"/{upstream:[^/]+}/", admin.mirror_root)
    app.router.add_get(r"/{tail:[\s\S]+}", serve_live)
    return app


async def services(
    app: web.Application, write_retry_seconds: float = WRITE_RETRY_SECONDS, role: Role = SINGLE
) -> AsyncIterator[None]:
    """Open the store, the database and the upstream session; close them on shutdown."""
    config = app[CONFIG]
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if any(branch.resign for branch in config.branches.values()):
        await asyncio.to_thread(ensure_key, config.data_dir)  # fails now if gpg is missing
    store = FileStore(config.data_dir)
    store.create_directories() if role.supervised else store.open()
    # A worker's rows wait in a journal of its own: several processes write at once.
    journal = f"fetchlog-journal.{os.getpid()}.jsonl" if role.relays else None
    database = Database(config.data_dir / "debcache.db", write_retry_seconds, journal).open()
    session = create_session()
    downloads = Downloads(store)
    metrics = Metrics()
    metrics.track_in_flight(downloads.count)
    client = UpstreamClient(session, metrics)  # one failover state for live misses and fills
    if role.relays:
        assert role.fetcher_socket is not None
        cache: LiveCache | StoreHits = StoreHits(store, database.path)
        app[RELAY] = FetcherRelay(role.fetcher_socket)
    else:
        cache = LiveCache(store, database, downloads, client)
        await cache.load()
    pinned = PinnedFiles(config, database, store, client)
    app[CACHE], app[FETCH_LOG], app[PINNED] = cache, FetchLog(database, metrics), pinned
    app[METRICS], app[DATABASE], app[UPSTREAM] = metrics, database, client
    app[BLOBS] = CheckedBlobs(store)
    app[MACHINE_NAMES] = MachineNames()
    app[MACHINE_NAMES].look_up()  # DNS: in a thread, before the first API change
    # The fetch log stays bounded: pruned shortly after start, then daily, by one process
    # (the fetcher, or the single one), not by every worker.
    pruning = None if role.relays else start_daily_prune(database, config)
    try:
        yield
    finally:
        if pruning is not None:
            await stop_daily_prune(pruning)  # before the database closes: it writes there
        if RELAY in app:
            await app[RELAY].close()
        if isinstance(cache, StoreHits):
            cache.close()
        await downloads.close()
        await app[BLOBS].close()
        await pinned.close()  # its fills use the session, its re-signings the database
        await session.close()
        database.close()


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request with the status it got: errors, 404s and 405s of the router,
    and refusals raised before any handler included. A relayed request is the
    fetcher's to count."""
    metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        metrics.count_request("none", exc.status)
        raise
    if not isinstance(response, RelayedResponse):
        metrics.count_request(response.headers.get(SOURCE_HEADER, "none"), response.status)
    return response


@web.middleware
async def relayed_client_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The fetcher's requests come from workers: the client is the one they name."""
    return await handler(request.clone(remote=request.headers.get(CLIENT_HEADER, "")))


# debcache's own pages a worker answers itself; every other /_/ page is the fetcher's,
# which holds the state they show (downloads, upstream health) and runs the API.
WORKER_PAGES = ("/_/health",)


@web.middleware
async def relay_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_/") and request.path not in WORKER_PAGES:
        return await request.app[RELAY].forward(request)
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """DebcacheError → its status from `HTTP_STATUS` and one plain-text line; anything
    else → logged 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except DebcacheError as exc:
        # A 405 must name what is allowed (RFC 9110 15.5.6); debcache proxies GET and HEAD.
        status = http_status(exc)
        headers = {"Allow": "GET, HEAD"} if status == 405 else None
        return web.Response(status=status, text=f"{exc}\n", headers=headers)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.raw_path)
        return web.Response(
            status=500, text="debcache failed unexpectedly; the details are in its log.\n"
        )


@web.middleware
async def forward_proxy_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Absolute-URI requests go to the live cache, whatever route their path matched."""
    if request.method == "CONNECT":
        raise UnsupportedMethod(
            f"debcache does not tunnel connections (CONNECT {request.raw_path})",
            "use an http:// source with this proxy, or http://cache:3142/UPSTREAM/ as the mirror",
        )
    if is_absolute_form(request):
        if request.method not in ("GET", "HEAD"):
            raise UnsupportedMethod(f"debcache proxies GET and HEAD only, not {request.method}")
        config = request.app[CONFIG]
        if forwarded_upstream(request, config) is None and addressed_to_this_server(request):
            # A client with debcache as its proxy asking for debcache's own URLs (/pin/,
            # /record/...): serve it as the origin-form request it amounts to.
            return await handler(request.clone(rel_url=request.rel_url))
        return await serve_live(request)
    return await handler(request)


def is_status_read(request: web.Request) -> bool:
    """A read of the status page, a branch's page or the API: what `[server] status_from`
    restricts.

    Mutations (POST /_/api/...) keep their own rule (loopback or the admin token);
    /_/health, /_/metrics, the key and the mirrors stay open to every client.
    """
    path = request.path
    reading = request.method in ("GET", "HEAD")
    own_reads = ("/_/api/", "/_/branches/")
    return reading and (path in ("/_/", "/_/api") or path.startswith(own_reads))


def may_read_status(config: Config, remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in network for network in config.status_from)


@web.middleware
async def status_access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The status page and the API answer the clients `[server] status_from` lists."""
    config = request.app[CONFIG]
    if is_status_read(request) and not may_read_status(config, request.remote):
        raise ApiNotAllowed(
            f"the status page and the API do not answer {request.remote} ([server] status_from)",
            "ask the admin to add this address to status_from, or run `debcache status` "
            "on the server",
        )
    return await handler(request)


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, request, status, bytes sent, cache source, seconds.

    Bytes sent are everything written to the connection for this response (status
    line, headers and body), sendfile'd bodies included; for a client that hung up
    halfway, what was written before the connection broke.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %s %.3f',
            request.remote,
            request.method,
            request.raw_path,
            response.status,
            request.writer.output_size,
            response.headers.get(SOURCE_HEADER, "-"),
            time,
        )


def check_something_to_serve(config: Config) -> None:
    """Refuse to start with no upstream and no manifest: every request would be a 404.

    A site with imported manifests and no upstream is valid: it serves its pins.
    """
    if config.upstreams or _has_manifests(config.data_dir / "debcache.db"):
        return
    where = f"in {config.source}" if config.source else "configured"
    raise ConfigError(
        f"nothing to serve: no upstream {where} or found in /etc/apt/sources.list "
        f"(and sources.list.d), and no manifest in {config.data_dir}",
        "add an [upstreams.NAME] table with urls to a configuration file passed with "
        "--config, or check the deb lines in /etc/apt/sources.list",
    )


def _has_manifests(path: Path) -> bool:
    if not path.exists():
        return False
    database = queries.connect(path)
    try:
        return queries.has_manifests(database)
    except sqlite3.OperationalError:  # a database from before any manifest table
        return False
    finally:
        database.conn.close()


def bind_sockets(addresses: Iterable[tuple[str, int]]) -> list[socket.socket]:
    """A listening socket for each (host, port), made before the app starts.

    listen() here, not in aiohttp: with SO_REUSEADDR two sockets bind the same port, and
    only listen() finds the clash. IPv6 sockets are IPv6 only (as nginx's), so that
    `[::]:P` and `0.0.0.0:P` can both be listed.
    """
    sockets = []
    try:
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


LISTEN_BACKLOG = 128  # aiohttp's own default


async def run_server(
    config: Config,
    sockets: list[socket.socket],
    stop: asyncio.Event | None = None,
    role: Role = SINGLE,
    on_ready: Callable[[], None] | None = None,
    drain_seconds: float = 0.0,
) -> None:
    """Serve on `sockets` until `stop` is set (or SIGINT/SIGTERM when run as a service).

    On stop, this process stops accepting; then for up to `drain_seconds` every
    connection it has is served to the end of its current or next request and closed
    (aiohttp alone would close one that has not sent its request yet unanswered: a
    failed request for a client that a process beside this one would have served);
    what still runs after that gets SHUTDOWN_TIMEOUT seconds."""
    stop = stop or asyncio.Event()
    # The fetcher's requests are the workers' relays, which the workers log.
    access_log = None if role.name == "fetcher" else logging.getLogger("debcache.access")
    runner = web.AppRunner(
        create_app(config, role=role),
        access_log_class=AccessLogger,
        access_log=access_log,
        handle_signals=False,
        logger=http_logger(),  # a malformed request: one line, not a traceback
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        if on_ready is not None:
            on_ready()
        await stop.wait()
        if drain_seconds:
            await _stop_accepting(sockets)
        for site in list(runner.sites):
            await site.stop()
        if drain_seconds and runner.server is not None:
            await _drain(runner.server, drain_seconds)
    finally:
        await runner.cleanup()


async def _stop_accepting(sockets: list[socket.socket]) -> None:
    """Stop accepting, then let the connections accepted last become transports.

    asyncio accepts a batch of connections and makes each one's transport in a task
    of its own; if the server closes before such a task runs, the transport cannot
    attach and the connection is closed with its request unread (the client sees a
    reset). So: no more accepts first, the server's close only a moment later."""
    loop = asyncio.get_running_loop()
    for sock in sockets:
        loop.remove_reader(sock.fileno())
    await asyncio.sleep(ACCEPTED_JOIN)


async def _drain(server: web.Server, seconds: float) -> None:
    """Until every connection has closed, each after its current or next response;
    at most `seconds` (an idle keep-alive connection may never send another request)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while server.connections and loop.time() < give_up:
        for connection in server.connections:
            connection.keep_alive(False)
        await asyncio.sleep(0.05)


# Seconds a stopping server process serves the connections it has (see run_server).
DRAIN_SECONDS = 10.0
ACCEPTED_JOIN = 0.1  # seconds for the transports of the connections accepted last
# Seconds responses still under way after that may take: a client that stopped
# reading must not hold up a restart for longer.
SHUTDOWN_TIMEOUT = 5.0


def serve_child(config: Config, spec: ChildSpec) -> None:
    """A server process of the supervisor's: serve on the sockets it passed until told
    to stop (SIGTERM, SIGINT) or until the supervisor is gone (its pipe ends)."""
    role = Role(spec.role, spec.fetcher_socket, supervised=True)
    sockets = [socket.socket(fileno=fd) for fd in spec.listen_fds]

    def ready() -> None:
        os.write(spec.ready_fd, b"ready\n")
        os.close(spec.ready_fd)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        # SIGHUP is the supervisor's (reload); a terminal's hangup must not end a child.
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        loop.add_reader(spec.parent_fd, _on_parent_pipe, spec.parent_fd, stop)
        flushing = asyncio.ensure_future(BatchedAccessLog.install().run())
        try:
            await run_server(config, sockets, stop, role, ready, DRAIN_SECONDS)
        finally:
            flushing.cancel()
            await asyncio.gather(flushing, return_exceptions=True)

    asyncio.run(main())


def _on_parent_pipe(fd: int, stop: asyncio.Event) -> None:
    """Readable only at its end: the supervisor is gone, so this process stops too."""
    if not os.read(fd, 1):
        asyncio.get_running_loop().remove_reader(fd)
        log.warning("the supervisor is gone; stopping")
        stop.set()
