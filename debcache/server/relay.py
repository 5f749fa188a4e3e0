"""A worker process's way to the fetcher: every request it cannot answer from the store.

Workers answer hits (immutable files already in the store, pinned and manifest
files) themselves. Everything else (a miss, a revalidation, the status page, the
API) goes to the one fetcher process over its private Unix socket, so there is
one upstream download per file however many workers its clients reach. The body
streams through as the fetcher sends it: the fetcher holds back the last byte of
a download until it is verified, and a relay that breaks off (the fetcher died)
ends the client's connection short, never with a complete-looking response.

The fetcher trusts CLIENT_HEADER (the worker's client address) because only the
supervisor's children can reach that socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from urllib.parse import quote

import aiohttp
from aiohttp import HttpVersion10, HttpVersion11, hdrs, web
from multidict import CIMultiDict

from ..errors import FetcherUnavailable

log = logging.getLogger(__name__)
CLIENT_HEADER = "X-Debcache-Client"
CONNECT_WAIT = 15.0  # seconds a relay waits for a fetcher being (re)started
RELAY_CHUNK = 256 * 1024
# Request headers a relayed archive request keeps: its conditions, its range, its agent.
LIVE_REQUEST_HEADERS = (
    hdrs.RANGE,
    hdrs.IF_RANGE,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_NONE_MATCH,
    hdrs.USER_AGENT,
    hdrs.ACCEPT,
)
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp sets itself.
NOT_RELAYED = {
    name.lower()
    for name in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        hdrs.HOST,
        hdrs.CONTENT_LENGTH,
        hdrs.DATE,
        hdrs.SERVER,
    )
}


class RelayedResponse(web.StreamResponse):
    """The fetcher's answer, relayed: counted in the fetcher's metrics, not the worker's."""


class FetcherRelay:
    """HTTP over the fetcher's Unix socket, a new connection per request.

    No keep-alive: a pooled connection to a fetcher that a reload is retiring could
    be closed under a request, and a Unix-socket connect costs microseconds."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._sessions: dict[aiohttp.HttpVersion, aiohttp.ClientSession] = {}

    def _session(self, version: aiohttp.HttpVersion) -> aiohttp.ClientSession:
        """One session per HTTP version: aiohttp sets the version per session."""
        if version not in self._sessions:
            self._sessions[version] = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(self.socket_path, force_close=True, limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_WAIT),
                auto_decompress=False,
                skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING),
                version=version,
            )
        return self._sessions[version]

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

    async def forward_live(
        self, request: web.Request, upstream: str, path: str, recording: str | None
    ) -> web.StreamResponse:
        """An archive file, as the fetcher serves it in mirror-URL mode."""
        target = f"/{quote(upstream, safe='')}/{quote(path)}"
        if recording:
            target = f"/record/{quote(recording, safe='')}{target}"
        wanted = (name for name in LIVE_REQUEST_HEADERS if name in request.headers)
        headers = CIMultiDict((name, request.headers[name]) for name in wanted)
        return await self._relay(request, request.method, target, headers, None)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Any request, as it came (the status page, the API); origin-form even when it
        came in absolute form."""
        headers = _end_to_end(request.headers)
        body = await request.read() if request.can_read_body else None
        target = request.rel_url.raw_path_qs
        return await self._relay(request, request.method, target, headers, body)

    async def _relay(
        self,
        request: web.Request,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | None,
    ) -> web.StreamResponse:
        # Set, not added: a client's own X-Debcache-Client (any case) is replaced.
        headers[CLIENT_HEADER] = request.remote or ""
        # An HTTP/1.0 client takes no chunked body: the fetcher must know (it then sends
        # a body of unknown length whole, once verified).
        version = HttpVersion10 if request.version < HttpVersion11 else HttpVersion11
        answer = await self._send(method, target, headers, body, version)
        try:
            return await self._stream_back(request, answer)
        finally:
            answer.release()

    async def _send(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        version: aiohttp.HttpVersion,
    ) -> aiohttp.ClientResponse:
        """Send to the fetcher, waiting up to CONNECT_WAIT for one that is restarting."""
        url = f"http://fetcher{target}"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + CONNECT_WAIT
        delay = 0.05
        while True:
            try:
                return await self._session(version).request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
            except (aiohttp.ClientConnectorError, FileNotFoundError) as exc:
                # Not connected: nothing was sent, so trying again is safe for any method.
                if loop.time() + delay > give_up:
                    raise FetcherUnavailable(
                        f"debcache's fetcher process does not answer ({exc.strerror or exc})",
                        "retry in a few seconds; if it goes on, see debcache's log "
                        "(journalctl -u debcache)",
                    ) from None
                await asyncio.sleep(delay)  # a supervisor restarts it within seconds
                delay = min(delay * 2, 1.0)

    async def _stream_back(
        self, request: web.Request, answer: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = _end_to_end(answer.headers)
        response = RelayedResponse(status=answer.status, reason=answer.reason, headers=headers)
        length = answer.content_length
        if length is not None:
            response.content_length = length
        elif request.method != "HEAD" and answer.status not in (204, 304):
            response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            if request.method != "HEAD":
                # A body that ends short of its Content-Length (the fetcher failed) raises
                # aiohttp's ClientPayloadError here.
                async for chunk in answer.content.iter_chunked(RELAY_CHUNK):
                    await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            return response  # the client hung up
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are out: end the connection short so the client sees a failed
            # transfer, never a complete-looking one.
            log.warning("relaying %s from the fetcher broke off: %s", request.raw_path, exc)
            if request.transport is not None:
                request.transport.close()
        return response


def _end_to_end(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The headers a relay passes on: all but the hop-by-hop ones and aiohttp's own."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in NOT_RELAYED)
