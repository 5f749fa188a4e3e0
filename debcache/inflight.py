"""One upstream download per file, however many clients ask; each streams while it runs.

A `Download` writes the body to a temp file, hashing as it goes, and readers
follow the growing file. It belongs to `Downloads` (the app), not to the
request that started it, so it runs to the end when every client has hung up.

Readers never see a body that looks complete before it has been checked: with a
known length they hold back the last byte until the download is verified, and
without one the response only ends (the last chunk) after verification. A body
found wrong ends the client's connection short instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import aiofiles
import aiohttp

from .errors import (
    CorruptDownload,
    DebcacheError,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .store import FileStore

log = logging.getLogger(__name__)
CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True)
class ExpectedContent:
    """What an index (Packages, or the by-hash name) says the body must be."""

    sha256: str
    size: int | None
    source: str  # e.g. "Packages of upstream debian", for the error message


@dataclass(frozen=True)
class CompletedBody:
    """A verified body, now a blob in the store."""

    sha256: str
    size: int
    last_modified: str | None
    etag: str | None
    blob: Path | None = None  # set once committed to the store


class Download:
    """One upstream body on its way into the store, readable while it arrives."""

    def __init__(
        self,
        key: tuple[str, str],
        response: aiohttp.ClientResponse,
        temp: Path,
        max_size: int,
        deadline: float,
    ) -> None:
        self.key = key
        self.response = response
        self.temp = temp
        self.max_size = max_size  # for a body no index gives the size of
        self.deadline = deadline
        self.content_length = response.content_length
        self.last_modified = response.headers.get("Last-Modified")
        self.etag = response.headers.get("ETag")
        self.written = 0
        self.result: CompletedBody | None = None
        self.error: DebcacheError | None = None
        self._progress = asyncio.Event()
        self.finished = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    async def receive(
        self,
        expected: Awaitable[ExpectedContent | None],
        commit: Callable[[CompletedBody], Path],
    ) -> None:
        """Stream the response into the temp file, verify it, hand it to `commit`.

        The body stops at the size the index gives (else `max_size`) plus one byte and
        after `deadline` seconds: an endless or dripping body costs bounded disk and time.
        """
        hasher = hashlib.sha256()
        deadline = asyncio.timeout(self.deadline)
        try:
            # Unbuffered: readers pread the file, so every chunk must reach the kernel.
            async with (
                deadline,
                aiofiles.open(self.temp, "wb", buffering=0) as out,
            ):
                async for chunk in self.response.content.iter_chunked(CHUNK_SIZE):
                    limit = self._size_limit(expected)
                    if self.written + len(chunk) > limit:
                        await out.write(chunk[: limit + 1 - self.written])
                        raise self._too_large(limit)
                    hasher.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[await out.write(view) :]
                    self.written += len(chunk)
                    self._wake_readers()
                await asyncio.to_thread(os.fsync, out.fileno())
            # Looked up while the body streamed: a pool file's index may still be read.
            body = self._verified(hasher.hexdigest(), await expected)
            # commit() renames the temp file into the store. It and the assignment run
            # without an await between them, so a reader finds either the temp or the blob.
            blob = commit(body)
            self.result = CompletedBody(**{**body.__dict__, "blob": blob})
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error = self._broken(exc, deadline.expired())
        except DebcacheError as exc:
            self.error = exc
        except OSError as exc:
            # After the two above: aiohttp's connection errors and TimeoutError are OSErrors too.
            self.error = StoreUnavailable(
                f"writing {self.key[1]} into the cache failed after {self.written} bytes: {exc}",
                "free space in the data directory (or fix its file system); then retry",
            )
        finally:
            self.response.release()
            if isinstance(expected, asyncio.Future) and not expected.done():
                expected.cancel()
            if self.result is None:
                self._discard_temp()
                if self.error is None:
                    self.error = UpstreamUnavailable(f"the download of {self.key[1]} stopped")
                log.warning("download of %s/%s failed: %s", *self.key, self.error)
            self.finished.set()
            self._wake_readers()

    def _broken(self, exc: BaseException, past_deadline: bool) -> UpstreamUnavailable:
        upstream, path = self.key
        if past_deadline:
            return UpstreamTimeout(
                f"the download of {path} took longer than its deadline of "
                f"{self.deadline:g} s ({self.written} bytes)",
                f"retry; for a slow mirror raise [upstreams.{upstream}] deadline",
            )
        return UpstreamUnavailable(
            f"the upstream connection broke after {self.written} bytes of {path}: "
            f"{exc or type(exc).__name__}",
            "retry; the next request downloads the file again",
        )

    def _size_limit(self, expected: Awaitable[ExpectedContent | None]) -> int:
        """The most bytes this body may have: what the index says once it is looked up,
        else the Content-Length, else `max_size`."""
        if isinstance(expected, asyncio.Future) and expected.done() and not expected.cancelled():
            listed = expected.result() if expected.exception() is None else None
            if listed is not None and listed.size is not None:
                return listed.size
        if self.content_length is not None:
            return min(self.content_length, self.max_size)
        return self.max_size

    def _too_large(self, limit: int) -> CorruptDownload:
        upstream, path = self.key
        remedy = "the mirror is broken or hostile; nothing was cached"
        if limit == self.max_size:  # no index gave the size: the cap did
            remedy += f" (for a larger file raise [upstreams.{upstream}] max_file_size)"
        return CorruptDownload(
            f"{upstream}/{path}: the upstream sent more than the {limit} bytes expected", remedy
        )

    def _discard_temp(self) -> None:
        # Must not raise: readers wait for `finished`, which is set after this.
        try:
            self.temp.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove the partial file %s: %s", self.temp, exc)

    def _verified(self, sha256: str, expected: ExpectedContent | None) -> CompletedBody:
        upstream, path = self.key
        if self.content_length is not None and self.written != self.content_length:
            raise CorruptDownload(
                f"{upstream}/{path}: got {self.written} of {self.content_length} bytes",
                "retry; nothing was cached",
            )
        if expected and (sha256 != expected.sha256 or expected.size not in (None, self.written)):
            raise CorruptDownload(
                f"{upstream}/{path}: sha256 {sha256} ({self.written} bytes) does not match "
                f"{expected.sha256} ({expected.size} bytes) listed in {expected.source}",
                "the mirror is corrupt or mid-sync; retry later or fix the mirror",
            )
        return CompletedBody(sha256, self.written, self.last_modified, self.etag)

    def _wake_readers(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises the download's error instead of the final byte(s)."""
        fd = self._open_body()
        offset = 0
        try:
            while True:
                progress = self._progress
                safe = self._safe_to_send()
                if offset < safe:
                    data = os.pread(fd, min(CHUNK_SIZE, safe - offset), offset)
                    if not data:  # the file is shorter than what was written: never spin
                        raise CorruptDownload(f"{self.key[1]}: the downloaded file shrank")
                    offset += len(data)
                    yield data
                elif self.done:
                    if self.error is not None:
                        raise self.error
                    return
                else:
                    await progress.wait()
        finally:
            os.close(fd)

    def _open_body(self) -> int:
        try:
            return os.open(self.temp, os.O_RDONLY)
        except FileNotFoundError:
            # Finished meanwhile: renamed into the store, or unlinked after a failure.
            if self.result is not None and self.result.blob is not None:
                return os.open(self.result.blob, os.O_RDONLY)
            error = self.error or UpstreamUnavailable(f"the download of {self.key[1]} failed")
            raise error from None

    def _safe_to_send(self) -> int:
        if self.done:
            return self.written if self.error is None else min(self.written, self._held_back())
        return self._held_back()

    def _held_back(self) -> int:
        # Until verified, the last byte of a known length stays here: the client can't
        # take a truncated or wrong body for a complete one.
        if self.content_length is None:
            return self.written
        return min(self.written, self.content_length - 1)


