"""debcache's own pages: under /_/ status (HTML and JSON), metrics, liveness, the public key
and an index of them; at / a short page pointing at them and at the mirror URLs.

The router is the one table of these pages: the /_/api/ index, the 404 for an
unknown /_/ path and the front page all read it, and each page's description is
the first line of its handler's docstring.
"""

from __future__ import annotations

import asyncio
import html
import json

import sqlite_utils
from aiohttp import web

from .. import db as queries
from ..branches import current_manifest_id
from ..diff import Diff, diff, load_side, manifest_side
from ..errors import UnknownPage
from ..manifest import SHORT_ID
from ..metrics import CONTENT_TYPE
from ..resign import export_public_key
from ..status import branch_summaries, collect_status, status_json
from ..store import FileStore
from .diff_html import diff_html
from .keys import CONFIG, DATABASE, METRICS, UPSTREAM
from .live import is_absolute_form, serve_live
from .rendering import Markup, link, paragraph, render, size, table, template, when

OWN_PREFIX = "/_/"

STATUS_PAGE = template("status.html")
BRANCH_PAGE = template("branch.html")


async def health(request: web.Request) -> web.Response:
    """Liveness: answers as soon as the server accepts requests; 503 when it cannot write."""
    failure = request.app[DATABASE].failure
    if failure is not None:
        return web.Response(status=503, text=f"{failure}\n")
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
    """Status page (HTML): upstreams and their health, branches, recent recordings, sizes."""
    status = await _status(request)
    last = status["last_24h"]
    ratio = "-" if last["hit_ratio"] is None else f"{last['hit_ratio']:.1%}"
    page = render(
        STATUS_PAGE,
        store_blobs=status["store"]["blobs"],
        store_size=size(status["store"]["bytes"]),
        cache_files=status["cache"]["files"],
        cache_size=size(status["cache"]["bytes"]),
        requests=last["requests"],
        hit_ratio=ratio,
        data_dir=status["data_dir"],
        manifests=status["manifests"],
        started=when(request.app[UPSTREAM].started),
        upstreams=_upstream_table(request),
        branches=table(
            BRANCH_COLUMNS,
            (
                _branch_cells(b, f"branches/{b['name']}", "api/manifests/")
                for b in status["branches"]
            ),
            "No branches yet: debcache promote BRANCH MANIFEST makes one.",
        ),
        recordings=table(
            ("recording", "first", "last", "files", "clients", "upstreams"),
            (_recording_cells(r) for r in status["recordings"]),
        ),
    )
    return web.Response(text=page, content_type="text/html")


BRANCH_COLUMNS = (
    "branch",
    "manifest",
    "label",
    "last promote or rollback",
    "note",
    "files",
    "size",
    "blobs",
)


def _branch_cells(branch: dict, page: str, manifests: str) -> list[object]:
    """A branch's row: links to its page and its manifest (the lockfile, as JSON)."""
    return [
        link(page, branch["name"]),
        link(manifests + branch["manifest"], branch["short"]),
        branch["label"] or "-",
        when(branch["changed"]),
        branch["note"] or "-",
        branch["files"],
        size(branch["bytes"]),
        _verified(branch["verified"]),
    ]


def _recording_cells(recording: dict) -> list[object]:
    return [
        recording["recording"],
        when(recording["first"]),
        when(recording["last"]),
        recording["files"],
        recording["clients"],
        recording["upstreams"],
    ]


def _verified(verified: dict | None) -> str:
    if verified is None:
        return "not verified yet"
    on = f"(verify of {when(verified['time'])})"
    if verified["lost"]:
        return f"{verified['lost']} of {verified['blobs']} blobs missing {on}"
    return f"all {verified['blobs']} blobs present {on}"


def _upstream_table(request: web.Request) -> Markup:
    client = request.app[UPSTREAM]
    headers = ("name", "base URLs", "proxy hosts", "last success", "last failure", "why")
    rows = []
    for upstream in request.app[CONFIG].upstreams.values():
        health = client.health(upstream.name)
        penalized = client.penalized(upstream)
        rows.append(
            [
                upstream.name,
                " ".join(upstream.urls),
                " ".join(upstream.proxy_hosts),
                when(health.last_success),
                when(health.last_failure),
                health.failure or "-",
                "; ".join(
                    f"{base} tried last for {left:.0f} s more" for base, left in penalized.items()
                )
                or "no",
            ]
        )
    return table((*headers, "failover penalty"), rows, "No upstream configured.")


async def branch_page(request: web.Request) -> web.Response:
    """A branch's page (HTML): its manifest, its history and what its last change changed."""
    name = request.match_info["branch"]
    config = request.app[CONFIG]

    def read(db: sqlite_utils.Database) -> tuple[dict, list[dict], Diff | None]:
        current_manifest_id(db, name)  # UnknownBranch: a 404
        store = FileStore(config.data_dir)
        branch = next(b for b in branch_summaries(db) if b["name"] == name)
        change = None
        if branch["previous"]:
            before = manifest_side(db, store, branch["previous"][:SHORT_ID], branch["previous"])
            change = diff(before, load_side(config, db, store, name))
        return branch, queries.branch_history(db, name), change

    branch, history, change = await request.app[DATABASE].read(read)
    manifests = "../api/manifests/"
    summary = table(BRANCH_COLUMNS, [_branch_cells(branch, name, manifests)])
    page = render(
        BRANCH_PAGE,
        name=name,
        summary=summary,
        history=table(
            ("when", "action", "manifest", "from", "note"),
            (_history_cells(entry, manifests) for entry in history),
        ),
        changes=paragraph("Its first manifest: there is no earlier one to compare with.")
        if change is None
        else diff_html(change),
    )
    return web.Response(text=page, content_type="text/html")


