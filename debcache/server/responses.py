"""Sending a blob from the store: one way for live hits, pinned and manifest files.

A blob is shared by every path with the same content, so its file date says
nothing about a given path. Conditional requests are therefore answered here
from the path's own validators (the upstream's Last-Modified, or when a branch
last changed, and the sha256 as a strong ETag).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import BinaryIO

from aiohttp import web

from ..archive import classify_path, content_type_for
from ..http_dates import http_seconds
from ..integrity import CheckedBlobs
from ..recording import FetchRecord

log = logging.getLogger(__name__)
INLINE_LIMIT = 256 * 1024  # smaller blobs are read and written with their headers
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
SOURCE_HEADER = "X-Debcache"


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
    blobs: CheckedBlobs,
    sha256: str,
    size: int | None,
    headers: dict[str, str],
    record: FetchRecord,
    last_modified: float,
) -> web.StreamResponse:
    """Send a blob with HEAD, Range, If-Range, If-Modified-Since and If-None-Match.

    Not aiohttp's FileResponse: that opens and stats every file through the thread
    pool and sendfiles even a few kilobytes, which cost hits most of their CPU.
    Opening a blob is a page-cache lookup; small ones go out in one write with
    their headers, large ones with sendfile. `blobs` checks the size (`size`, if
    known) and, once per start, the hash before a byte goes out (CorruptBlob).
    """
    if _not_modified(request, last_modified, sha256):
        response = web.StreamResponse(status=304, headers=headers)
        response.last_modified, response.etag = last_modified, sha256
        await response.prepare(request)
        await response.write_eof()
        record.status, record.complete = 304, True
        return response
    blob_file = await blobs.open(sha256, size)  # closed below, after sendfile
    with blob_file:
        size = os.fstat(blob_file.fileno()).st_size
        span = _byte_range(request, size, last_modified, sha256)
        if span is None:
            record.status, record.complete = 416, True
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        status, start, count = span
        response = _blob_response(request, blob_file, headers, span, size)
        response.last_modified, response.etag = last_modified, sha256
        try:
            await response.prepare(request)
            if request.method != "HEAD" and count > INLINE_LIMIT:
                await _sendfile(request, blob_file, start, count)
            await response.write_eof()
        except ConnectionError:
            return response  # the client hung up; logged as incomplete
        except Exception:
            # Headers may be out already: never let a second response follow them.
            log.exception("sending blob %s failed", sha256)
            if request.transport is not None:
                request.transport.close()
            return response
    record.status, record.complete = status, True
    return response


async def _sendfile(request: web.Request, blob_file: BinaryIO, start: int, count: int) -> None:
    """sendfile `count` bytes from `start`, counted as output like the writer's own writes.

    aiohttp's writer never sees them, so without this the access log would show the
    headers' bytes only; asyncio leaves the file position after the last byte sent,
    even when the client hangs up halfway.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away")
    try:
        await asyncio.get_running_loop().sendfile(transport, blob_file, start, count)
    finally:
        request.writer.output_size += max(0, blob_file.tell() - start)


def _blob_response(
    request: web.Request,
    blob_file: BinaryIO,
    headers: dict[str, str],
    span: tuple[int, int, int],
    size: int,
) -> web.StreamResponse:
    status, start, count = span
    headers = {**headers, "Accept-Ranges": "bytes"}
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
    if request.method != "HEAD" and count <= INLINE_LIMIT:
        return web.Response(
            status=status, headers=headers, body=os.pread(blob_file.fileno(), count, start)
        )
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = count
    return response


def _byte_range(
    request: web.Request, size: int, last_modified: float, sha256: str
) -> tuple[int, int, int] | None:
    """(status, first byte, byte count) to send; None when the range can't be satisfied.

    RFC 9110 14.2: a Range header that is not a valid bytes range set (bad syntax,
    another unit) is ignored, and so are several ranges (no multipart/byteranges
    here): the whole file is a correct answer to both. Only a valid set of which
    no range overlaps the file gets 416. Range applies to GET only.
    """
    header = request.headers.get("Range")
    if header is None or request.method != "GET":
        return 200, 0, size
    ranges = parse_byte_ranges(header)
    if ranges is None or not _range_applies(request, last_modified, sha256):
        return 200, 0, size
    spans = [span for span in (_span(wanted, size) for wanted in ranges) if span is not None]
    if not spans:
        return None
    start, count = spans[0]
    if len(ranges) > 1 or count == 0:  # several ranges, or a suffix of an empty file
        return 200, 0, size
    return 206, start, count


ByteRange = tuple[int | None, int | None]  # (first, last) inclusive; (None, n): the last n
_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")
_LIST_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")
_PAST_ANY_FILE = 2**63  # any position of 19 digits or more: past the end of every file


def parse_byte_ranges(header: str) -> list[ByteRange] | None:
    """The ranges of a `Range: bytes=...` header; None unless it is a valid range set.

    RFC 9110 14.1: ranges-specifier = range-unit "=" range-set, with no whitespace
    around "=" and optional whitespace around the commas; empty list elements are
    skipped (5.6.1); a range whose last byte comes before its first is invalid.
    """
    unit, equals, range_set = header.partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    ranges: list[ByteRange] = []
    for element in _LIST_SEPARATOR.split(range_set):
        if not element:
            continue
        match = _RANGE_SPEC.fullmatch(element)
        if match is None:
            return None
        first, last, suffix = match.groups()
        if suffix is not None:
            ranges.append((None, _position(suffix)))
        elif last and _digits_value_key(last) < _digits_value_key(first):
            return None
        else:
            ranges.append((_position(first), _position(last) if last else None))
    return ranges or None


def _span(wanted: ByteRange, size: int) -> tuple[int, int] | None:
    """(first byte, byte count) of a range within `size` bytes; None if it misses them all."""
    first, last = wanted
    if first is None:  # a suffix: the last `last` bytes, all of a shorter file
        assert last is not None
        if last == 0:
            return None
        start = max(0, size - last)
        return start, size - start
    if first >= size:
        return None
    end = size if last is None else min(last + 1, size)
    return first, end - first


def _position(digits: str) -> int:
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) < 19 else _PAST_ANY_FILE


def _digits_value_key(digits: str) -> tuple[int, str]:
    """Orders decimal strings by value without converting them (they may be thousands long)."""
    significant = digits.lstrip("0")
    return len(significant), significant


def _not_modified(request: web.Request, last_modified: float, sha256: str) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    if_none_match = request.if_none_match
    if if_none_match is not None:
        return any(tag.value in (sha256, "*") for tag in if_none_match)
    since = request.if_modified_since
    return since is not None and http_seconds(last_modified) <= since.timestamp()


def _range_applies(request: web.Request, last_modified: float, sha256: str) -> bool:
    if_range = request.headers.get("If-Range", "").strip()
    if not if_range:
        return True
    if if_range.startswith(('"', "W/")):
        return if_range == f'"{sha256}"'  # a weak tag never matches (RFC 9110 13.1.5)
    date = request.if_range
    # apt sends the mtime of its partial file, which it set from our Last-Modified.
    return date is not None and http_seconds(last_modified) <= date.timestamp()
