"""Sending a blob from the store: one way for live hits, pinned and manifest files.

A blob is shared by every path with the same content, so its file date says
nothing about a given path. Conditional requests are therefore answered here
from the path's own validators (the upstream's Last-Modified, or when a branch
last changed, and the sha256 as a strong ETag); `FileResponse` only sends bytes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from aiohttp import web

from ..archive import classify_path, content_type_for
from ..recording import FetchRecord

log = logging.getLogger(__name__)
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
SOURCE_HEADER = "X-Debcache"
CONDITIONAL_HEADERS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since")


class BlobResponse(web.FileResponse):
    """A FileResponse with the path's own Last-Modified and ETag, sendable inside the handler."""

    def __init__(self, blob: Path, last_modified: float, sha256: str, headers: dict) -> None:
        super().__init__(blob, headers=headers)
        self._path_last_modified, self._path_etag = last_modified, sha256

    # FileResponse sets both from the file's stat() while preparing; keep the path's.
    def _keep_last_modified(self, _value: object) -> None:
        web.StreamResponse.last_modified.fset(self, self._path_last_modified)

    def _keep_etag(self, _value: object) -> None:
        web.StreamResponse.etag.fset(self, self._path_etag)

    last_modified = property(web.StreamResponse.last_modified.fget, _keep_last_modified)
    etag = property(web.StreamResponse.etag.fget, _keep_etag)

    async def prepare(self, request: web.BaseRequest):  # type: ignore[override]
        if self.prepared:
            return None  # sent inside the handler already; aiohttp calls this again
        return await super().prepare(request)


def archive_headers(path: str, source: str, cache_control: str | None = None) -> dict[str, str]:
    """Content-Type by file name (never a Content-Encoding), caching advice, our source."""
    if cache_control is None:
        cache_control = IMMUTABLE if classify_path(path).immutable else REVALIDATE
    return {
        "Content-Type": content_type_for(path),
        "Cache-Control": cache_control,
        SOURCE_HEADER: source,
    }


async def send_blob(
    request: web.Request,
    blob: Path,
    headers: dict[str, str],
    record: FetchRecord,
    last_modified: float,
) -> web.StreamResponse:
    """Send a blob with HEAD, Range, If-Range, If-Modified-Since and If-None-Match."""
    sha256 = blob.name
    if _not_modified(request, last_modified, sha256):
        response = web.StreamResponse(status=304, headers=headers)
        response.last_modified, response.etag = last_modified, sha256
        await response.prepare(request)
        await response.write_eof()
    else:
        response = BlobResponse(blob, last_modified, sha256, headers)
        try:
            await response.prepare(_unconditional(request, last_modified, sha256))
            await response.write_eof()
        except ConnectionError:
            return response  # the client hung up; logged as incomplete
        except Exception:
            # Headers may be out already: never let a second response follow them.
            log.exception("sending %s failed", blob)
            if request.transport is not None:
                request.transport.close()
            return response
    record.status, record.complete = response.status, True
    return response


def _not_modified(request: web.Request, last_modified: float, sha256: str) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    if_none_match = request.if_none_match
    if if_none_match is not None:
        return any(tag.value in (sha256, "*") for tag in if_none_match)
    since = request.if_modified_since
    return since is not None and http_seconds(last_modified) <= since.timestamp()


def _unconditional(request: web.Request, last_modified: float, sha256: str) -> web.Request:
    """The request as FileResponse may see it: conditions settled, Range kept if it applies."""
    present = [h for h in (*CONDITIONAL_HEADERS, "If-Range") if h in request.headers]
    keep_range = "Range" in request.headers and _range_applies(request, last_modified, sha256)
    if not present and (keep_range or "Range" not in request.headers):
        return request
    headers = request.headers.copy()
    for name in present:
        del headers[name]
    if not keep_range:
        headers.pop("Range", None)
    return request.clone(headers=headers)


def _range_applies(request: web.Request, last_modified: float, sha256: str) -> bool:
    if_range = request.headers.get("If-Range", "").strip()
    if not if_range:
        return True
    if if_range.startswith(('"', "W/")):
        return if_range == f'"{sha256}"'  # a weak tag never matches (RFC 9110 13.1.5)
    date = request.if_range
    # apt sends the mtime of its partial file, which it set from our Last-Modified.
    return date is not None and http_seconds(last_modified) <= date.timestamp()


def http_seconds(timestamp: float) -> int:
    """The whole second a Last-Modified header shows (aiohttp rounds up)."""
    return math.ceil(timestamp)
