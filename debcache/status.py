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
        "branches": [
            {
                "name": row["name"],
                "manifest": row["manifest_id"],
                "short": row["manifest_id"][:SHORT_ID],
                "label": row["label"],
                "changed": row["changed"],
                "files": row["files"],
                "bytes": row["bytes"],
            }
            for row in queries.branch_rows(db)
        ],
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


def status_json(status: dict) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
