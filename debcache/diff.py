"""What differs between two file sets: what did this point release change for us?

Each side is a manifest (id or unique prefix), a branch (its current manifest)
or a recording (as it would freeze). Every file that differs is accounted for
once, per upstream and suite where it has one:

- pool files by the package, architecture and version the frozen Packages index
  gives them, debs and udebs apart;
- installer images (`installer-<arch>/<dir>/images/…`) by path and sha256,
  with the version directory `current` stands for on each side;
- the Release date, and a count of the index files (Release forms, Packages,
  Translations…) that differ, since those follow from the changes above;
- anything else as an "other file".
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from . import db as queries
from .archive import parse_release, suite_of
from .config import Config
from .errors import UnknownDiffSide
from .freeze import plan_manifest
from .manifest import (
    SHORT_ID,
    Entry,
    Manifest,
    load_manifest,
    near_matches,
    resolve_manifest_id,
)
from .store import FileStore

# dists/<suite>/<component>/installer-<arch>/<directory>/images/<image>
INSTALLER_PATH = re.compile(r"dists/([^/]+)/([^/]+/installer-[^/]+)/([^/]+)/images/(.+)")


@dataclass(frozen=True)
class Side:
    name: str
    description: str  # e.g. "manifest 1a2b3c4d5e6f" or "recording run-1"
    manifest: Manifest
    # (upstream, "dists/S/main/installer-amd64") → the version directory `current` is
    installer_versions: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileChange:
    """One path whose sha256 differs: None on the side that lacks the file."""

    upstream: str
    path: str
    a: str | None
    b: str | None

    @property
    def key(self) -> tuple[str, str]:
        return self.upstream, self.path

    @property
    def kind(self) -> str:
        return "added" if self.a is None else "removed" if self.b is None else "changed"

    def shas(self) -> str:
        """`old → new` in the short form, or the one side's sha256."""
        short = [s[:SHORT_ID] for s in (self.a, self.b) if s]
        return " → ".join(short)


@dataclass
class PackageChanges:
    added: list[tuple[str, str, str]] = field(default_factory=list)  # name, arch, version
    removed: list[tuple[str, str, str]] = field(default_factory=list)
    changed: list[tuple[str, str, str, str]] = field(default_factory=list)  # name, arch, old, new

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def names(self) -> set[tuple[str, str]]:
        return {row[:2] for row in (*self.added, *self.removed, *self.changed)}

    def as_json(self) -> dict:
        def rows(names: tuple[str, ...], items: list[tuple]) -> list[dict]:
            return [dict(zip(names, item, strict=True)) for item in items]

        return {
            "added": rows(("package", "architecture", "version"), self.added),
            "removed": rows(("package", "architecture", "version"), self.removed),
            "changed": rows(("package", "architecture", "old", "new"), self.changed),
        }

    def text_rows(self) -> list[tuple[str, str, str, str]]:
        rows = [("changed", n, a, f"{o} → {v}") for n, a, o, v in self.changed]
        rows += [("added", n, a, v) for n, a, v in self.added]
        rows += [("removed", n, a, v) for n, a, v in self.removed]
        return rows


@dataclass
class InstallerDiff:
    """The images of one `<component>/installer-<arch>` directory that differ."""

    directory: str  # relative to dists/<suite>/, e.g. main/installer-amd64
    current: tuple[str | None, str | None]  # the version behind `current` on each side
    images: list[FileChange]

    def as_json(self) -> dict:
        return {
            "directory": self.directory,
            "current": {"a": self.current[0], "b": self.current[1]},
            "images": [{"path": f.path, "a": f.a, "b": f.b} for f in self.images],
        }

    def heading(self) -> str:
        old, new = self.current
        if old is None and new is None:
            return f"installer {self.directory}"
        if old == new:
            return f"installer {self.directory}, current: {old}"
        return f"installer {self.directory}, current: {old or '(unknown)'} → {new or '(unknown)'}"


