"""The log of aiohttp's own request handling: one line per malformed request, rate-limited.

aiohttp logs a request it cannot parse (BadHttpMessage, a HttpProcessingError) with
its full traceback, about a dozen lines for what is a client's mistake; a scanner or a
confused client could fill the log with them. Its RequestHandler takes the logger to
use (`AppRunner(logger=...)`), so debcache hands it one with this filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

LOGGER_NAME = "debcache.http"
BAD_REQUESTS_PER_MINUTE = 10
MAX_REASON_LENGTH = 200


class BadRequestLines(logging.Filter):
    """Turns each malformed-request record into one line, at most `per_minute` a minute.

    The first line after a quiet spell counts the ones left out before it. Other
    records (a real failure inside aiohttp) pass unchanged, traceback and all.
    """

    def __init__(
        self, per_minute: int = BAD_REQUESTS_PER_MINUTE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.clock = clock
        self.window_start = -math.inf
        self.logged = 0
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        bad_request = record.exc_info[1] if record.exc_info else None
        if not isinstance(bad_request, HttpProcessingError):
            return True
        now = self.clock()
        if now - self.window_start >= 60:
            self.window_start, self.logged = now, 0
        if self.logged >= self.per_minute:
            self.left_out += 1
            return False
        self.logged += 1
        client = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
        reason = str(bad_request.message).strip().splitlines() or [type(bad_request).__name__]
        record.msg = "bad request from %s: %s %s"
        record.args = (client, bad_request.code, reason[0][:MAX_REASON_LENGTH].rstrip(":"))
        if self.left_out:
            record.msg += " (%d more bad requests not logged before this one)"
            record.args += (self.left_out,)
            self.left_out = 0
        record.exc_info, record.exc_text = None, None
        # Info, or debug where aiohttp chose it (a first request that is not HTTP at all,
        # such as a TLS handshake: noise on any port open to a network).
        record.levelno = min(record.levelno, logging.INFO)
        record.levelname = logging.getLevelName(record.levelno)
        return True


def http_logger() -> logging.Logger:
    """The logger for aiohttp's RequestHandler, with the filter installed once."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, BadRequestLines) for f in logger.filters):
        logger.addFilter(BadRequestLines())
    return logger


ACCESS_LOGGER = "debcache.access"
ACCESS_FLUSH_SECONDS = 0.25


class BatchedAccessLog(logging.StreamHandler):
    """The access log of a server process, written in batches.

    One line per request written and flushed on its own cost a write(2) per hit,
    a tenth of a worker's time on small files. Lines go to a buffered copy of
    stderr instead, flushed by `run` every ACCESS_FLUSH_SECONDS and when the buffer
    fills; never later than that after the request.
    """

    def __init__(self, formatter: logging.Formatter | None) -> None:
        stream = open(os.dup(2), "w", buffering=1 << 16, encoding="utf-8", errors="replace")  # noqa: SIM115
        super().__init__(stream)
        if formatter is not None:
            self.setFormatter(formatter)

    def flush(self) -> None:
        """Per record: nothing (the batch is flushed by `run`)."""

    def flush_batch(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    async def run(self) -> None:
        """Flush every ACCESS_FLUSH_SECONDS until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(ACCESS_FLUSH_SECONDS)
                self.flush_batch()
        finally:
            self.flush_batch()

    @classmethod
    def install(cls) -> BatchedAccessLog:
        """Route the access log through a batched handler with the root handler's format."""
        root_handlers = logging.getLogger().handlers
        handler = cls(root_handlers[0].formatter if root_handlers else None)
        access = logging.getLogger(ACCESS_LOGGER)
        access.addHandler(handler)
        access.propagate = False
        return handler
