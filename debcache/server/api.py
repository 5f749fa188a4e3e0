"""/_/api/: JSON for everything the CLI shows, and its mutations (loopback or token only).

Each endpoint calls the same domain function as its CLI command, on a worker
thread with a connection of its own.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable
from typing import Any

import sqlite_utils
from aiohttp import web

from .. import db as queries
from ..branches import current_manifest_id, promote, rollback
from ..diff import diff, load_side
from ..errors import ApiNotAllowed, InvalidApiRequest
from ..freeze import freeze
from ..lockfile import export_lockfile
from ..manifest import load_manifest, resolve_manifest_id
from ..recording import check_recordings_exist, recording_contents, recordings_listing
from ..store import FileStore
from .keys import CONFIG, MACHINE_NAMES, UPSTREAM

log = logging.getLogger(__name__)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/_/api/recordings", recordings),
        web.get("/_/api/recordings/{name}", recording),
        web.get("/_/api/manifests", manifests),
        web.get("/_/api/manifests/{id}", manifest),
        web.get("/_/api/branches", branches),
        web.get("/_/api/branches/{name}/log", branch_log),
        web.get("/_/api/diff", difference),
        web.post("/_/api/freeze", freeze_recordings),
        web.post("/_/api/branches/{name}/promote", promote_branch),
        web.post("/_/api/branches/{name}/rollback", rollback_branch),
    ]


async def _run(request: web.Request, operation: Callable[..., Any], *args: Any) -> Any:
    """operation(config, db, store, *args) on a worker thread with its own connection."""
    config = request.app[CONFIG]

    def call() -> Any:
        database = queries.connect(config.data_dir / "debcache.db")
        try:
            return operation(config, database, FileStore(config.data_dir), *args)
        finally:
            database.conn.close()

    return await asyncio.to_thread(call)


def _json(document: object) -> web.Response:
    return web.Response(
        text=json.dumps(document, indent=2, sort_keys=True), content_type="application/json"
    )


async def check_may_change(request: web.Request) -> None:
    """Mutations come from this machine, or carry `Authorization: Bearer <admin_token>`."""
    if _is_loopback(request.remote) and await _names_this_machine(request):
        return
    token = request.app[CONFIG].admin_token
    offered = _bearer_token(request.headers.get("Authorization", ""))
    if token and offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
        return
    raise ApiNotAllowed(
        "changes through the API need a loopback client or the admin token",
        "send Authorization: Bearer <[server] admin_token>, or run the CLI on the server",
    )


def _bearer_token(authorization: str) -> str | None:
    """The token of `Bearer TOKEN` (the scheme in any case, RFC 6750 2.1); else None.

    A bare token is refused: accepting it would make the scheme optional, and a
    credential meant for another scheme (Basic ...) must never count as the token.
    """
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _names_this_machine(request: web.Request) -> bool:
    """The Host a local client uses: an address, localhost or this machine's own name.

    A web page that rebinds its own domain to 127.0.0.1 still sends that domain in
    Host, so loopback trust does not extend to it (DNS rebinding).
    """
    host = request.host
    if host.startswith("["):  # [v6]:port
        name = host[1 : host.find("]")]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    name = name.lower()
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name.endswith(".localhost") or await request.app[MACHINE_NAMES].include(name)


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def _body(request: web.Request) -> dict:
    # Only JSON: a browser cannot send that cross-site without a CORS preflight, which
    # debcache never grants, so a web page can't drive the API of a cache on its host.
    if request.content_type != "application/json":
        raise InvalidApiRequest(
            "changes through the API take a JSON body", "send Content-Type: application/json"
        )
    try:
        document = await request.json()
    except ConnectionError:
        # The client hung up mid-body: its doing, not a fault of debcache. Nobody is
        # left to read an answer; a line in the log is all it is worth.
        log.info("%s hung up while sending the body of %s", request.remote, request.raw_path)
        raise InvalidApiRequest(
            "the request body was cut short", "send the whole body in one request"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidApiRequest(
            "the request body is not JSON", 'send e.g. {"manifest": "1a2b3c"}'
        ) from None
    if not isinstance(document, dict):
        raise InvalidApiRequest(
            "the request body must be a JSON object", 'send e.g. {"manifest": "1a2b"}'
        )
    return document


# --- reading ----------------------------------------------------------------------


async def recordings(request: web.Request) -> web.Response:
    """Recordings: name, first and last fetch, files, failed fetches, clients, upstreams;
    and how far back the fetch log goes."""
    return _json(await _run(request, lambda c, db, s: recordings_listing(db, c.fetch_log_days)))


async def recording(request: web.Request) -> web.Response:
    """Every file one recording fetched, with its sha256, and its failed fetches."""
    name = request.match_info["name"]

    def contents(config, db: sqlite_utils.Database, store) -> dict:
        check_recordings_exist(db, [name])
        return recording_contents(db, name)

    return _json(await _run(request, contents))


async def manifests(request: web.Request) -> web.Response:
    """Manifests: id, label, created, files, bytes."""
    rows = await _run(request, lambda c, db, s: queries.manifest_rows(db))
    return _json(
        [
            {
                k: v
                for k, v in r.items()
                if k not in ("releases", "unverified", "completed", "warnings")
            }
            for r in rows
        ]
    )


async def manifest(request: web.Request) -> web.Response:
    """One manifest (id or unique prefix) as its lockfile."""
    reference = request.match_info["id"]
    found = await _run(
        request, lambda c, db, s: load_manifest(db, resolve_manifest_id(db, reference))
    )
    return _json(export_lockfile(found))


async def branches(request: web.Request) -> web.Response:
    """Branches and the manifest each points at."""
    return _json(await _run(request, lambda c, db, s: queries.branch_rows(db)))


async def branch_log(request: web.Request) -> web.Response:
    """A branch's promotes and rollbacks, newest first."""
    name = request.match_info["name"]

    def history(config, db, store) -> list[dict]:
        current_manifest_id(db, name)
        return queries.branch_history(db, name)

    return _json(await _run(request, history))


