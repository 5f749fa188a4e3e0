"""Package-level differences between two file sets: what did this point release change for us?

Each side is a manifest (id or unique prefix), a branch (its current manifest)
or a recording (as it would freeze). Pool files are compared by the package and
architecture the frozen Packages index gives them, per upstream and suite, and
Release dates are compared per suite.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import sqlite_utils

from . import db as queries
from .config import Config
from .errors import NotFound
from .manifest import (
    SHORT_ID,
    Manifest,
    load_manifest,
    near_matches,
    plan_manifest,
    resolve_manifest_id,
)
from .store import FileStore


@dataclass(frozen=True)
class Side:
    name: str
    description: str  # e.g. "manifest 1a2b3c4d5e6f" or "recording run-1"
    manifest: Manifest


@dataclass
class SuiteDiff:
    upstream: str
    suite: str
    release_dates: tuple[str | None, str | None] = (None, None)
    added: list[tuple[str, str, str]] = field(default_factory=list)  # name, arch, version
    removed: list[tuple[str, str, str]] = field(default_factory=list)
    changed: list[tuple[str, str, str, str]] = field(default_factory=list)  # name, arch, old, new

    @property
    def empty(self) -> bool:
        dates_differ = self.release_dates[0] != self.release_dates[1]
        return not (self.added or self.removed or self.changed or dates_differ)

    def as_json(self) -> dict:
        def rows(names: tuple[str, ...], items: list[tuple]) -> list[dict]:
            return [dict(zip(names, item, strict=True)) for item in items]

        return {
            "upstream": self.upstream,
            "suite": self.suite,
            "release_date": {"a": self.release_dates[0], "b": self.release_dates[1]},
            "added": rows(("package", "architecture", "version"), self.added),
            "removed": rows(("package", "architecture", "version"), self.removed),
            "changed": rows(("package", "architecture", "old", "new"), self.changed),
        }


@dataclass
class Diff:
    a: Side
    b: Side
    suites: list[SuiteDiff]

    @property
    def differs(self) -> bool:
        return any(not s.empty for s in self.suites)

    def as_json(self) -> dict:
        return {
            "a": {"name": self.a.name, "id": self.a.manifest.id},
            "b": {"name": self.b.name, "id": self.b.manifest.id},
            "differs": self.differs,
            "suites": [s.as_json() for s in self.suites if not s.empty],
        }

    def as_text(self) -> str:
        lines = [f"--- {self.a.description}", f"+++ {self.b.description}"]
        for suite in self.suites:
            if suite.empty:
                continue
            lines.append(f"\n{suite.upstream} {suite.suite}")
            old, new = suite.release_dates
            if old != new:
                lines.append(f"  Release date   {old or '(none)'} → {new or '(none)'}")
            rows = [("changed", n, a, f"{o} → {v}") for n, a, o, v in suite.changed]
            rows += [("added", n, a, v) for n, a, v in suite.added]
            rows += [("removed", n, a, v) for n, a, v in suite.removed]
            width = max((len(r[1]) for r in rows), default=0)
            lines += [
                f"  {kind:<8} {name:<{width}}  {arch:<6} {what}" for kind, name, arch, what in rows
            ]
        if not self.differs:
            lines.append("\nNo package or Release date differs.")
        return "\n".join(lines)


def diff(a: Side, b: Side) -> Diff:
    """Per upstream and suite: packages added, removed, changed, and Release dates."""
    packages_a, packages_b = packages_by_suite(a.manifest), packages_by_suite(b.manifest)
    suites = sorted(
        set(packages_a)
        | set(packages_b)
        | _release_suites(a.manifest)
        | _release_suites(b.manifest)
    )
    result = []
    for upstream, suite in suites:
        old, new = packages_a.get((upstream, suite), {}), packages_b.get((upstream, suite), {})
        entry = SuiteDiff(
            upstream,
            suite,
            (_date(a.manifest, upstream, suite), _date(b.manifest, upstream, suite)),
        )
        for key in sorted(set(old) | set(new)):
            if key not in old:
                entry.added.append((*key, new[key]))
            elif key not in new:
                entry.removed.append((*key, old[key]))
            elif old[key] != new[key]:
                entry.changed.append((*key, old[key], new[key]))
        result.append(entry)
    return Diff(a, b, result)


def packages_by_suite(manifest: Manifest) -> dict[tuple[str, str], dict[tuple[str, str], str]]:
    """(upstream, suite) → (package, architecture) → version, from the pool entries."""
    packages: dict[tuple[str, str], dict[tuple[str, str], str]] = defaultdict(dict)
    for entry in manifest.entries:
        if entry.package and entry.suite:
            packages[(entry.upstream, entry.suite)][(entry.package, entry.architecture or "")] = (
                entry.version or ""
            )
    return packages


def _release_suites(manifest: Manifest) -> set[tuple[str, str]]:
    return {tuple(key.split(" ", 1)) for key in manifest.releases}  # type: ignore[misc]


def _date(manifest: Manifest, upstream: str, suite: str) -> str | None:
    return manifest.releases.get(f"{upstream} {suite}", {}).get("date")


def load_side(config: Config, db: sqlite_utils.Database, store: FileStore, name: str) -> Side:
    """A branch, a manifest id or prefix, or a recording; in that order of lookup."""
    branch = queries.branch_row(db, name)
    if branch is not None:
        manifest = load_manifest(db, branch["manifest_id"])
        return Side(name, f"branch {name} (manifest {manifest.short_id})", manifest)
    if re.fullmatch(r"[0-9a-fA-F]{4,64}", name) and queries.manifest_ids_with_prefix(db, name):
        manifest = load_manifest(db, resolve_manifest_id(db, name))
        return Side(name, f"manifest {manifest.short_id}", manifest)
    recordings = {row["recording"] for row in queries.recording_summaries(db)}
    if name in recordings:
        manifest = plan_manifest(config, db, store, [name], allow_unverified=True)
        return Side(name, f"recording {name} (as it would freeze)", manifest)
    candidates = recordings | {row["id"][:SHORT_ID] for row in queries.manifest_rows(db)}
    candidates |= {row["name"] for row in queries.branch_rows(db)}
    raise NotFound(
        f"{name!r} is no manifest, branch or recording{near_matches(name, candidates)}",
        "list them with `debcache manifests`, `debcache branches` or `debcache recordings`",
    )
