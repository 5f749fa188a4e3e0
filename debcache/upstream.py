"""The aiohttp client side: failover across base URLs, conditional GETs, bounded waits.

aiohttp's client would decompress `Content-Encoding: gzip` bodies and wait five
minutes for a hung mirror by default; both are wrong for an archive cache, so
the session is built here with `auto_decompress=False` and per-upstream timeouts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiofiles
import aiohttp
from yarl import URL

from . import __version__
from .archive import upstream_url
from .config import CONNECT_TIMEOUT, Upstream, toml_table
from .errors import UpstreamTimeout, UpstreamUnavailable
from .metrics import Metrics
from .store import FileStore

log = logging.getLogger(__name__)
FAILED_URL_PENALTY = 30.0  # seconds a failed base URL goes to the back of the queue
USER_AGENT = f"debcache/{__version__}"
PARALLEL_DOWNLOADS = 8  # blobs one operation (freeze, import, verify) fetches at once
PEER_TIMEOUT = 30.0  # seconds another debcache may stay silent (it has no config entry)
PEER_DEADLINE = 3600.0  # seconds one blob from another debcache may take in all
PEER_MAX_FILE_SIZE = 4 * 10**9  # a peer always knows the size; this only bounds a bad lockfile
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
T = TypeVar("T")


def create_session() -> aiohttp.ClientSession:
    """The one client session of a server; the caller closes it."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        skip_auto_headers=("Accept-Encoding",),
    )


@dataclass
class UpstreamHealth:
    """What this process saw of one upstream since it started (each process has its own)."""

    last_success: float | None = None  # wall-clock time of the last answer below 500
    last_failure: float | None = None  # of the last error, timeout or 5xx
    failure: str | None = None  # why, with the base URL: "http://…/debian: timed out"


@dataclass(frozen=True)
class Validators:
    """What we hold of a cached copy, sent back to the upstream to revalidate it."""

    last_modified: str | None
    etag: str | None


