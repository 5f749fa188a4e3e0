"""Freeze recordings into verified, immutable manifests: the verification planner.

`freeze` checks the chain apt itself checks: the Release signature against the
upstream's keyring, every index against the Release, every pool file against
the frozen Packages entry, installer images against SHA256SUMS; and completes
what a fresh install needs that no recording fetched (DESIGN §4).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from . import branches
from . import db as queries
from .archive import (
    RELEASE_NAMES,
    ReleaseEntry,
    ReleaseInfo,
    SignatureError,
    by_hash_path,
    by_hash_sha256,
    fresh_update_indices,
    host_architecture,
    installer_images_dir,
    packages_stanzas,
    parse_checksums_file,
    parse_release,
    suite_of,
    verify_signature,
)
from .config import Config, Upstream
from .errors import (
    INSTALLER_COMPLETE_NEEDS,
    FailedFetches,
    FreezeRefused,
    InvalidOption,
    UnverifiableFiles,
    recordings_named,
)
from .manifest import SHORT_ID, Entry, Manifest, load_manifest, manifest_id, save_manifest
from .recording import check_recordings_exist, failed_fetches
from .store import FileStore
from .upstream import DownloadFailure, UpstreamClient

MAX_UNLISTED_SIZE = 1 << 20  # a Release.gpg is a few kB; nothing larger is fetched unlisted
INSTALLER_CHOICES = ("recorded", "complete")
# What a Freezer that must not download (diff's) makes of a file the store lacks: as
# if the upstream were unreachable, so a variant held elsewhere still serves.
NOT_FETCHING = DownloadFailure("not in the cache (diff does not fetch)")
NOT_FETCHING.unreachable = True
ABSENT_BEFORE = DownloadFailure("the upstream answered 404 for it at an earlier freeze")
ABSENT_BEFORE.absent = True


@dataclass(frozen=True)
class Problem:
    upstream: str
    path: str
    reason: str
    # A file no recording fetched that completeness (DESIGN §4) could not add.
    completing: bool = False

    def __str__(self) -> str:
        return f"{self.upstream}/{self.path}: {self.reason}"

    @property
    def key(self) -> tuple[str, str]:
        return self.upstream, self.path


@dataclass
class Recorded:
    """The files a set of recordings received, by upstream."""

    files: dict[str, dict[str, set[tuple[str, int]]]]  # upstream -> path -> {(sha256, size)}

    @classmethod
    def load(cls, db: sqlite_utils.Database, recordings: list[str]) -> Recorded:
        files: dict[str, dict[str, set[tuple[str, int]]]] = defaultdict(lambda: defaultdict(set))
        for row in queries.recorded_files(db, recordings):
            files[row["upstream"]][row["path"]].add((row["sha256"], row["size"]))
        return cls(files)


class Freezer:
    """Plans a manifest from recordings: what goes in, and what could not be verified."""

    def __init__(
        self,
        config: Config,
        db: sqlite_utils.Database,
        store: FileStore,
        installer: str = "recorded",
        client: UpstreamClient | None = None,
    ) -> None:
        self.config, self.db, self.store = config, db, store
        self.installer = installer
        self.client = client  # None: complete from the store only (diff never downloads)
        self.entries: dict[tuple[str, str], Entry] = {}
        self.problems: list[Problem] = []
        self.warnings: list[str] = []  # named in freeze's output; never fail it
        self.unverified_probes: list[Problem] = []  # left out, or in with --allow-unverified
        self.fetch_failures: dict[tuple[str, str], str] = {}  # why _fetch found nothing
        self.releases: dict[str, dict] = {}
        # Verified Release texts by (upstream, sha256): the suite and its Release.gpg, if
        # any. `stable` and the like are symlinks on a mirror: identical bytes.
        self._verified_texts: dict[tuple[str, str], tuple[str, tuple[str, int] | None]] = {}
        # The recorded hosts' architectures (all upstreams: it is a property of the host).
        self.architectures: set[str] = set()
        self.installer_architectures: set[str] = set()
        self.udeb_recorded = False  # an arch-all udeb shows d-i ran, not on what host
        self.progress: Callable[[int], None] | None = None
        self.more_work: Callable[[int], None] | None = None

    @property
    def installer_used(self) -> bool:
        return bool(self.installer_architectures) or self.udeb_recorded

    def _installer_architectures(self, info: ReleaseInfo) -> set[str]:
        """The architectures whose installer index a fresh d-i needs: those its recorded
        files show; for arch-all udebs alone, the host's, else every one the Release lists."""
        if self.installer_architectures or not self.udeb_recorded:
            return self.installer_architectures
        return self.architectures or {a for a in info.architectures if a != "all"}

    def plan(
        self,
        recorded: Recorded,
        progress: Callable[[int], None] | None = None,
        more_work: Callable[[int], None] | None = None,
    ) -> None:
        """progress(n): n more files done; more_work(n): n more files to do (the recorded
        ones first, then each download completing finds)."""
        self.progress, self.more_work = progress, more_work
        if more_work:
            more_work(sum(len(files) for files in recorded.files.values()))
        for files in recorded.files.values():
            for path in files:
                self.udeb_recorded |= path.startswith("pool/") and path.endswith(".udeb")
                found = host_architecture(path)
                if found:
                    self.architectures.add(found[0])
                    if found[1]:
                        self.installer_architectures.add(found[0])
        for upstream_name, files in sorted(recorded.files.items()):
            upstream = self.config.upstreams.get(upstream_name)
            if upstream is None:
                for path in files:
                    self._problem(upstream_name, path, "upstream is no longer configured")
                continue
            self._plan_upstream(upstream, files)
            if progress:
                progress(len(files))

    # Each upstream: suites first (their Release files), then the pool files they list.
    def _plan_upstream(self, upstream: Upstream, files: dict[str, set[tuple[str, int]]]) -> None:
        single = {}
        for path, versions in files.items():
            if len(versions) > 1 and not self._is_release_file(path):
                shas = ", ".join(sorted(sha[:SHORT_ID] for sha, _ in versions))
                self._problem(upstream.name, path, f"recorded with different contents ({shas})")
            else:
                single[path] = next(iter(versions))
        by_suite: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
        pool: dict[str, tuple[str, int]] = {}
        for path, (sha256, size) in single.items():
            located = suite_of(path)
            if located:
                by_suite[located[0]][path] = (sha256, size)
            elif path.startswith("pool/"):
                pool[path] = (sha256, size)
            else:
                self._problem(upstream.name, path, "neither under dists/ nor under pool/")
        releases = {}
        probes = {s for s, paths in by_suite.items() if self._is_probe(s, paths)}
        for suite in sorted(set(by_suite) - probes):
            release = self._plan_suite(upstream, suite, by_suite[suite], files)
            if release is not None:
                releases[suite] = release
        for suite in sorted(probes):  # after the suites used, whose Releases they may equal
            self._plan_probe(upstream, suite, by_suite[suite], files)
        used, installer_suites = self._suites_in_use(releases, by_suite)
        self._complete_suites(upstream, used, installer_suites, files)
        listings = PackagesListings(self.store, upstream, releases, single)
        if pool:
            self._plan_pool(upstream, pool, releases, listings)
        if self.installer == "complete":
            chosen = {s: info for s, info in used.items() if s in installer_suites}
            self._complete_installer(upstream, chosen, listings, files)

    @staticmethod
    def _suites_in_use(
        releases: dict[str, ReleaseInfo], by_suite: dict[str, dict[str, tuple[str, int]]]
    ) -> tuple[dict[str, ReleaseInfo], set[str]]:
        """The suites an install used, and those whose debian-installer index it used."""
        # A suite of which only `Release` was recorded is a probe (d-i's mirror check):
        # nothing of it is installed, so nothing more of it is needed.
        used = {s: releases[s] for s in sorted(releases) if not Freezer._is_probe(s, by_suite[s])}
        # d-i reads the debian-installer index of one suite: the one whose index or images
        # the recordings hold (any used suite when they hold only udebs).
        installer_suites = {
            s
            for s in used
            if any("/debian-installer/" in p or "/installer-" in p for p in by_suite[s])
        } or set(used)
        return used, installer_suites

    @staticmethod
    def _is_probe(suite: str, recorded: Iterable[str]) -> bool:
        """Only `Release` recorded: debian-installer's mirror check, not a suite in use."""
        return set(recorded) == {f"dists/{suite}/Release"}

    @staticmethod
    def _is_release_file(path: str) -> bool:
        located = suite_of(path)
        return located is not None and located[1] in RELEASE_NAMES

    def _plan_probe(
        self,
        upstream: Upstream,
        suite: str,
        recorded: dict[str, tuple[str, int]],
        all_recorded: dict[str, set[tuple[str, int]]],
    ) -> None:
        """A Release of a suite the install used nothing else of: debian-installer's mirror
        check asks for every suite name it knows. Verified, it goes in, so the pin answers
        as the mirror did; unverifiable, it is named and left out (d-i skips a 404), or
        goes in marked unverified with --allow-unverified (plan_manifest decides)."""
        path = f"dists/{suite}/Release"
        if len(all_recorded[path]) > 1:
            self.warnings.append(
                f"{upstream.name}/{path}: a suite probe recorded in two states; left out"
            )
            return
        before = len(self.problems)
        self._plan_suite(upstream, suite, recorded, all_recorded)
        if len(self.problems) > before and self._probe_verified_by_inrelease(
            upstream, suite, recorded[path]
        ):
            del self.problems[before:]
        self.unverified_probes += self.problems[before:]
        del self.problems[before:]

    def _probe_verified_by_inrelease(
        self, upstream: Upstream, suite: str, release: tuple[str, int]
    ) -> bool:
        """A mirror's Release.gpg may lag its Release (BADSIG) while its InRelease, whose
        signed text is the same Release byte for byte, verifies: then the probe's Release
        goes in, with that InRelease (cached, else fetched now like a Release.gpg)."""
        path = f"dists/{suite}/InRelease"
        inrelease = self._cached(upstream, path) or self._fetch(upstream, path, None)
        if inrelease is None or upstream.keyring is None:
            return False
        try:
            text = verify_signature(upstream.keyring, self._blob(inrelease[0]))
        except (SignatureError, FileNotFoundError):
            return False
        if hashlib.sha256(text).hexdigest() != release[0]:
            return False
        self.add(Entry(upstream.name, f"dists/{suite}/Release", *release))
        self.add(Entry(upstream.name, path, *inrelease))
        self.releases[f"{upstream.name} {suite}"] = release_summary(
            parse_release(text), inrelease[0]
        )
        return True

    def _plan_suite(
        self,
        upstream: Upstream,
        suite: str,
        recorded: dict[str, tuple[str, int]],
        all_recorded: dict[str, set[tuple[str, int]]],
    ) -> ReleaseInfo | None:
        prefix = f"dists/{suite}/"
        self._refuse_two_states(upstream, suite, all_recorded)
        release = self._verified_release(upstream, suite, recorded)
        if isinstance(release, str):
            named = {p.path for p in self.problems if p.upstream == upstream.name}
            for path in recorded:
                if path not in named:
                    self._problem(upstream.name, path, f"no verified Release of {suite}: {release}")
            return None
        info, release_files, sha256 = release
        for path, (digest, size) in release_files.items():
            self.add(Entry(upstream.name, path, digest, size))
        self.releases[f"{upstream.name} {suite}"] = release_summary(info, sha256)
        named = {p.path for p in self.problems if p.upstream == upstream.name}
        for path, (digest, size) in recorded.items():
            if path in release_files:
                continue
            if self._is_release_file(path):  # e.g. a Release.gpg with no Release beside it
                if path not in named:
                    self._problem(upstream.name, path, f"not part of a verified Release of {suite}")
                continue
            relative = path[len(prefix) :]
            self._plan_index(upstream, suite, info, path, relative, digest, size)
        return info

    def _refuse_two_states(
        self, upstream: Upstream, suite: str, all_recorded: dict[str, set[tuple[str, int]]]
    ) -> None:
        for name in ("InRelease", "Release"):
            states = all_recorded.get(f"dists/{suite}/{name}", set())
            if len(states) > 1:
                described = " and ".join(
                    f"{self._release_date(sha)} (sha256 {sha[:SHORT_ID]})" for sha, _ in states
                )
                raise FreezeRefused(
                    f"the recordings saw two states of {upstream.name} {suite}: {described}; "
                    "a point release happened while they ran",
                    "record the install again and freeze the new recording alone",
                )

    def _release_date(self, sha256: str) -> str:
        try:
            return parse_release(self._blob(sha256).read_bytes()).date or "no Date"
        except (OSError, ValueError):
            return "unreadable"

    def _verified_release(
        self, upstream: Upstream, suite: str, recorded: dict[str, tuple[str, int]]
    ) -> tuple[ReleaseInfo, dict[str, tuple[str, int]], str] | str:
        """The verified Release of a suite, the files it came from, and its sha256; or why
        there is none (the recorded Release files that failed are named as problems)."""
        prefix = f"dists/{suite}/"
        forms = {name: recorded.get(prefix + name) for name in RELEASE_NAMES}
        # apt had it already (304) or fetched it outside the recording: use the cached one.
        if not forms["InRelease"] and not forms["Release"]:
            forms["InRelease"] = self._cached(upstream, prefix + "InRelease")
            forms["Release"] = self._cached(upstream, prefix + "Release")
        if forms["Release"] and not forms["Release.gpg"]:
            forms["Release.gpg"] = self._cached(upstream, prefix + "Release.gpg")
        if not forms["InRelease"] and not forms["Release"]:
            return "no InRelease or Release recorded or cached"
        keyring = upstream.keyring
        if keyring is None:
            return f"upstream {upstream.name} has no keyring to check its signature"
        # Every form present is verified (d-i and debootstrap fetch Release + Release.gpg,
        # apt InRelease): all go into the manifest, and they must say the same.
        verified: dict[str, ReleaseInfo] = {}
        files: dict[str, tuple[str, int]] = {}
        why = "no signature verifies it"
        for name, detached in (("InRelease", None), ("Release", "Release.gpg")):
            signed = forms[name]
            if signed is None:
                continue
            if detached and forms[detached] is None:
                twin = self._verified_texts.get((upstream.name, signed[0]))
                if twin is not None and twin[1] is None:  # the text of a verified InRelease
                    verified[name] = parse_release(self._blob(signed[0]).read_bytes())
                    files[prefix + name] = signed
                    continue
                found = twin[1] if twin else self._fetch_signature(upstream, prefix + detached)
                if isinstance(found, str):
                    why = f"no {detached} recorded or cached, nor at the upstream ({found})"
                    if prefix + name in recorded and "InRelease" not in verified:
                        self._problem(upstream.name, prefix + name, why)
                    elif prefix + name in recorded:
                        self._problem(
                            upstream.name, prefix + name, f"differs from InRelease; {why}"
                        )
                    continue
                forms[detached] = found
            try:
                blob = self._blob(signed[0])
                signature = self._blob(forms[detached][0]) if detached else None
                text = verify_signature(keyring, signature or blob, blob if detached else None)
            except SignatureError as exc:
                why = f"{name}: bad signature ({exc})"
                if prefix + name in recorded:
                    self._problem(upstream.name, prefix + name, f"bad signature ({exc})")
                return why
            except FileNotFoundError:
                if prefix + name in recorded:
                    self._problem(upstream.name, prefix + name, "blob missing from store")
                return f"{name}: blob missing from store"
            verified[name] = parse_release(text)
            files[prefix + name] = signed
            if detached:
                files[prefix + detached] = forms[detached]
            signature_entry = forms[detached] if detached else None
            key = (upstream.name, hashlib.sha256(text).hexdigest())
            if self._verified_texts.get(key, (suite, None))[1] is None:
                self._verified_texts[key] = (suite, signature_entry)
        if not verified:
            return why
        states = {(info.date, tuple(sorted(info.entries.items()))) for info in verified.values()}
        if len(states) > 1:
            raise FreezeRefused(
                f"the recordings saw two states of {upstream.name} {suite}: InRelease dated "
                f"{verified['InRelease'].date} and Release dated {verified['Release'].date}; "
                "a point release happened while they ran",
                "record the install again and freeze the new recording alone",
            )
        main = forms["InRelease"] or forms["Release"]
        return next(iter(verified.values())), files, main[0]

    def _fetch_signature(self, upstream: Upstream, path: str) -> tuple[str, int] | str:
        """A detached signature fetched from the upstream now (gpgv decides if it fits),
        or why it could not be."""
        found = self._fetch(upstream, path, None)
        return found or self.fetch_failures.get((upstream.name, path), "not fetched")

    def _cached(self, upstream: Upstream, path: str) -> tuple[str, int] | None:
        sha256 = queries.cached_sha256(self.db, upstream.name, path)
        if sha256 is None or not self.store.has(sha256):
            return None
        return sha256, self.store.local_path(sha256).stat().st_size

    def _plan_index(
        self,
        upstream: Upstream,
        suite: str,
        info: ReleaseInfo,
        path: str,
        relative: str,
        sha256: str,
        size: int,
    ) -> None:
        digest = by_hash_sha256(path)
        if digest is not None:
            directory = relative.split("/by-hash/")[0]
            canonical = info.by_sha256(digest, directory)
            if canonical is None or digest != sha256:
                self._problem(upstream.name, path, "by-hash file not listed in the Release file")
                return
            self.add(Entry(upstream.name, path, sha256, size))
            self.add(Entry(upstream.name, f"dists/{suite}/{canonical.name}", sha256, size))
            return
        listed = info.entries.get(relative)
        images = installer_images_dir(path)
        if images is not None and listed is None:  # SHA256SUMS vouches for the images
            self._plan_installer_file(upstream, suite, info, images, path, sha256, size)
            return
        if listed is None:
            reason = "not listed in the Release file"
            if "/Packages.diff/" in path:
                reason += " (a pdiff: record with -o Acquire::PDiffs=false)"
            self._problem(upstream.name, path, reason)
        elif (listed.sha256, listed.size) != (sha256, size):
            self._problem(upstream.name, path, "sha256 or size does not match the Release file")
        else:
            self.add(Entry(upstream.name, path, sha256, size))

    def _plan_installer_file(
        self,
        upstream: Upstream,
        suite: str,
        info: ReleaseInfo,
        images: str,
        path: str,
        sha256: str,
        size: int,
    ) -> None:
        sums_path = f"{images}/SHA256SUMS"
        listed = info.entries.get(sums_path[len(f"dists/{suite}/") :])
        if listed is None:
            self._problem(upstream.name, path, f"{sums_path} is not in the Release file")
            return
        # A lab's netboot script may fetch only linux and initrd.gz: the checksums that
        # vouch for them come from the upstream, checked against the frozen Release.
        if not self.store.has(listed.sha256) and not self._fetch(upstream, sums_path, listed):
            self._problem(upstream.name, path, f"{sums_path} is neither stored nor fetchable")
            return
        self.add(Entry(upstream.name, sums_path, listed.sha256, listed.size))
        if path == sums_path:
            return
        sums = parse_checksums_file(self._blob(listed.sha256).read_text(errors="replace"))
        if sums.get(path[len(images) + 1 :]) != sha256:
            self._problem(upstream.name, path, f"does not match {sums_path}")
        else:
            self.add(Entry(upstream.name, path, sha256, size))

    # Pool files: each must be listed, with the same sha256 and size, in a frozen Packages.
    def _plan_pool(
        self,
        upstream: Upstream,
        pool: dict[str, tuple[str, int]],
        releases: dict[str, ReleaseInfo],
        listings: PackagesListings,
    ) -> None:
        if not releases:
            for path in pool:
                self._problem(
                    upstream.name, path, "no Release of this upstream was recorded or cached"
                )
            return
        for path, (sha256, size) in sorted(pool.items()):
            listing = listings.find(path)
            if listing is None:
                suites = ", ".join(sorted(releases))
                kind = "debian-installer Packages" if path.endswith(".udeb") else "Packages"
                self._problem(upstream.name, path, f"not listed in the {kind} of {suites}")
            elif (listing.sha256, listing.size) != (sha256, size):
                self._problem(
                    upstream.name, path, f"sha256 or size does not match {listing.index_path}"
                )
            else:
                self.add(listing.entry(upstream.name))
                for entry in listings.use(listing):
                    self.add(entry)

    # Completeness (DESIGN.md §4): what any fresh client needs, not only what was recorded.
    def _complete_suites(
        self,
        upstream: Upstream,
        used: dict[str, ReleaseInfo],
        installer_suites: set[str],
        recorded: dict[str, set[tuple[str, int]]],
    ) -> None:
        """Add every index a fresh apt, debootstrap or d-i may fetch to update each used suite.

        Each compression the Release lists, under its name and (with Acquire-By-Hash) its
        by-hash name; from the store, else fetched now. A compression the upstream does
        not have (404) is left out; any other failure is a problem.
        A recorded path is planned as recorded: completing it would hide what went wrong.
        """
        wanted: list[tuple[str, str, list[ReleaseEntry]]] = []
        for suite, info in used.items():
            architectures = self.architectures or {a for a in info.architectures if a != "all"}
            installer = self._installer_architectures(info) if suite in installer_suites else set()
            indices = fresh_update_indices(info, architectures, installer)
            wanted += [(suite, index, indices[index]) for index in sorted(indices)]
        # Identical indices (an empty Packages in several components) are one download
        # that may come from any of their names.
        downloads: dict[str, tuple[list[str], str, int]] = {}
        names: dict[str, set[str]] = defaultdict(set)  # sha256 -> its plain names
        for suite, _, variants in wanted:
            for entry in variants:
                if not self.store.has(entry.sha256):
                    paths = downloads.setdefault(entry.sha256, ([], entry.sha256, entry.size))[0]
                    paths += self._index_paths(suite, used[suite], entry)
                    names[entry.sha256].add(f"dists/{suite}/{entry.name}")
        failures = self._fetch_absent_once(upstream, downloads, names)
        arrived: set[str] = set()
        answered: set[str] = set()  # suites of which some index got an HTTP answer
        for suite, index, variants in wanted:
            held = [entry for entry in variants if entry.sha256 not in failures]
            for entry in held:
                arrived.add(suite)
                for path in self._index_paths(suite, used[suite], entry):
                    if path not in recorded:
                        self.add(Entry(upstream.name, path, entry.sha256, entry.size))
            failed = [(entry, failures[entry.sha256]) for entry in variants if entry not in held]
            if any(not failure.unreachable for _, failure in failed):
                answered.add(suite)
            self._variants_not_completed(upstream, f"dists/{suite}/{index}", held, failed)
        # An index the upstream has in no compression (a partial mirror without contrib)
        # no client could fetch either; but a suite of which it has none is a wrong URL.
        for suite in sorted(({suite for suite, _, _ in wanted} - arrived) & answered):
            self._problem(
                upstream.name,
                f"dists/{suite}/",
                "a fresh apt-get update needs its indices, but the upstream answered 404 for "
                f"every one its Release lists (check [upstreams.{upstream.name}] urls)",
                completing=True,
            )

    def _fetch_absent_once(
        self,
        upstream: Upstream,
        downloads: dict[str, tuple[list[str], str, int]],
        names: dict[str, set[str]],
    ) -> dict[str, DownloadFailure]:
        """_fetch_all, but what the upstream answered 404 for at an earlier freeze (the
        same content under every name) is not asked for again, and new 404s are kept."""
        known = queries.absent_files(self.db, upstream.name)
        remembered = {
            sha256 for sha256 in downloads if all((p, sha256) in known for p in names[sha256])
        }
        wanted = [item for sha256, item in downloads.items() if sha256 not in remembered]
        failures = self._fetch_all(upstream, wanted)
        if self.client is not None:
            absent = [
                (path, sha256)
                for sha256, failure in failures.items()
                if failure.absent
                for path in names[sha256]
            ]
            queries.remember_absent(self.db, upstream.name, absent)
        return failures | dict.fromkeys(remembered, ABSENT_BEFORE)

    def _variants_not_completed(
        self,
        upstream: Upstream,
        index: str,
        held: list[ReleaseEntry],
        failed: list[tuple[ReleaseEntry, DownloadFailure]],
    ) -> None:
        """What to make of the variants of an index that neither the store nor the upstream
        gave. Absent (404) ones no client could have had: left out. With the upstream
        unreachable, one variant held is enough: apt falls back from a 404 on a by-hash
        name to the plain one and from one compression to the next (tried: decisions.md),
        so that is a warning. Anything else could hide a file: a problem."""
        missing = [(entry, failure) for entry, failure in failed if not failure.absent]
        if not missing:
            return
        if held and all(failure.unreachable for _, failure in missing):
            names = ", ".join(entry.name.rpartition("/")[2] for entry, _ in missing)
            kept = ", ".join(entry.name.rpartition("/")[2] for entry in held)
            first = str(missing[0][1]).split("; ")[0]
            self.warnings.append(
                f"{upstream.name}/{index}: {names} not completed, the upstream is unreachable "
                f"({first}); safe, as apt falls back to the {kept} the manifest holds"
            )
            return
        for entry, failure in missing:
            why = "the upstream is unreachable" if failure.unreachable else "fetching it failed"
            self._problem(
                upstream.name,
                f"{index.rpartition('/')[0]}/{entry.name.rpartition('/')[2]}",
                f"a fresh apt-get update needs it; not cached, and {why} ({failure})",
                completing=True,
            )

    @staticmethod
    def _index_paths(suite: str, info: ReleaseInfo, entry: ReleaseEntry) -> list[str]:
        """The names apt may ask for: by-hash first (content-addressed, outlives a point
        release on the mirror), then the plain name."""
        plain = f"dists/{suite}/{entry.name}"
        return [by_hash_path(plain, entry.sha256), plain] if info.by_hash else [plain]

    def _complete_installer(
        self,
        upstream: Upstream,
        installer_suites: dict[str, ReleaseInfo],
        listings: PackagesListings,
        recorded: dict[str, set[tuple[str, int]]],
    ) -> None:
        """--installer complete: every udeb of the frozen debian-installer Packages of each
        architecture the recordings' installers used, so other hardware installs too."""
        udebs = []
        for suite, info in installer_suites.items():
            indices = fresh_update_indices(info, set(), self._installer_architectures(info))
            for index in sorted(i for i in indices if "/debian-installer/" in i):
                directory = index.rpartition("/")[0]
                udebs += [
                    u for u in listings.listed_in(suite, directory) if u.pool_path not in recorded
                ]
        missing: dict[str, tuple[list[str], str, int]] = {}
        for udeb in udebs:
            if not self.store.has(udeb.sha256):
                missing.setdefault(udeb.sha256, ([], udeb.sha256, udeb.size))[0].append(
                    udeb.pool_path
                )
        failures = self._fetch_all(upstream, list(missing.values()))
        for udeb in udebs:
            failure = failures.get(udeb.sha256)
            if failure is None:
                self.add(udeb.entry(upstream.name))
                for entry in listings.use(udeb):
                    self.add(entry)
            else:
                self._problem(
                    upstream.name,
                    udeb.pool_path,
                    f"{INSTALLER_COMPLETE_NEEDS} ({udeb.index_path} lists it); not cached, "
                    f"and fetching it failed ({failure})",
                    completing=True,
                )

    def _fetch(
        self, upstream: Upstream, path: str, listed: ReleaseEntry | None
    ) -> tuple[str, int] | None:
        """Fetch a file from the upstream into the store: (sha256, size), or None (why is
        kept in `fetch_failures`).

        `listed`: the verified Release's entry, which the body must match; None for a
        file no index lists (a detached signature, checked by gpgv afterwards).
        """
        if self.client is None:
            self.fetch_failures[(upstream.name, path)] = NOT_FETCHING
            return None
        if listed is not None:
            failure = self._fetch_all(upstream, [([path], listed.sha256, listed.size)]).get(
                listed.sha256
            )
            if failure is None:
                return listed.sha256, listed.size
            self.fetch_failures[(upstream.name, path)] = failure
            return None
        self.store.create_directories()
        outcome = self.client.wait_for(
            self.client.download_unlisted(upstream, path, self.store, MAX_UNLISTED_SIZE)
        )
        if isinstance(outcome, str):
            self.fetch_failures[(upstream.name, path)] = outcome
            return None
        return outcome

    def _fetch_all(
        self, upstream: Upstream, wanted: list[tuple[list[str], str, int]]
    ) -> dict[str, DownloadFailure]:
        """Fetch (paths to try, sha256, size) into the store, a few at a time; failures by sha256.

        Only the hash and size decide, so any of the paths (or base URLs) may answer.
        """
        if not wanted:
            return {}
        client = self.client
        if client is None:
            return {sha256: NOT_FETCHING for _, sha256, _ in wanted}

        async def fetch(paths: list[str], sha256: str, size: int) -> DownloadFailure | None:
            failure = await client.download_blob(upstream, paths, self.store, sha256, size)
            if self.progress:
                self.progress(1)
            return failure

        if self.more_work:
            self.more_work(len(wanted))
        self.store.create_directories()
        outcomes = client.wait_for(client.bounded(fetch(*item) for item in wanted))
        return {
            sha256: failure
            for (_, sha256, _), failure in zip(wanted, outcomes, strict=True)
            if failure is not None
        }

    def add(self, entry: Entry) -> None:
        self.entries[entry.key] = entry

    def _problem(self, upstream: str, path: str, reason: str, completing: bool = False) -> None:
        self.problems.append(Problem(upstream, path, reason, completing))

    def _blob(self, sha256: str) -> Path:
        blob = self.store.local_path(sha256)
        if not blob.is_file():
            raise FileNotFoundError(blob)
        return blob


