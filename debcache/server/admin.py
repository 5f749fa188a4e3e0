"""debcache's own pages under /_/: liveness, and the public key of re-signed branches."""

import asyncio

from aiohttp import web

from ..resign import export_public_key
from .keys import CONFIG


async def health(request: web.Request) -> web.Response:
    """Liveness: answers as soon as the server accepts requests."""
    return web.Response(text="ok\n")


async def public_key(request: web.Request) -> web.Response:
    """debcache's archive signing key: /_/key.gpg (binary) or /_/key.asc (armoured)."""
    armor = request.path.endswith(".asc")
    key = await asyncio.to_thread(export_public_key, request.app[CONFIG].data_dir, armor)
    content_type = "application/pgp-keys" if armor else "application/octet-stream"
    return web.Response(body=key, content_type=content_type)
