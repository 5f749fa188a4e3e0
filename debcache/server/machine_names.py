"""This machine's own names, for loopback trust: looked up once, never on the event loop.

`socket.getfqdn()` is a DNS lookup, which can take as long as the resolver's
timeout; on the loop it would hold up every request meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading

log = logging.getLogger(__name__)


class MachineNames:
    """localhost, the host name and the fully qualified one, lower-cased."""

    def __init__(self) -> None:
        self._names: asyncio.Future[frozenset[str]] | None = None

    def look_up(self) -> None:
        """Start the lookup (at server start, so that API changes rarely wait for it).

        A daemon thread, not the loop's executor: a lookup that never returns must
        not hold up the server's shutdown.
        """
        if self._names is not None:
            return
        loop = asyncio.get_running_loop()
        self._names = names = loop.create_future()
        threading.Thread(
            target=_resolve, args=(loop, names), name="machine names", daemon=True
        ).start()

    async def include(self, name: str) -> bool:
        """Whether `name` (lower case) is one of them; waits for the lookup if need be."""
        if name in ("localhost", socket.gethostname().lower()):  # no DNS for these
            return True
        self.look_up()
        assert self._names is not None
        return name in await asyncio.shield(self._names)


def _resolve(loop: asyncio.AbstractEventLoop, names: asyncio.Future[frozenset[str]]) -> None:
    own = {"localhost", socket.gethostname().lower()}
    try:
        own.add(socket.getfqdn().lower())
    except Exception as exc:  # (getfqdn returns the host name on DNS errors) never leave
        # the API waiting for an answer that will not come
        log.warning("could not look up this machine's full name (%s); trusting %s", exc, own)
    with contextlib.suppress(RuntimeError):  # the server stopped before the answer came
        loop.call_soon_threadsafe(_deliver, names, frozenset(own))


def _deliver(names: asyncio.Future[frozenset[str]], own: frozenset[str]) -> None:
    if not names.done():
        names.set_result(own)
