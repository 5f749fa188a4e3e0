"""A loopback HTTP server that plays the upstream Debian mirror, and misbehaves on purpose.

``FakeMirror(root)`` serves the files under ``root`` on ``127.0.0.1:<free port>``
from its own thread and event loop, so tests (and the debcache server under
test) never share a loop with it. Every request is recorded; faults are set
per decoded path::

    with FakeMirror(archive.root) as mirror:
        deb = "/debian/" + archive.pool_path("hello")
        mirror.set_fault(deb, Fault.truncate(100, times=1))   # first GET breaks
        ...
        assert mirror.count(deb) == 2

Requests in absolute-URI form (``GET http://mirror.example.org/debian/...``,
as sent to a proxy) are served by their path too, so a FakeMirror can also
stand in for a proxy.

Normal serving is deliberately plain: GET/HEAD by decoded path,
``Last-Modified`` from the file's mtime, ``If-Modified-Since`` answered with
304 (``FakeMirror(root, validators=False)``: neither, as the real mirrors in
PROTOCOL-NOTES §8, so every revalidation gets the whole file back), always
``application/octet-stream`` and never a ``Content-Encoding``
(unlike ``web.FileResponse``, which would hand out ``Packages.gz`` for
``Packages``). ``Range`` is ignored: debcache never sends it upstream.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aiohttp import web
from multidict import CIMultiDict
from processes import wait_until

_FAULT_KINDS = (
    "status", "truncate", "corrupt", "hang", "slow", "redirect", "chunked", "endless",
)  # fmt: skip


@dataclass(frozen=True)
class Fault:
    """How to misbehave for one path; build with the class methods. times=None is permanent."""

    kind: str
    code: int = 0
    length: int = 0
    seconds: float = 0.0
    chunk_size: int = 16384
    delay: float = 0.0
    location: str = ""
    times: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be None (permanent) or at least 1")

    @classmethod
    def status(cls, code: int, *, times: int | None = None) -> Fault:
        """Answer with this HTTP status and a short text body."""
        return cls("status", code=code, times=times)

    @classmethod
    def truncate(cls, after_bytes: int, *, times: int | None = None) -> Fault:
        """Promise the full Content-Length, send after_bytes of the body, then close."""
        return cls("truncate", length=after_bytes, times=times)

    @classmethod
    def corrupt(cls, *, times: int | None = None) -> Fault:
        """Send a body of the right length with some bytes flipped."""
        return cls("corrupt", times=times)

    @classmethod
    def hang(cls, seconds: float, *, times: int | None = None) -> Fault:
        """Send nothing for seconds (or until stop()), then close the connection."""
        return cls("hang", seconds=seconds, times=times)

    @classmethod
    def slow(cls, chunk: int = 16384, delay: float = 0.05, *, times: int | None = None) -> Fault:
        """Send the correct body in chunks with a delay before each, so clients overlap."""
        return cls("slow", chunk_size=chunk, delay=delay, times=times)

    @classmethod
    def redirect(cls, location: str, *, times: int | None = None) -> Fault:
        """Answer 302 with this Location (a path or a URL)."""
        return cls("redirect", location=location, times=times)

    @classmethod
    def endless(cls, claimed_length: int = 0, *, times: int | None = None) -> Fault:
        """Send zero bytes forever, until the client goes: chunked; or, with a (lying)
        Content-Length of claimed_length if it is not 0, until that many bytes went.
        `streams_running` counts them."""
        return cls("endless", length=claimed_length, times=times)

    @classmethod
    def chunked(cls, *, times: int | None = None) -> Fault:
        """Send the correct body with Transfer-Encoding: chunked and no Content-Length."""
        return cls("chunked", times=times)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the mirror received it; time is time.monotonic() on arrival."""

    method: str
    # Raw, as sent: "/debian/pool/main/t/tool%2b%2b/..." (the absolute URI
    # "http://mirror.example.org/debian/..." when the client used us as a proxy).
    path: str
    decoded_path: str
    headers: CIMultiDict[str]
    time: float


