"""debcache's own pages under /_/: liveness now; status and the JSON API later."""

from aiohttp import web


async def health(request: web.Request) -> web.Response:
    """Liveness: answers as soon as the server accepts requests."""
    return web.Response(text="ok\n")
