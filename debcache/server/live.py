"""Live requests: mirror-URL mode, /record/ and forward-proxy mode, all over one cache.

A request flows one way: resolve the target (upstream, archive path, recording),
ask the live cache where the body comes from, write the response, then log it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from aiohttp import HttpVersion11, web

from ..archive import parse_archive_path
from ..cache import FromStore, Outcome, PassedOn, Relayed, Streaming
from ..config import Config, Upstream
from ..errors import (
    BlobGone,
    DebcacheError,
    ForbiddenProxyHost,
    UnknownUpstream,
    UpstreamUnavailable,
)
from ..http_dates import http_date_timestamp
from ..recording import FetchRecord, check_recording_name, recording_from_credentials
from .errors import http_status
from .keys import BLOBS, CACHE, CONFIG, FETCH_LOG, RELAY
from .responses import SOURCE_HEADER, archive_headers, send_blob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    upstream: Upstream
    path: str
    recording: str | None


def is_absolute_form(request: web.BaseRequest) -> bool:
    """A forward-proxy request: the request line carries `http://host/...`."""
    return not request.raw_path.startswith("/")


async def serve_live(request: web.Request) -> web.StreamResponse:
    """GET/HEAD of an archive file through the live cache, in any of the three modes."""
    config, cache, fetch_log = request.app[CONFIG], request.app[CACHE], request.app[FETCH_LOG]
    target = resolve_target(request, config)
    record = fetch_log.begin(
        request.remote, target.recording, target.upstream.name, target.path, request.method
    )
    try:
        outcome = await cache.fetch(target.upstream, target.path)
        try:
            return await respond(request, target, outcome, record)
        except BlobGone as exc:
            # Quarantined (or evicted) before a byte went out: now a miss, fetched again.
            log.warning("%s/%s: %s; fetching it again", target.upstream.name, target.path, exc)
            cache.forget(target.upstream.name, target.path)
            outcome = await cache.fetch(target.upstream, target.path)
            return await respond(request, target, outcome, record)
    except DebcacheError as exc:
        record.status = http_status(exc)
        raise
    finally:
        fetch_log.finish(record)


# --- where a request goes ---------------------------------------------------------


def resolve_target(request: web.Request, config: Config) -> Target:
    if is_absolute_form(request):
        return _forward_proxy_target(request, config)
    first, _, rest = request.rel_url.raw_path.lstrip("/").partition("/")
    recording = None
    if unquote(first) == "record":
        tag, _, rest = rest.partition("/")
        recording = check_recording_name(unquote(tag))
        first, _, rest = rest.partition("/")
    upstream = _upstream_named(config, unquote(first))
    recording = recording or _recording_from_headers(
        request, "Authorization", "Proxy-Authorization"
    )
    return Target(upstream, parse_archive_path(rest), recording)


def _upstream_named(config: Config, name: str) -> Upstream:
    upstream = config.upstreams.get(name)
    if upstream is None:
        known = ", ".join(sorted(config.upstreams)) or "none"
        raise UnknownUpstream(
            f"no upstream named {name!r} (configured: {known})",
            "use http://cache:3142/UPSTREAM/... with one of those names, or add it to the config",
        )
    return upstream


def _forward_proxy_target(request: web.Request, config: Config) -> Target:
    matched = forwarded_upstream(request, config)
    if matched is None:
        host, port = (request.url.host or "").lower(), request.url.explicit_port
        authority = f"{host}:{port}" if port else host
        raise ForbiddenProxyHost(
            f"debcache forwards only to its configured archives; "
            f"{authority}{request.rel_url.raw_path} is in none",
            "add the host to proxy_hosts of an upstream, or use http://cache:3142/UPSTREAM/ "
            "as the mirror URL",
        )
    upstream, rest = matched
    # Only the proxy credentials name a recording here: Authorization is meant for the
    # origin (apt's auth.conf), and its login is no recording name.
    recording = _recording_from_headers(request, "Proxy-Authorization")
    return Target(upstream, parse_archive_path(rest), recording)


def forwarded_upstream(request: web.BaseRequest, config: Config) -> tuple[Upstream, str] | None:
    """The upstream an absolute URI belongs to, and the raw rest of its path.

    Its host (and port) must be one of the upstream's proxy_hosts and its base path a
    prefix of the path in whole segments; the longest base path wins.
    """
    host, port = (request.url.host or "").lower(), request.url.explicit_port
    raw = request.rel_url.raw_path
    best: tuple[int, Upstream, str] | None = None
    for upstream in config.upstreams.values():
        if not any(proxy_host_matches(entry, host, port) for entry in upstream.proxy_hosts):
            continue
        for base_path in base_paths(upstream):
            is_prefix = raw == base_path or raw.startswith(base_path + "/")
            if is_prefix and (best is None or len(base_path) > best[0]):
                best = (len(base_path), upstream, raw[len(base_path) + 1 :])
    return (best[1], best[2]) if best else None


def addressed_to_this_server(request: web.BaseRequest) -> bool:
    """An absolute URI whose port is the one this request arrived on: debcache itself."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return bool(sockname) and (request.url.explicit_port or 80) == sockname[1]