def _history_cells(change: dict, manifests: str) -> list[object]:
    """A promote or rollback: when, which, the manifest it pointed the branch at and from."""
    previous = change["previous_id"]
    return [
        when(change["time"]),
        change["action"],
        link(manifests + change["manifest_id"], change["manifest_id"][:SHORT_ID]),
        link(manifests + previous, previous[:SHORT_ID]) if previous else "-",
        change["note"] or "-",
    ]


# --- the index of debcache's own pages, and the front page -----------------------------


def own_endpoints(app: web.Application) -> list[dict[str, str]]:
    """Every route under /_/: method, path and the first line of its handler's docstring."""
    endpoints = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        # HEAD comes with every GET; "*" is the catch-all that answers unknown paths.
        if path.startswith(OWN_PREFIX) and route.method not in ("HEAD", "*"):
            lines = (route.handler.__doc__ or "").strip().splitlines()
            endpoints.append(
                {"method": route.method, "path": path, "description": lines[0] if lines else ""}
            )
    return endpoints


async def api_index(request: web.Request) -> web.Response:
    """This index: every endpoint under /_/ with its method and what it does."""
    return web.json_response(
        {"endpoints": own_endpoints(request.app)},
        dumps=lambda document: json.dumps(document, indent=2),
    )


async def unknown_page(request: web.Request) -> web.StreamResponse:
    # No docstring on purpose: this catch-all is not one of the pages it lists.
    allowed = await _methods_of_own_path(request)
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    if request.method in ("GET", "HEAD") and _is_own_page(request, f"{request.path}/"):
        raise web.HTTPPermanentRedirect(f"{request.path}/")  # /_/api is /_/api/
    listing = ", ".join(f"{e['method']} {e['path']}" for e in own_endpoints(request.app))
    raise UnknownPage(
        # The raw path: decoded, a %0A would break the one-line answer.
        f"there is no {request.rel_url.raw_path} among debcache's own pages ({listing})",
        f"GET {OWN_PREFIX}api/ describes each of them",
    )


def _is_own_page(request: web.Request, path: str) -> bool:
    catch_all = request.match_info.route.resource
    return any(
        resource is not catch_all and resource.canonical == path
        for resource in request.app.router.resources()
    )


async def _methods_of_own_path(request: web.Request) -> set[str]:
    """The methods a real /_/ page takes at this path (the router took the catch-all
    because it matches any method, so a wrong method must be found here)."""
    allowed: set[str] = set()
    catch_all = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not catch_all and resource.canonical.startswith(OWN_PREFIX):
            _, methods = await resource.resolve(request)
            allowed |= methods
    return allowed


async def mirror_root(request: web.Request) -> web.StreamResponse:
    """GET /<upstream>/: how to use the live cache of an upstream in sources.list."""
    name = request.match_info["upstream"]
    upstream = request.app[CONFIG].upstreams.get(name)
    if upstream is None or is_absolute_form(request):  # not a root of ours: the usual answer
        return await serve_live(request)
    base = f"http://{request.host}"
    lines = [
        f"debcache: the live cache of upstream {name} ({' '.join(upstream.urls)}).",
        "",
        "Use it in /etc/apt/sources.list (with the upstream's suites and components):",
        f"  deb {base}/{name} SUITE main",
        "Or record an install under NAME, to freeze it later:",
        f"  deb {base}/record/NAME/{name} SUITE main",
        "",
        f"Status: {base}/_/",
    ]
    return web.Response(text="\n".join(lines) + "\n")


async def front_page(request: web.Request) -> web.Response:
    """Where to go from here: the status page, the API index and the mirror URLs."""
    config = request.app[CONFIG]
    base = f"http://{request.host}"
    pinned = await request.app[DATABASE].read(queries.branch_upstreams)
    sections = [
        ("debcache's own pages", [f"{base}/_/", f"{base}/_/api/", f"{base}/_/metrics"]),
        ("Mirror URLs (live cache)", [f"{base}/{name}/" for name in config.upstreams]),
        ("Pinned branches", [f"{base}/pin/{branch}/{upstream}/" for branch, upstream in pinned]),
    ]
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(text=_front_page_html(sections), content_type="text/html")
    return web.Response(text=_front_page_text(sections))


def _front_page_text(sections: list[tuple[str, list[str]]]) -> str:
    lines = ["debcache: a caching proxy for Debian archives."]
    for title, urls in sections:
        lines += ["", f"{title}:", *(f"  {url}" for url in urls or ["(none)"])]
    return "\n".join(lines) + "\n"


def _front_page_html(sections: list[tuple[str, list[str]]]) -> str:
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">']
    parts += ["<title>debcache</title></head><body>", "<h1>debcache</h1>"]
    parts.append("<p>A caching proxy for Debian archives.</p>")
    for title, urls in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        items = [f'<li><a href="{html.escape(u)}">{html.escape(u)}</a></li>' for u in urls]
        parts.append("<ul>" + "".join(items) + "</ul>" if urls else "<p>(none)</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
