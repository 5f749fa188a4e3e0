"""Pinned and manifest endpoints: files served from the store only, never from upstream.

`/pin/<branch>/<upstream>/<path>` serves the branch's current manifest;
`/manifest/<id>/<upstream>/<path>` serves one manifest, cacheable forever.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from urllib.parse import unquote

from aiohttp import web

from ..archive import parse_archive_path
from ..branches import check_branch_name
from ..config import NAME_PATTERN
from ..errors import DebcacheError, InvalidManifestId, InvalidName, UnknownPage
from ..pinned import PinnedFile
from ..store import SHA256_PATTERN
from .errors import http_status
from .keys import BLOBS, FETCH_LOG, PINNED
from .responses import IMMUTABLE, archive_headers, send_blob

log = logging.getLogger(__name__)
# A promote takes effect for the next request, HTTP caches in front included: they
# revalidate (ETag, Last-Modified) every time. /manifest/ URLs are the cacheable ones.
PIN_MAX_AGE = "no-cache"
MANIFEST_HEADER = "X-Debcache-Manifest"


async def serve_pinned(request: web.Request) -> web.StreamResponse:
    """GET/HEAD /pin/<branch>/<upstream>/<path>."""
    branch_text, upstream, path = _split(request, "pin")
    branch = check_branch_name(branch_text)
    pinned = request.app[PINNED]
    return await _serve(
        request, upstream, path, pinned.resolve_pinned(branch, upstream, path), PIN_MAX_AGE, branch
    )


async def pinned_root(request: web.Request) -> web.Response:
    """GET /pin/<branch>/<upstream>/: how to use the pin in sources.list."""
    branch = check_branch_name(request.match_info["branch"])
    upstream = request.match_info["upstream"]
    manifest_id, suites = await request.app[PINNED].pinned_suites(branch, upstream)
    base = f"http://{request.host}/pin/{branch}/{upstream}"
    lines = [
        f"debcache: branch {branch} of upstream {upstream}, pinned to manifest {manifest_id}.",
        "Only the files frozen in that manifest are served here.",
        "",
        "Use it in /etc/apt/sources.list (with the components you froze):",
        *(f"  deb {base} {suite} main" for suite in suites or ["SUITE"]),
        "",
        f"Status: http://{request.host}/_/",
    ]
    return web.Response(text="\n".join(lines) + "\n")


async def serve_manifest(request: web.Request) -> web.StreamResponse:
    """GET/HEAD /manifest/<id>/<upstream>/<path>: immutable."""
    manifest_id, upstream, path = _split(request, "manifest")
    if not SHA256_PATTERN.fullmatch(manifest_id):
        raise InvalidManifestId(
            f"{manifest_id!r} is not a full manifest id", "use all 64 hex digits of the id"
        )
    pinned = request.app[PINNED]
    return await _serve(
        request, upstream, path, pinned.resolve_manifest(manifest_id, upstream, path), IMMUTABLE
    )


def _split(request: web.Request, prefix: str) -> tuple[str, str, str]:
    parts = request.rel_url.raw_path.lstrip("/").split("/", 3)
    if len(parts) != 4 or unquote(parts[0]) != prefix:
        raise UnknownPage(
            f"{request.rel_url.raw_path} is not /{prefix}/NAME/UPSTREAM/PATH",
            f"request /{prefix}/NAME/UPSTREAM/dists/SUITE/InRelease or the like",
        )
    upstream = unquote(parts[2])
    if not NAME_PATTERN.fullmatch(upstream):
        raise InvalidName(f"{upstream!r} is not an upstream name", "use the name from the config")
    return unquote(parts[1]), upstream, parse_archive_path(parts[3])


async def _serve(
    request: web.Request,
    upstream: str,
    path: str,
    resolving: Awaitable[PinnedFile],
    cache_control: str,
    branch: str | None = None,
) -> web.StreamResponse:
    fetch_log = request.app[FETCH_LOG]
    record = fetch_log.begin(request.remote, None, upstream, path, request.method)
    record.source = "pinned"
    try:
        found: PinnedFile = await resolving
        record.sha256, record.size = found.sha256, found.size
        if found.filled and branch:
            # Recorded under the branch's name, with what authenticates it, so that
            # `debcache freeze BRANCH` can take the file into the next manifest.
            record.recording, record.source = branch, "filled"
            await _record_authenticating_indices(request, branch, found.manifest_id, upstream)
        headers = archive_headers(path, record.source, cache_control)
        headers[MANIFEST_HEADER] = found.manifest_id
        if found.warning:
            log.warning("%s", found.warning)
            # warn-text is a quoted-string: the remedy may quote a TOML key.
            quoted = found.warning.replace("\\", "\\\\").replace('"', '\\"')
            headers["Warning"] = f'199 debcache "{quoted}"'

        blobs = request.app[BLOBS]
        return await send_blob(
            request, blobs, found.sha256, found.size, headers, record, found.last_modified
        )
    except DebcacheError as exc:
        record.status = http_status(exc)
        raise
    finally:
        fetch_log.finish(record)


async def _record_authenticating_indices(
    request: web.Request, branch: str, manifest_id: str, upstream: str
) -> None:
    """Log, once per server run, the manifest's dists/ files as fetched by `branch` too:
    a freeze of the branch then has what authenticates its filled pool files."""
    pinned, fetch_log = request.app[PINNED], request.app[FETCH_LOG]
    if not pinned.fill.first_fill(branch, manifest_id, upstream):
        return
    for path, sha256, size in await pinned.authenticating_entries(manifest_id, upstream):
        row = fetch_log.begin(request.remote, branch, upstream, path, "GET")
        row.status, row.sha256, row.size, row.source, row.complete = (
            200,
            sha256,
            size,
            "filled",
            True,
        )
        fetch_log.finish(row)