async def difference(request: web.Request) -> web.Response:
    """Package-level differences: ?a=...&b=... (manifests, branches or recordings)."""
    a, b = request.query.get("a"), request.query.get("b")
    if not a or not b:
        raise InvalidApiRequest(
            "diff needs ?a=...&b=...", "name two manifests, branches or recordings"
        )
    result = await _run(
        request, lambda c, db, s: diff(load_side(c, db, s, a), load_side(c, db, s, b))
    )
    return _json(result.as_json())


# --- changing ---------------------------------------------------------------------


async def freeze_recordings(request: web.Request) -> web.Response:
    """Freeze recordings: {"recordings": [...], "label", "promote", "allow_unverified",
    "strict", "installer": "recorded" or "complete"}."""
    await check_may_change(request)
    body = await _body(request)
    names = body.get("recordings")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InvalidApiRequest(
            "recordings must be a list of names", 'send {"recordings": ["run-1"]}'
        )

    branch = str(body["promote"]) if body.get("promote") else None
    client = request.app[UPSTREAM]

    def operation(config, db, store) -> dict:
        made, created = freeze(
            config,
            db,
            store,
            names,
            client=client,
            promote=branch,
            label=body.get("label"),
            allow_unverified=bool(body.get("allow_unverified")),
            strict=bool(body.get("strict")),
            installer=str(body.get("installer") or "recorded"),
        )
        return {
            "id": made.id,
            "label": made.label,
            "files": len(made.entries),
            "bytes": made.bytes,
            "created": created,
            "unverified": made.unverified,
            "warnings": made.warnings,
            "completed": len(made.completed),
        }

    return _json(await _run(request, operation))


async def promote_branch(request: web.Request) -> web.Response:
    """Point a branch at a manifest: {"manifest": ID, "note": ...}."""
    await check_may_change(request)
    body = await _body(request)
    name = request.match_info["name"]
    change = await _run(
        request,
        lambda c, db, s: promote(db, s, name, str(body.get("manifest", "")), body.get("note")),
    )
    return _json(change.__dict__)


async def rollback_branch(request: web.Request) -> web.Response:
    """Roll a branch back: {"to": ID or null, "note": ...}."""
    await check_may_change(request)
    body = await _body(request)
    name = request.match_info["name"]
    change = await _run(
        request, lambda c, db, s: rollback(db, s, name, body.get("to"), body.get("note"))
    )
    return _json(change.__dict__)