class FakeMirror:
    """Serves a directory on 127.0.0.1:<free port> from its own thread and aiohttp event loop."""

    def __init__(self, root: Path, *, validators: bool = True) -> None:
        self.root = Path(root).absolute()
        self.validators = validators
        self.port = 0
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self._faults: dict[str, tuple[Fault, int | None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.streams_running = 0  # endless bodies still being sent

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeMirror:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeMirror already started")
        # Binding here, before the thread starts, means the port is known and
        # reserved without a race against other tests picking free ports.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"FakeMirror:{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("FakeMirror did not start within 30 s")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("FakeMirror failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving: wake hanging and slow handlers, close connections, join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("FakeMirror thread did not stop within 30 s")
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeMirror:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        runner: web.AppRunner | None = None
        try:
            self._stopping = asyncio.Event()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # Handlers wake on _stopping, so a short grace period is plenty.
            runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock, backlog=128).start())
        except BaseException as error:
            self._startup_error = error
            sock.close()
            if runner is not None:
                loop.run_until_complete(runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._stopping.set()
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    # -- recording and faults ---------------------------------------------

    def count(self, path: str, method: str | None = None) -> int:
        """Number of requests whose decoded path equals path (and method, if given)."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.decoded_path == path and (method is None or r.method == method)
            )

    def wait_for_requests(self, path: str, count: int = 1, timeout: float = 10.0) -> None:
        """Block until path has been requested count times; TimeoutError after timeout."""

        def seen() -> str:
            with self._lock:
                return (
                    f"{path} requested {count} times; saw {[r.decoded_path for r in self.requests]}"
                )

        wait_until(lambda: self.count(path) >= count, seen, timeout)

    def reset(self) -> None:
        """Forget recorded requests and all faults."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()

    def set_fault(self, path: str, fault: Fault) -> None:
        """Misbehave for requests to this decoded path (a HEAD uses up a one-shot fault too)."""
        with self._lock:
            self._faults[path] = (fault, fault.times)

    def clear_fault(self, path: str) -> None:
        """Serve path normally again."""
        with self._lock:
            self._faults.pop(path, None)

    def _record(self, request: web.Request) -> None:
        recorded = RecordedRequest(
            method=request.method,
            path=request.raw_path,
            decoded_path=request.path,
            headers=CIMultiDict(request.headers),
            time=time.monotonic(),
        )
        with self._lock:
            self.requests.append(recorded)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            entry = self._faults.get(path)
            if entry is None:
                return None
            fault, remaining = entry
            if remaining is not None:
                if remaining <= 1:
                    del self._faults[path]
                else:
                    self._faults[path] = (fault, remaining - 1)
            return fault

    # -- serving -----------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        fault = self._take_fault(request.path)
        if fault is not None and fault.kind == "status":
            return web.Response(status=fault.code, text=f"FakeMirror fault: status {fault.code}\n")
        if fault is not None and fault.kind == "redirect":
            return web.Response(
                status=302,
                headers={"Location": fault.location},
                text="FakeMirror fault: redirect\n",
            )
        if fault is not None and fault.kind == "endless":
            return await self._endless(request, fault.length)
        if fault is not None and fault.kind == "hang":
            await self._sleep(fault.seconds)
            return self._abort(request)
        if request.method not in ("GET", "HEAD"):
            return web.Response(
                status=405, text="method not allowed\n", headers={"Allow": "GET, HEAD"}
            )
        parts = request.path.split("/")
        if ".." in parts:
            return web.Response(status=403, text="'..' is not allowed\n")
        target = self.root.joinpath(*[p for p in parts if p])
        try:
            stat = target.stat()
            body = target.read_bytes() if request.method == "GET" else b""
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return web.Response(status=404, text=f"not found: {request.path}\n")
        headers = {"Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True)}
        if not self.validators:
            headers = {}
        since = _parse_http_date(request.headers.get("If-Modified-Since"))
        if self.validators and since is not None and int(stat.st_mtime) <= since:
            return web.Response(status=304, headers=headers)
        if request.method == "HEAD":
            # aiohttp sends no body for HEAD but would compute Content-Length
            # from the (empty) body, so state the real one.
            headers["Content-Length"] = str(stat.st_size)
            response = web.StreamResponse(headers=headers)
            response.content_type = "application/octet-stream"
            return response
        if fault is None:
            return web.Response(body=body, headers=headers, content_type="application/octet-stream")
        if fault.kind == "corrupt":
            flipped = bytearray(body)
            for index in range(len(flipped) // 2, len(flipped), 4096):
                flipped[index] ^= 0xFF
            return web.Response(
                body=bytes(flipped), headers=headers, content_type="application/octet-stream"
            )
        response = web.StreamResponse(headers=headers)
        response.content_type = "application/octet-stream"
        if fault.kind == "chunked":
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 4096):
                await response.write(body[start : start + 4096])
            await response.write_eof()
            return response
        response.content_length = len(body)
        await response.prepare(request)
        if fault.kind == "truncate":
            await response.write(body[: fault.length])
            return self._abort(request)
        # slow
        for start in range(0, len(body), fault.chunk_size):
            if await self._sleep(fault.delay):
                return self._abort(request)
            await response.write(body[start : start + fault.chunk_size])
        await response.write_eof()
        return response

    async def _endless(self, request: web.Request, claimed_length: int) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        if claimed_length:
            response.content_length = claimed_length
        else:
            response.enable_chunked_encoding()
        with self._lock:
            self.streams_running += 1
        try:
            await response.prepare(request)
            assert self._stopping is not None
            sent = 0
            # With a length, aiohttp drops bytes past it: the body ends there, cut short.
            while not self._stopping.is_set() and not (claimed_length and sent >= claimed_length):
                await response.write(bytes(65536))  # raises once the client has gone
                sent += 65536
        except (ConnectionError, RuntimeError):
            pass
        finally:
            with self._lock:
                self.streams_running -= 1
        return self._abort(request)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, cut short by stop(); True if stopping."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _abort(self, request: web.Request) -> web.StreamResponse:
        # close() flushes what was written, then FIN: the client sees a short
        # body (or no response at all) on a connection that just ends.
        # aiohttp's attempt to finish the returned response then hits a
        # closing transport, which it treats as a client disconnect.
        if request.transport is not None:  # None once the client has gone
            request.transport.close()
        return web.Response(status=500)


def _parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