@dataclass(frozen=True)
class Listing:
    """A pool file as a frozen Packages index lists it."""

    sha256: str
    size: int
    package: str
    version: str
    architecture: str
    suite: str
    index_path: str
    index: Entry
    pool_path: str

    def entry(self, upstream: str) -> Entry:
        return Entry(
            upstream,
            self.pool_path,
            self.sha256,
            self.size,
            self.package,
            self.version,
            self.architecture,
            self.suite,
        )


class PackagesListings:
    """Pool Filename → stanza, parsed lazily from the Packages indices of the frozen suites."""

    def __init__(
        self,
        store: FileStore,
        upstream: Upstream,
        releases: dict[str, ReleaseInfo],
        recorded: dict[str, tuple[str, int]],
    ) -> None:
        self.store, self.upstream, self.releases, self.recorded = (
            store,
            upstream,
            releases,
            recorded,
        )
        self._parsed: set[tuple[str, str]] = set()
        self._listings: dict[str, Listing] = {}
        self._used_directories: set[str] = set()
        self._directories: dict[str, list[str]] = {}
        self._listed_in: dict[tuple[str, str], list[Listing]] = {}

    def find(self, pool_path: str) -> Listing | None:
        for suite, directory in self._directories_for(pool_path):
            if pool_path in self._listings:
                break
            self._parse(suite, directory)
        return self._listings.get(pool_path)

    def listed_in(self, suite: str, directory: str) -> list[Listing]:
        """Every pool file the frozen Packages of `directory` (e.g. main/binary-amd64) lists."""
        self._parse(suite, directory)
        return self._listed_in.get((suite, directory), [])

    def use(self, listing: Listing) -> list[Entry]:
        """The entries a pool file brings in: the index that authenticated it, and that
        index's recorded variants; none when an earlier pool file brought them."""
        directory = listing.index_path.rpartition("/")[0]
        if directory in self._used_directories:
            return []  # thousands of pool files share one index: include it once
        self._used_directories.add(directory)
        entries = [listing.index]
        info = self.releases[listing.suite]
        for path, (sha256, size) in self.recorded.items():
            if path.startswith(directory + "/Packages"):
                relative = path[len(f"dists/{listing.suite}/") :]
                if info.entries.get(relative) and info.entries[relative].sha256 == sha256:
                    entries.append(Entry(self.upstream.name, path, sha256, size))
        return entries

    def _directories_for(self, pool_path: str) -> list[tuple[str, str]]:
        # The component is not taken from the pool path: the security archive files
        # main's packages under pool/updates/main/.
        components = set(pool_path.split("/")[1:-1])
        name = pool_path.rpartition("/")[2]
        match = re.search(r"_([a-z0-9-]+)\.(u?deb)\Z", name)
        architecture, kind = (match.group(1), match.group(2)) if match else ("", "")
        candidates = []
        for suite in sorted(self.releases):
            for directory in self._index_directories(suite):
                parts = directory.split("/")
                if parts[0] not in components or not parts[-1].startswith("binary-"):
                    continue
                if (kind == "udeb") != ("debian-installer" in parts):
                    continue
                arch = parts[-1].removeprefix("binary-")
                if architecture in (arch, "") or architecture == "all":
                    candidates.append((suite, directory))
        return candidates

    def _index_directories(self, suite: str) -> list[str]:
        """The directories a suite's Release lists files in (computed once per suite)."""
        if suite not in self._directories:
            entries = self.releases[suite].entries.values()
            self._directories[suite] = sorted({e.name.rpartition("/")[0] for e in entries})
        return self._directories[suite]

    def _parse(self, suite: str, directory: str) -> None:
        if (suite, directory) in self._parsed:
            return
        self._parsed.add((suite, directory))
        info = self.releases[suite]
        index = self._available_index(suite, info, directory)
        if index is None:
            return
        blob = self.store.local_path(index.sha256)
        listed = self._listed_in.setdefault((suite, directory), [])
        for stanza in packages_stanzas(blob):
            filename = stanza.get("Filename")
            if not filename or not stanza.get("SHA256"):
                continue
            listing = Listing(
                stanza["SHA256"].lower(),
                int(stanza.get("Size", "-1")),
                stanza.get("Package", ""),
                stanza.get("Version", ""),
                stanza.get("Architecture", ""),
                suite,
                index.path,
                index,
                filename,
            )
            listed.append(listing)
            self._listings.setdefault(filename, listing)

    def _available_index(self, suite: str, info: ReleaseInfo, directory: str) -> Entry | None:
        """A Packages variant of `directory` that the Release lists and the store holds."""
        variants = [
            entry
            for name, entry in info.entries.items()
            if name.rpartition("/")[0] == directory
            and name.rpartition("/")[2].startswith("Packages")
        ]
        recorded_first = sorted(
            variants, key=lambda e: (f"dists/{suite}/{e.name}" not in self.recorded, e.name)
        )
        for entry in recorded_first:
            if self.store.has(entry.sha256):
                return Entry(
                    self.upstream.name, f"dists/{suite}/{entry.name}", entry.sha256, entry.size
                )
        return None