def proxy_host_matches(entry: str, host: str, port: int | None) -> bool:
    """`entry` is `host` or `host:port`; a missing port on either side means 80."""
    entry_host, _, entry_port = entry.rpartition(":") if ":" in entry else (entry, "", "80")
    return entry_host == host and int(entry_port or 80) == (port or 80)


@functools.cache
def base_paths(upstream: Upstream) -> frozenset[str]:
    """The path part of each base URL: `/debian` for http://mirror.example.org/debian."""
    return frozenset(urlsplit(url).path.rstrip("/") for url in upstream.urls)


def _recording_from_headers(request: web.Request, *headers: str) -> str | None:
    for header in headers:
        name = recording_from_credentials(request.headers.get(header))
        if name:
            return name
    return None


# --- the response -----------------------------------------------------------------


async def respond(
    request: web.Request, target: Target, outcome: Outcome, record: FetchRecord
) -> web.StreamResponse:
    record.source = getattr(outcome, "source", "upstream")
    if isinstance(outcome, Relayed):
        relay = request.app[RELAY]
        response = await relay.forward_live(
            request, target.upstream.name, target.path, target.recording
        )
        record.relayed = True  # the fetcher answered it, and logs it
        return response
    if isinstance(outcome, FromStore):
        return await _send_blob(request, target, outcome, record)
    if isinstance(outcome, Streaming):
        return await _send_download(request, target, outcome, record)
    return _pass_on(outcome, record)


async def _send_blob(
    request: web.Request, target: Target, outcome: FromStore, record: FetchRecord
) -> web.StreamResponse:
    headers = archive_headers(target.path, outcome.source)
    if outcome.warning:
        headers["Warning"] = '111 debcache "Revalidation Failed"'
        log.warning("serving a stale %s/%s: %s", target.upstream.name, target.path, outcome.warning)
    record.sha256, record.size = outcome.file.sha256, outcome.file.size
    file = outcome.file
    last_modified = http_date_timestamp(file.last_modified) or file.fetched_at
    blobs = request.app[BLOBS]
    return await send_blob(request, blobs, file.sha256, file.size, headers, record, last_modified)


async def _send_download(
    request: web.Request, target: Target, outcome: Streaming, record: FetchRecord
) -> web.StreamResponse:
    download = outcome.download
    if download.content_length is None and request.version < HttpVersion11:
        # HTTP/1.0 has no chunked encoding: the end of the body would be the end of the
        # connection, which could not tell a failed check. Send it whole once verified.
        await download.finished.wait()
        stored = request.app[CACHE].lookup(target.upstream.name, target.path)
        if download.error is not None or stored is None:
            raise download.error or UpstreamUnavailable(f"the download of {target.path} failed")
        return await _send_blob(request, target, FromStore(*stored, outcome.source), record)
    headers = archive_headers(target.path, outcome.source)
    if download.last_modified:
        headers["Last-Modified"] = download.last_modified
    response = web.StreamResponse(headers=headers)
    if download.content_length is not None:
        response.content_length = download.content_length
    elif request.method != "HEAD":
        response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        if request.method != "HEAD":
            async with contextlib.aclosing(download.chunks()) as chunks:
                async for chunk in chunks:
                    await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        return response
    except Exception as exc:
        # Headers and most of the body are gone already: end the connection short so
        # the client sees a failed transfer, never a complete-looking 200 nor a second
        # response written into this one's body.
        if isinstance(exc, DebcacheError):
            record.status = http_status(exc)
        else:
            log.exception("streaming %s/%s failed", target.upstream.name, target.path)
        if request.transport is not None:
            request.transport.close()
        return response
    record.status, record.complete = response.status, True
    if download.result is not None:
        record.sha256, record.size = download.result.sha256, download.result.size
    return response


def _pass_on(outcome: PassedOn, record: FetchRecord) -> web.Response:
    record.status, record.complete = outcome.status, True
    return web.Response(
        status=outcome.status,
        body=outcome.body,
        headers={"Content-Type": outcome.content_type, SOURCE_HEADER: "upstream"},
    )
