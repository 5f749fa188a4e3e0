"""Sending a blob from the store: one way for live hits, pinned and manifest files."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..archive import classify_path, content_type_for
from ..recording import FetchRecord

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
SOURCE_HEADER = "X-Debcache"


class BlobResponse(web.FileResponse):
    """A FileResponse that may be sent inside the handler (so it can be logged as complete)."""

    async def prepare(self, request: web.BaseRequest):  # type: ignore[override]
        if self.prepared:
            return None
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
    request: web.Request, blob: Path, headers: dict[str, str], record: FetchRecord
) -> web.StreamResponse:
    """Send a blob with HEAD, Range, If-Range and If-Modified-Since; log it as complete."""
    response = BlobResponse(blob, headers=headers)
    try:
        await response.prepare(_without_entity_tag_if_range(request))
        await response.write_eof()
    except ConnectionError:
        return response  # the client hung up; logged as incomplete
    record.status, record.complete = response.status, True
    return response


def _without_entity_tag_if_range(request: web.Request) -> web.Request:
    # aiohttp honours Range even when an If-Range entity tag does not match. A full
    # 200 is always a correct answer to a Range request, so drop such ranges.
    if_range = request.headers.get("If-Range", "")
    if "Range" in request.headers and if_range.lstrip().startswith(('"', "W/")):
        headers = request.headers.copy()
        del headers["Range"]
        del headers["If-Range"]
        return request.clone(headers=headers)
    return request
