"""A plain HTTP/1.1 client for tests: raw request targets, absolute URIs, short bodies seen as such.

urllib would normalise paths (so no traversal could be sent) and hides
truncated bodies; http.client sends the target as given and raises
IncompleteRead when a body ends before its Content-Length.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    broken: str | None = None  # why the body did not arrive whole (None: it did)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def request(
    base_url: str,
    target: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    body: bytes | None = None,
) -> Reply:
    """Send `method target` to the server at base_url; `target` may be an absolute URI."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        all_headers = {"Host": parts.netloc, **(headers or {})}
        if body is not None:
            all_headers["Content-Length"] = str(len(body))
        for name, value in all_headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        reply = Reply(response.status, dict(response.getheaders()))
        try:
            reply.body = response.read()
        except (http.client.IncompleteRead, ConnectionError) as exc:
            reply.broken = f"{type(exc).__name__}: {exc}"
            reply.body = getattr(exc, "partial", b"")
        return reply
    finally:
        connection.close()


def get(base_url: str, target: str, **kwargs) -> Reply:
    return request(base_url, target, **kwargs)