class Downloads:
    """The downloads under way, by (upstream, path); owns their tasks."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self._starting: dict[tuple[str, str], asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()

    def count(self) -> int:
        return len(self._starting)

    def under_way(self, key: tuple[str, str]) -> asyncio.Future | None:
        return self._starting.get(key)

    def start(
        self, key: tuple[str, str], request: Callable[[], Awaitable[object]]
    ) -> asyncio.Future:
        """Run `request()` once for `key`: joiners await the same future.

        `request` returns either a finished outcome or a `Download` (after which
        the body streams in a task owned here). The future resolves as soon as
        the outcome or the download's headers are known.
        """
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        self.spawn(self._run(key, request, future))
        return future

    def spawn(self, coroutine: Awaitable[None]) -> asyncio.Task:
        """A background task owned by the app: kept referenced, cancelled on close."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        # The owner retrieves every outcome: a failure is logged now, with its traceback,
        # not as "Task exception was never retrieved" whenever the task is collected.
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def _run(
        self, key: tuple[str, str], request: Callable[[], Awaitable[object]], future: asyncio.Future
    ) -> None:
        try:
            outcome = await request()
        except BaseException as exc:
            self.forget(key, future)
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not isinstance(outcome, DownloadPlan):
            self.forget(key, future)
            future.set_result(outcome)
            return
        future.set_result(outcome.download)

        def commit_and_forget(body: CompletedBody) -> Path:
            blob = outcome.commit(body)
            self.forget(key, future)  # from now on requests find the blob, not this download
            return blob

        try:
            await outcome.download.receive(outcome.expected, commit_and_forget)
        finally:
            self.forget(key, future)

    def forget(self, key: tuple[str, str], future: asyncio.Future) -> None:
        if self._starting.get(key) is future:
            del self._starting[key]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class DownloadPlan:
    """A 200 from the upstream: stream it into the store, checked against `expected`."""

    download: Download
    expected: Awaitable[ExpectedContent | None]
    commit: Callable[[CompletedBody], Path]


K = TypeVar("K")
T = TypeVar("T")


class SharedTasks(Generic[K, T]):
    """One task per key, however many ask meanwhile; cancelled and awaited by `close()`.

    Awaiters are shielded: a client hanging up does not cancel what others wait for.
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}

    async def run(self, key: K, make: Callable[[], Awaitable[T]]) -> T:
        if key not in self._tasks:
            task = asyncio.ensure_future(make())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(self._tasks[key])

    def _forget(self, key: K, done: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is done:
            del self._tasks[key]
        if not done.cancelled():
            done.exception()  # its awaiters got it; with none left, nobody needs it

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
