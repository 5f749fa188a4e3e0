"""What `debcache status`, the /_/ page and /_/api/status show: one summary, two skins."""

from __future__ import annotations

import json
import time

import sqlite_utils

from . import db as queries
from .config import Config
from .manifest import SHORT_ID
from .store import FileStore

RECENT_RECORDINGS = 20
HIT_RATIO_WINDOW = 86400.0


def collect_status(config: Config, db: sqlite_utils.Database) -> dict:
    """Upstreams, branches and their manifests, recent recordings, store and live-cache
    sizes, and hit ratio."""
    now = time.time()
    by_source = queries.served_by_source(db, now - HIT_RATIO_WINDOW)
    cached = {"hit", "coalesced", "pinned", "stale"}
    total = sum(v["requests"] for v in by_source.values())
    from_cache = sum(v["requests"] for k, v in by_source.items() if k in cached)
    files, size = queries.cached_totals(db)
    blobs, stored = FileStore(config.data_dir).totals()
    return {
        "data_dir": str(config.data_dir),
        "upstreams": [
            {"name": u.name, "urls": list(u.urls), "proxy_hosts": list(u.proxy_hosts)}
            for u in config.upstreams.values()
        ],
        "branches": branch_summaries(db),
        "manifests": queries.manifest_count(db),
        "recordings": queries.recording_summaries(db, RECENT_RECORDINGS),
        "cache": {"files": files, "bytes": size},  # live-cache paths
        "store": {"blobs": blobs, "bytes": stored},  # every blob, freeze's fetches too
        "last_24h": {
            "requests": total,
            "hit_ratio": round(from_cache / total, 4) if total else None,
            "by_source": by_source,
        },
    }


def branch_summaries(db: sqlite_utils.Database) -> list[dict]:
    """Each branch: its manifest, label, last change and its note, size, last verify."""
    checks = queries.branch_checks(db)
    return [
        {
            "name": row["name"],
            "manifest": row["manifest_id"],
            "short": row["manifest_id"][:SHORT_ID],
            "label": row["label"],
            "changed": row["changed"],
            "note": row["note"],
            "previous": row["previous_id"],
            "files": row["files"],
            "bytes": row["bytes"],
            "verified": _verified(checks.get(row["name"]), row["manifest_id"]),
        }
        for row in queries.branch_rows(db)
    ]


def _verified(check: dict | None, manifest_id: str) -> dict | None:
    """What the last `debcache verify` found of this manifest; None if it did not check it
    (never run, or run before the branch's last change)."""
    if check is None or check["manifest_id"] != manifest_id:
        return None
    return {"time": check["time"], "blobs": check["blobs"], "lost": check["lost"]}


def status_json(status: dict) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