def release_summary(info: ReleaseInfo, sha256: str) -> dict:
    """What a manifest keeps of a suite's verified Release (`Manifest.releases`): the
    pinned routes list its suites and warn when it has expired. `sha256`: the InRelease's,
    else the Release's."""
    return {"date": info.date, "sha256": sha256, "valid_until": info.valid_until}


def plan_manifest(
    config: Config,
    db: sqlite_utils.Database,
    store: FileStore,
    recordings: list[str],
    *,
    label: str | None = None,
    allow_unverified: bool = False,
    strict: bool = False,
    installer: str = "recorded",
    client: UpstreamClient | None = None,
    progress: Callable[[int], None] | None = None,
    more_work: Callable[[int], None] | None = None,
) -> Manifest:
    """The manifest the recordings would freeze into; raises if a file can't be verified.

    strict: refuse recordings with failed fetches that a good install does not have.
    installer "complete": also every udeb the frozen debian-installer Packages list.
    client None: complete from the store only, never downloading (diff's view).
    """
    if installer not in INSTALLER_CHOICES:
        raise InvalidOption(
            f"installer must be recorded or complete, not {installer!r}",
            "use recorded (the default) or complete (every udeb of the installer's index)",
        )
    recordings = sorted(set(recordings))
    check_recordings_exist(db, recordings)
    failures = [f for f in failed_fetches(db, recordings) if not f.expected]
    if strict and failures:
        raise FailedFetches(failures)
    freezer = Freezer(config, db, store, installer, client)
    recorded = Recorded.load(db, recordings)
    if not recorded.files:
        raise FreezeRefused(
            f"{recordings_named(recordings)} received no file whole, so there is nothing to freeze",
            "record the install again; `debcache recordings show NAME` lists its failed fetches",
        )
    freezer.plan(recorded, progress, more_work)
    if installer == "complete" and not freezer.installer_used:
        raise FreezeRefused(
            f"{recordings_named(recordings)} used no debian-installer (no udeb, installer "
            "image or debian-installer index), so --installer complete has nothing to complete",
            "freeze it together with a recorded d-i install, or without --installer complete",
        )
    unverified = _unverified(freezer, recorded)
    if unverified and not allow_unverified:
        raise UnverifiableFiles(unverified)
    # `unverified` lists what the manifest holds unverified; what completeness could
    # not add is not in it, so it is a warning.
    left_out = [f"{p}; not in the manifest" for p in unverified if p.completing]
    unverified = [p for p in unverified if not p.completing]
    probes_left_out = [] if allow_unverified else freezer.unverified_probes
    if allow_unverified:  # the flag's promise: every recorded file in, marked unverified
        unverified += freezer.unverified_probes
    for problem in unverified:
        versions = recorded.files.get(problem.upstream, {}).get(problem.path, set())
        if len(versions) == 1 and problem.key not in freezer.entries:
            sha256, size = next(iter(versions))
            freezer.add(Entry(problem.upstream, problem.path, sha256, size))
    entries = sorted(freezer.entries.values(), key=lambda e: e.key)
    missing = [e for e in entries if not store.has(e.sha256)]
    if missing:
        problems = [Problem(e.upstream, e.path, "blob missing from store") for e in missing]
        raise UnverifiableFiles(problems)
    warnings = [f"{f}: a failed fetch, not in the manifest" for f in failures]
    warnings += [f"{p}; a suite probe, left out" for p in probes_left_out]
    completed = [
        f"{e.upstream}/{e.path}"
        for e in entries
        if e.path not in recorded.files.get(e.upstream, {})
    ]
    return Manifest(
        manifest_id(entries),
        label,
        time.time(),
        recordings,
        entries,
        freezer.releases,
        [str(p) for p in unverified],
        completed,
        warnings + freezer.warnings + left_out,
    )


