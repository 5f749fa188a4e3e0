"""debcache's own pages under /_/: status (HTML and JSON), metrics, liveness, the public key."""

from __future__ import annotations

import asyncio
import html
from datetime import UTC, datetime
from importlib import resources
from string import Template

from aiohttp import web

from ..metrics import CONTENT_TYPE
from ..resign import export_public_key
from ..status import collect_status, status_json
from .keys import CONFIG, DATABASE, METRICS

STATUS_PAGE = Template(
    resources.files("debcache.server").joinpath("templates/status.html").read_text()
)


async def health(request: web.Request) -> web.Response:
    """Liveness: answers as soon as the server accepts requests."""
    return web.Response(text="ok\n")


async def public_key(request: web.Request) -> web.Response:
    """debcache's archive signing key: /_/key.gpg (binary) or /_/key.asc (armoured)."""
    armor = request.path.endswith(".asc")
    key = await asyncio.to_thread(export_public_key, request.app[CONFIG].data_dir, armor)
    content_type = "application/pgp-keys" if armor else "application/octet-stream"
    return web.Response(body=key, content_type=content_type)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _status(request: web.Request) -> dict:
    config = request.app[CONFIG]
    return await request.app[DATABASE].read(lambda db: collect_status(config, db))


async def status_api(request: web.Request) -> web.Response:
    """The status as JSON, as `debcache status --json` prints it."""
    return web.Response(text=status_json(await _status(request)), content_type="application/json")


async def status_page(request: web.Request) -> web.Response:
    """Upstreams, branches and their manifests, recent recordings, cache size and hit ratio."""
    status = await _status(request)
    last = status["last_24h"]
    ratio = "-" if last["hit_ratio"] is None else f"{last['hit_ratio']:.1%}"
    page = STATUS_PAGE.substitute(
        cache_files=status["cache"]["files"],
        cache_size=_size(status["cache"]["bytes"]),
        requests=last["requests"],
        hit_ratio=ratio,
        data_dir=html.escape(status["data_dir"]),
        manifests=status["manifests"],
        upstreams=_rows(
            [u["name"], " ".join(u["urls"]), " ".join(u["proxy_hosts"])]
            for u in status["upstreams"]
        ),
        branches=_rows(
            [
                b["name"],
                b["short"],
                b["label"] or "",
                _when(b["changed"]),
                b["files"],
                _size(b["bytes"]),
            ]
            for b in status["branches"]
        ),
        recordings=_rows(
            [
                r["recording"],
                _when(r["first"]),
                _when(r["last"]),
                r["files"],
                r["clients"],
                r["upstreams"],
            ]
            for r in status["recordings"]
        ),
    )
    return web.Response(text=page, content_type="text/html")


def _rows(rows) -> str:
    return "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