class UpstreamClient:
    """GETs archive paths from an upstream's base URLs, in order, skipping failed ones."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics | None = None) -> None:
        self.session = session
        self.metrics = metrics
        self._failed_until: dict[str, float] = {}
        self.started = time.time()
        self._health: dict[str, UpstreamHealth] = {}
        # Where the session lives: code on a worker thread downloads through `wait_for`.
        self._loop = asyncio.get_running_loop()

    async def get(
        self, upstream: Upstream, path: str, validators: Validators | None = None
    ) -> aiohttp.ClientResponse:
        """The first non-5xx response, or the last 5xx one; raise if no URL answered.

        The caller must release the response. Redirects are followed only within the
        upstream (`redirect_policy`); one that leads elsewhere is a failed attempt.
        """
        headers = self._request_headers(validators)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=upstream.timeout
        )
        failures: list[str] = []
        only_timeouts = True
        server_error: aiohttp.ClientResponse | None = None
        for base in self._in_preferred_order(upstream.urls):
            url = upstream_url(base, path)
            try:
                response = await follow(
                    self.session,
                    url,
                    redirect_policy(upstream),
                    headers=headers,
                    timeout=timeout,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._note(upstream, base, outcome_of(exc), describe_failure(exc))
                failures.append(f"{url}: {describe_failure(exc)}")
                only_timeouts &= isinstance(exc, TimeoutError)
                continue
            self._note(upstream, base, str(response.status))
            if response.status < 500:
                if server_error is not None:
                    server_error.release()
                return response
            failures.append(f"{url}: HTTP {response.status}")
            only_timeouts = False
            if server_error is not None:
                server_error.release()
            server_error = response
        log.warning("upstream %s failed for %s: %s", upstream.name, path, "; ".join(failures))
        if server_error is not None:
            return server_error
        error = UpstreamTimeout if only_timeouts else UpstreamUnavailable
        raise error(
            f"upstream {upstream.name!r} could not be reached for {path}: {'; '.join(failures)}",
            "check the mirror or list another one in "
            f"{toml_table('upstreams', upstream.name)} urls",
        )

    async def download_blob(
        self,
        upstream: Upstream,
        path: str | list[str],
        store: FileStore,
        sha256: str,
        size: int | None,
    ) -> DownloadFailure | None:
        """Fetch `path` into the store, kept only with this sha256 (and size); None, or why not.

        `path` may be a list: names of the same content to try in turn (by-hash, then
        plain). `size` None: only the hash decides.
        """
        outcome = await self._download(upstream, path, store, sha256=sha256, size=size)
        return outcome if isinstance(outcome, str) else None

    async def download_unlisted(
        self, upstream: Upstream, path: str, store: FileStore, max_size: int
    ) -> tuple[str, int] | DownloadFailure:
        """(sha256, size) of a file no index lists (a detached signature, checked by gpgv
        afterwards), if it has at most `max_size` bytes; or why not."""
        return await self._download(upstream, path, store, max_size=max_size)

    async def download_from_peer(
        self, url: str, store: FileStore, sha256: str, size: int
    ) -> DownloadFailure | None:
        """A blob from another debcache: not an upstream (no failover, no penalty, no
        metrics), but the same bounded, checked download."""
        # A peer redirects only within itself: its site is the base the URL came from.
        site = URL(url).with_path("/")
        outcome = await fetch_into_store(
            self.session,
            [url],
            store,
            sha256=sha256,
            size=size,
            max_size=PEER_MAX_FILE_SIZE,
            timeout=PEER_TIMEOUT,
            deadline=PEER_DEADLINE,
            may_follow=lambda target: within_base(target, site),
        )
        return outcome if isinstance(outcome, str) else None

    async def _download(
        self, upstream: Upstream, path: str | list[str], store: FileStore, **checks: Any
    ) -> tuple[str, int] | DownloadFailure:
        """`fetch_into_store`'s checks, with the upstream's timeout, its base URLs in
        failover order (a failed one goes to the back), and its metrics."""
        paths = [path] if isinstance(path, str) else path
        preferred = self._in_preferred_order(upstream.urls)
        bases = {upstream_url(base, name): base for name in paths for base in preferred}
        checks.setdefault("max_size", upstream.max_file_size)
        return await fetch_into_store(
            self.session,
            list(bases),
            store,
            timeout=upstream.timeout,
            deadline=upstream.deadline,
            may_follow=redirect_policy(upstream),
            observe=lambda url, result, why: self._note(upstream, bases[url], result, why),
            **checks,
        )

    @staticmethod
    async def bounded(downloads: Iterable[Awaitable[T]]) -> list[T]:
        """Await every download, at most PARALLEL_DOWNLOADS at once; results in order."""
        limit = asyncio.Semaphore(PARALLEL_DOWNLOADS)

        async def one(download: Awaitable[T]) -> T:
            async with limit:
                return await download

        return await asyncio.gather(*(one(d) for d in downloads))

    def wait_for(self, download: Coroutine[Any, Any, T]) -> T:
        """Run a download on the client's event loop from a worker thread, and wait.

        Freeze, import and verify block (SQLite, gpgv, parsing), so they run on a
        worker thread, off the loop that serves requests; their downloads run here.
        """
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            download.close()
            raise RuntimeError("wait_for from the event loop's own thread would deadlock")
        return asyncio.run_coroutine_threadsafe(download, self._loop).result()

    def health(self, upstream: str) -> UpstreamHealth:
        """What this process saw of `upstream` since `started`."""
        return self._health.get(upstream, UpstreamHealth())

    def penalized(self, upstream: Upstream) -> dict[str, float]:
        """The base URLs of `upstream` that failover tries last now: base → seconds left."""
        now = time.monotonic()
        left = {base: self._failed_until.get(base, 0.0) - now for base in upstream.urls}
        return {base: seconds for base, seconds in left.items() if seconds > 0}

    def _note(self, upstream: Upstream, base: str, outcome: str, why: str | None = None) -> None:
        """Count what a base URL answered; one that failed or sent a 5xx is tried last
        for a while."""
        if self.metrics:
            self.metrics.count_upstream(upstream.name, outcome)
        health = self._health.setdefault(upstream.name, UpstreamHealth())
        if outcome.isdigit() and int(outcome) < 500:
            self._failed_until.pop(base, None)
            health.last_success = time.time()
        else:
            self._failed_until[base] = time.monotonic() + FAILED_URL_PENALTY
            health.last_failure = time.time()
            health.failure = f"{base}: {why or f'HTTP {outcome}'}"

    def _in_preferred_order(self, urls: tuple[str, ...]) -> list[str]:
        now = time.monotonic()
        return sorted(urls, key=lambda base: self._failed_until.get(base, 0.0) > now)

    @staticmethod
    def _request_headers(validators: Validators | None) -> dict[str, str]:
        if validators is None:
            return {}
        # Like apt: a CDN or proxy between us and the mirror must revalidate too.
        headers = {"Cache-Control": "max-age=0"}
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        return headers


class RefusedRedirect(aiohttp.ClientError):
    """A redirect out of the upstream, or too many: the attempt failed, nothing is fetched."""


def redirect_policy(upstream: Upstream) -> Callable[[URL], bool]:
    """Whether a redirect may lead to a URL: inside one of the upstream's base URLs, or
    on one of its `redirect_hosts` (a CDN the operator named)."""
    bases = [URL(base) for base in upstream.urls]
    hosts = frozenset(upstream.redirect_hosts)

    def may_follow(target: URL) -> bool:
        if any(within_base(target, base) for base in bases):
            return True
        named = {str(target.host).lower(), f"{str(target.host).lower()}:{target.port}"}
        return target.scheme in ("http", "https") and bool(named & hosts)

    return may_follow


def within_base(target: URL, base: URL) -> bool:
    """`target` is `base` or below it: same scheme, host and port, path under its path."""
    if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
        return False
    if ".." in target.path.split("/"):
        return False
    prefix = base.path.rstrip("/") + "/"
    return target.path.startswith(prefix) or target.path == base.path


async def follow(
    session: aiohttp.ClientSession,
    url: str,
    may_follow: Callable[[URL], bool],
    **request: Any,
) -> aiohttp.ClientResponse:
    """GET `url`, following at most MAX_REDIRECTS redirects, each only where `may_follow`.

    Every upstream and peer request goes through here: aiohttp's own following would
    go anywhere a mirror says (a loopback service, a cloud metadata address).
    """
    current = URL(url)
    for _hop in range(MAX_REDIRECTS + 1):
        response = await session.get(current, allow_redirects=False, **request)
        location = response.headers.get("Location")
        if response.status not in REDIRECT_STATUSES or not location:
            return response
        response.release()
        try:
            target = current.join(URL(location))
        except ValueError as exc:
            raise RefusedRedirect(f"redirect to an invalid Location {location!r}") from exc
        if not may_follow(target):
            raise RefusedRedirect(
                f"redirect to {target} refused: outside the upstream "
                "(name its host in redirect_hosts if it is the mirror's own CDN)"
            )
        current = target
    raise RefusedRedirect(f"more than {MAX_REDIRECTS} redirects")


def outcome_of(exc: BaseException) -> str:
    """The metrics outcome of a request that got no answer."""
    return "timeout" if isinstance(exc, TimeoutError) else "error"


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def read_limited(response: aiohttp.ClientResponse, limit: int = 65536) -> bytes:
    """At most `limit` bytes of an error body, to pass it on to the client."""
    try:
        return await response.content.read(limit)
    except (TimeoutError, aiohttp.ClientError):
        return b""


class DownloadFailure(str):
    """Why a download failed, as text; `absent` when every URL answered 404 or 410,
    `unreachable` when none answered at all (connection refused or reset, timeout)."""

    absent: bool = False
    unreachable: bool = False


async def fetch_into_store(
    session: aiohttp.ClientSession,
    urls: list[str],
    store: FileStore,
    *,
    sha256: str | None = None,
    size: int | None = None,
    max_size: int | None = None,
    timeout: float = 30.0,
    deadline: float = 3600.0,
    may_follow: Callable[[URL], bool] = lambda target: False,
    observe: Callable[[str, str, str | None], None] | None = None,
) -> tuple[str, int] | DownloadFailure:
    """(sha256, size) of the blob stored from the first URL that has it whole, or why not.

    With `sha256` (and `size`) given, only a body that matches counts; without, any
    200 body of at most `max_size` bytes does (a detached signature whose hash no
    index lists is checked by gpgv afterwards). No body is written past `size` (if
    given, else `max_size`) plus one byte, nor for longer than `deadline` seconds;
    redirects lead only where `may_follow` allows. `observe(url, outcome, why)` hears how
    each URL tried answered: its HTTP status, or "timeout" or "error" and why.
    """
    failures = []
    absent = True
    answered = False  # some URL sent an HTTP answer: the upstream is up
    client_timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT, sock_read=timeout
    )
    limit = size if size is not None else max_size
    for url in urls:
        temp = store.create_temp()
        outcome = None  # stays None if cancelled before any answer
        why = None
        overall = asyncio.timeout(deadline)
        try:
            async with overall:
                response = await follow(session, url, may_follow, timeout=client_timeout)
                async with response:
                    answered = True
                    outcome = str(response.status)
                    if response.status != 200:
                        failures.append(f"{url}: HTTP {response.status}")
                        absent &= response.status in (404, 410)
                        continue
                    digest, received = await _save_body(response, temp, limit)
            if limit is not None and received > limit:
                absent = False
                failures.append(f"{url}: larger than {limit} bytes")
                continue
            if (sha256 is not None and digest != sha256) or size not in (None, received):
                absent = False
                failures.append(
                    f"{url}: got sha256 {digest[:12]} ({received} bytes), "
                    f"not {(sha256 or '?')[:12]}"
                )
                continue
            blob = store.commit(temp, digest)
            await asyncio.to_thread(store.sync_directory, blob.parent)
            return digest, received
        except (aiohttp.ClientError, TimeoutError) as exc:
            absent = False
            outcome = outcome_of(exc)
            why = f"took longer than {deadline:g} s" if overall.expired() else describe_failure(exc)
            failures.append(f"{url}: {why}")
        finally:
            temp.unlink(missing_ok=True)
            if observe is not None and outcome is not None:
                observe(url, outcome, why)
    failure = DownloadFailure("; ".join(failures) or "no URL to fetch it from")
    failure.absent = absent and bool(failures)
    failure.unreachable = not answered and bool(failures)
    return failure


async def _save_body(
    response: aiohttp.ClientResponse, temp: Path, max_size: int | None = None
) -> tuple[str, int]:
    """Write the body to `temp`; stops at `max_size` + 1 bytes (the caller checks)."""
    hasher = hashlib.sha256()
    received = 0
    async with aiofiles.open(temp, "wb") as out:
        async for chunk in response.content.iter_chunked(256 * 1024):
            if max_size is not None and received + len(chunk) > max_size:
                chunk = chunk[: max_size + 1 - received]  # the one byte too many says enough
            hasher.update(chunk)
            received += len(chunk)
            await out.write(chunk)
            if max_size is not None and received > max_size:
                break
        await out.flush()
        await asyncio.to_thread(os.fsync, out.fileno())
    return hasher.hexdigest(), received