def _unverified(freezer: Freezer, recorded: Recorded) -> list[Problem]:
    """The problems that keep a recorded file out, one per file.

    A problem is moot only when the manifest holds exactly what was recorded at that
    path, verified another way (a by-hash name vouches for its canonical index).
    """
    unverified: dict[tuple[str, str], Problem] = {}
    for problem in freezer.problems:
        entry = freezer.entries.get(problem.key)
        versions = recorded.files.get(problem.upstream, {}).get(problem.path, set())
        if entry is not None and (entry.sha256, entry.size) in versions and len(versions) == 1:
            continue
        unverified.setdefault(problem.key, problem)
    return list(unverified.values())


def freeze(
    config: Config,
    db: sqlite_utils.Database,
    store: FileStore,
    recordings: list[str],
    *,
    client: UpstreamClient | None = None,
    promote: str | None = None,
    **options: Any,
) -> tuple[Manifest, bool]:
    """Verify the recordings' files and store them as a manifest; (manifest, newly created).

    Freezing a set frozen before gives that manifest, relabelled when `label` is given.
    `client` downloads what completing needs (None: the store only); `promote` names a
    branch to point at the manifest once it is stored. The CLI and the API both call this.
    """
    if promote is not None:
        branches.check_branch_name(promote)  # before the work, not after it
    planned = plan_manifest(config, db, store, recordings, client=client, **options)
    created = save_manifest(db, planned)
    manifest = planned
    if not created:
        if planned.label is not None:
            queries.set_manifest_label(db, planned.id, planned.label)
        manifest = load_manifest(db, planned.id)
        manifest.warnings = planned.warnings
    if promote is not None:
        branches.promote(db, store, promote, manifest.id, note=f"freeze {' '.join(recordings)}")
    return manifest, created