@dataclass
class SuiteDiff:
    upstream: str
    suite: str
    release_dates: tuple[str | None, str | None] = (None, None)
    packages: PackageChanges = field(default_factory=PackageChanges)
    udebs: PackageChanges = field(default_factory=PackageChanges)
    installers: list[InstallerDiff] = field(default_factory=list)
    index_files: list[FileChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        dates_differ = self.release_dates[0] != self.release_dates[1]
        return not (
            self.packages or self.udebs or self.installers or self.index_files or dates_differ
        )

    def as_json(self) -> dict:
        return {
            "upstream": self.upstream,
            "suite": self.suite,
            "release_date": {"a": self.release_dates[0], "b": self.release_dates[1]},
            **self.packages.as_json(),
            "udebs": self.udebs.as_json(),
            "installer": [i.as_json() for i in self.installers],
            "index_files": [{"path": f.path, "a": f.a, "b": f.b} for f in self.index_files],
        }

    def as_text(self) -> list[str]:
        lines = [f"\n{self.upstream} {self.suite}"]
        old, new = self.release_dates
        if old != new:
            lines.append(f"  Release date  {old or '(none)'} → {new or '(none)'}")
        for heading, changes in (("packages", self.packages), ("udebs", self.udebs)):
            if changes:
                lines += [f"  {heading}", *_table(changes.text_rows())]
        for installer in self.installers:
            lines += [f"  {installer.heading()}", *_table(self.image_rows(installer))]
        if self.index_files:
            lines.append(
                f"  index files   {self.index_summary()} (they follow from the changes above)"
            )
        return lines

    def image_rows(self, installer: InstallerDiff) -> list[tuple[str, str, str]]:
        """(kind, path below the installer directory, sha256s) of each image that differs."""
        start = len(f"dists/{self.suite}/") + len(installer.directory) + 1
        return [(f.kind, f.path[start:], f.shas()) for f in installer.images]

    def index_summary(self) -> str:
        """How many index files changed, were added and removed, e.g. "3 changed, 1 added"."""
        counts: dict[str, int] = defaultdict(int)
        for change in self.index_files:
            counts[change.kind] += 1
        return ", ".join(f"{counts[k]} {k}" for k in ("changed", "added", "removed") if counts[k])


@dataclass
class Diff:
    a: Side
    b: Side
    suites: list[SuiteDiff]
    other_files: list[FileChange]
    differs: bool  # the file sets differ, whether or not anything above summarizes it

    def as_json(self) -> dict:
        return {
            "a": {"name": self.a.name, "id": self.a.manifest.id},
            "b": {"name": self.b.name, "id": self.b.manifest.id},
            "differs": self.differs,
            "suites": [s.as_json() for s in self.suites if not s.empty],
            "other_files": [
                {"upstream": f.upstream, "path": f.path, "a": f.a, "b": f.b}
                for f in self.other_files
            ],
        }

    def other_rows(self) -> list[tuple[str, str, str]]:
        """(kind, upstream/path, sha256s) of each file no suite accounts for."""
        return [(f.kind, f"{f.upstream}/{f.path}", f.shas()) for f in self.other_files]

    def as_text(self) -> str:
        lines = [f"--- {self.a.description}", f"+++ {self.b.description}"]
        for suite in self.suites:
            if not suite.empty:
                lines += suite.as_text()
        if self.other_files:
            lines += ["\nother files", *_table(self.other_rows(), indent="  ")]
        if not self.differs:
            lines.append("\nNo file differs.")
        return "\n".join(lines)


def _table(rows: list[tuple[str, ...]], indent: str = "    ") -> list[str]:
    """Rows of (kind, column…, last): every column but the last padded to its widest."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    widths[0] = max(widths[0], len("removed"))
    return [
        indent
        + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    ]


def diff(a: Side, b: Side) -> Diff:
    """Per upstream and suite: packages, udebs, installer images, Release dates, indices;
    then every other file that differs."""
    changes = _changed_files(a.manifest, b.manifest)
    suites: dict[tuple[str, str], SuiteDiff] = {}

    def suite_diff(upstream: str, suite: str) -> SuiteDiff:
        if (upstream, suite) not in suites:
            dates = (_date(a.manifest, upstream, suite), _date(b.manifest, upstream, suite))
            suites[(upstream, suite)] = SuiteDiff(upstream, suite, dates)
        return suites[(upstream, suite)]

    for upstream, suite in _release_suites(a.manifest) | _release_suites(b.manifest):
        suite_diff(upstream, suite)
    explained = _package_changes(a.manifest, b.manifest, changes, suite_diff)
    images: dict[tuple[str, str, str], list[FileChange]] = defaultdict(list)
    other = []
    for change in (c for c in changes if c.key not in explained):
        installer = INSTALLER_PATH.fullmatch(change.path)
        located = suite_of(change.path)
        if installer:
            images[(change.upstream, installer[1], installer[2])].append(change)
        elif located:
            suite_diff(change.upstream, located[0]).index_files.append(change)
        else:
            other.append(change)
    for (upstream, suite, directory), files in sorted(images.items()):
        key = (upstream, f"dists/{suite}/{directory}")
        current = (a.installer_versions.get(key), b.installer_versions.get(key))
        if not any("/current/images/" in f.path for f in files):
            current = (None, None)
        suite_diff(upstream, suite).installers.append(InstallerDiff(directory, current, files))
    return Diff(a, b, [suites[k] for k in sorted(suites)], other, bool(changes))


def _changed_files(a: Manifest, b: Manifest) -> list[FileChange]:
    """Every (upstream, path) whose sha256 (or size) is not the same on both sides, sorted."""
    old = {e.key: e for e in a.entries}
    new = {e.key: e for e in b.entries}
    changes = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before and after and (before.sha256, before.size) == (after.sha256, after.size):
            continue
        changes.append(
            FileChange(*key, before.sha256 if before else None, after.sha256 if after else None)
        )
    return changes


def _package_changes(
    a: Manifest,
    b: Manifest,
    changes: list[FileChange],
    suite_diff: Callable[[str, str], SuiteDiff],
) -> set[tuple[str, str]]:
    """Fill in package and udeb rows; the (upstream, path) of the pool files they explain."""
    old, new = packages_by_suite(a), packages_by_suite(b)
    rows: set[tuple[str, str, str, str, str]] = set()  # upstream, suite, kind, name, arch
    for upstream, suite, kind in sorted(old.keys() | new.keys()):
        before, after = old.get((upstream, suite, kind), {}), new.get((upstream, suite, kind), {})
        entry = suite_diff(upstream, suite)
        target = entry.udebs if kind == "udeb" else entry.packages
        for name in sorted(before.keys() | after.keys()):
            if name not in before:
                target.added.append((*name, after[name]))
            elif name not in after:
                target.removed.append((*name, before[name]))
            elif before[name] != after[name]:
                target.changed.append((*name, before[name], after[name]))
            else:
                continue
            rows.add((upstream, suite, kind, *name))
    pool = {e.key: e for e in (*a.entries, *b.entries) if e.package and e.suite}
    return {
        change.key
        for change in changes
        if change.key in pool and (*_package_key(pool[change.key]),) in rows
    }


def _package_key(entry: Entry) -> tuple[str, str, str, str, str]:
    return (
        entry.upstream,
        entry.suite or "",
        _kind(entry),
        entry.package or "",
        entry.architecture or "",
    )


def _kind(entry: Entry) -> str:
    return "udeb" if entry.path.endswith(".udeb") else "deb"


def packages_by_suite(manifest: Manifest) -> dict[tuple[str, str, str], dict[tuple[str, str], str]]:
    """(upstream, suite, "deb" or "udeb") → (package, architecture) → version, from the pool."""
    packages: dict[tuple[str, str, str], dict[tuple[str, str], str]] = defaultdict(dict)
    for entry in manifest.entries:
        if entry.package and entry.suite:
            upstream, suite, kind, name, arch = _package_key(entry)
            packages[(upstream, suite, kind)][(name, arch)] = entry.version or ""
    return packages


def _release_suites(manifest: Manifest) -> set[tuple[str, str]]:
    return {tuple(key.split(" ", 1)) for key in manifest.releases}  # type: ignore[misc]


def _date(manifest: Manifest, upstream: str, suite: str) -> str | None:
    return manifest.releases.get(f"{upstream} {suite}", {}).get("date")


# --- which installer version `current` is -------------------------------------------


def installer_versions(manifest: Manifest, store: FileStore) -> dict[tuple[str, str], str]:
    """(upstream, `dists/S/C/installer-A`) → the version directory `current` is a copy of.

    `current` is a symlink on Debian mirrors: the dated directory whose SHA256SUMS has
    the same sha256 as current's is the build behind it. The frozen Release lists
    both; failing that (its blob evicted), a dated SHA256SUMS in the manifest itself.
    """
    entries = {e.key: e for e in manifest.entries}
    versions = {}
    for entry in manifest.entries:
        match = INSTALLER_PATH.fullmatch(entry.path)
        if not match or match[3] != "current" or match[4] != "SHA256SUMS":
            continue
        suite, directory = match[1], match[2]
        candidates = _release_listing(entries, store, entry.upstream, suite)
        candidates += [
            (e.path.removeprefix(f"dists/{suite}/"), e.sha256)
            for e in manifest.entries
            if e.upstream == entry.upstream
        ]
        for name, sha256 in candidates:
            dated = re.fullmatch(rf"{re.escape(directory)}/([^/]+)/images/SHA256SUMS", name)
            if dated and dated[1] != "current" and sha256 == entry.sha256:
                versions[(entry.upstream, f"dists/{suite}/{directory}")] = dated[1]
                break
    return versions


def _release_listing(
    entries: dict[tuple[str, str], Entry], store: FileStore, upstream: str, suite: str
) -> list[tuple[str, str]]:
    """(name, sha256) of every file the suite's frozen Release lists; [] if it is not stored."""
    for name in ("Release", "InRelease"):
        entry = entries.get((upstream, f"dists/{suite}/{name}"))
        blob = store.local_path(entry.sha256) if entry else None
        if blob is not None and blob.is_file():
            # Freeze verified this blob; here it is only read (deb822 skips the armour).
            release = parse_release(blob.read_bytes())
            return [(e.name, e.sha256) for e in release.entries.values()]
    return []


def load_side(config: Config, db: sqlite_utils.Database, store: FileStore, name: str) -> Side:
    """A branch, a manifest id or prefix, or a recording; in that order of lookup."""
    branch = queries.branch_row(db, name)
    if branch is not None:
        manifest = load_manifest(db, branch["manifest_id"])
        description = f"branch {name} (manifest {manifest.short_id})"
    elif re.fullmatch(r"[0-9a-fA-F]{4,64}", name) and queries.manifest_ids_with_prefix(db, name):
        return manifest_side(db, store, name, resolve_manifest_id(db, name))
    elif queries.recording_exists(db, name):
        # Read-only: what it would freeze from what is cached; diff never downloads.
        manifest = plan_manifest(config, db, store, [name], allow_unverified=True)
        description = f"recording {name} (as it would freeze)"
    else:
        candidates = queries.recording_names(db)
        candidates |= {row["id"][:SHORT_ID] for row in queries.manifest_rows(db)}
        candidates |= {row["name"] for row in queries.branch_rows(db)}
        raise UnknownDiffSide(
            f"{name!r} is no manifest, branch or recording{near_matches(name, candidates)}",
            "list them with `debcache manifests`, `debcache branches` or `debcache recordings`",
        )
    return Side(name, description, manifest, installer_versions(manifest, store))


def manifest_side(db: sqlite_utils.Database, store: FileStore, name: str, manifest_id: str) -> Side:
    """A side that is one manifest, by its full id (as `debcache diff ID` takes it)."""
    manifest = load_manifest(db, manifest_id)
    return Side(
        name, f"manifest {manifest.short_id}", manifest, installer_versions(manifest, store)
    )
