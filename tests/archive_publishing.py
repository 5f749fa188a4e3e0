"""Publishing signed suites: `Archive` (Release, Packages, by-hash, installer directories),
the ready-made test archives and point releases."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from archive_installer import InstallerSpec, default_installer
from archive_keys import SigningKey, make_signing_key
from archive_packages import (
    PackageSpec,
    build_package,
    control_of,
    default_packages,
    security_packages,
    updates_packages,
)
from debian import deb822
from debian.debian_support import Version

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_date(moment: datetime) -> str:
    """Format like Debian's Release files: ``Sat, 10 Jun 2023 08:53:51 UTC``."""
    moment = moment.astimezone(UTC)
    # Spelled out rather than strftime("%a %b") so the locale cannot change it.
    weekday, month = _WEEKDAYS[moment.weekday()], _MONTHS[moment.month - 1]
    return f"{weekday}, {moment.day:02d} {month} {moment.year} {moment:%H:%M:%S} UTC"


@dataclass
class _Suite:
    """What a suite was last published with."""

    packages: list[PackageSpec]  # as the caller gave them
    published: list[PackageSpec]  # what the indices list (plus the installer's kernel udeb)
    installer: InstallerSpec | None
    date: datetime
    options: dict[str, Any]  # publish_suite's keyword arguments but date and installer


@dataclass
class _IndexFile:
    path: str  # relative to dists/<suite>
    content: bytes
    on_disk: bool


@dataclass
class _Published:
    spec: PackageSpec
    pool_path: str
    stanza: deb822.Packages = field(repr=False)


class Archive:
    """A Debian archive under root/<base> (default "debian"), served by FakeMirror at /<base>/."""

    def __init__(self, root: Path, key: SigningKey, base: str = "debian") -> None:
        self.root = Path(root).absolute()
        self.base = base
        self.key = key
        self.path("").mkdir(parents=True, exist_ok=True)
        # suite -> name -> version -> pool path, for every package ever published.
        self._published: dict[str, dict[str, dict[str, str]]] = {}
        self._suites: dict[str, _Suite] = {}

    def path(self, archive_path: str) -> Path:
        """The local file behind an archive-relative path."""
        return self.root / self.base / archive_path

    def read(self, archive_path: str) -> bytes:
        """The bytes of an archive-relative path."""
        return self.path(archive_path).read_bytes()

    def sha256(self, archive_path: str) -> str:
        """Hex SHA256 of an archive-relative path."""
        return hashlib.sha256(self.read(archive_path)).hexdigest()

    def files(self) -> list[str]:
        """Every archive-relative file path currently on disk, sorted."""
        top = self.path("")
        return sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file())

    def pool_path(self, name: str, version: str | None = None, *, suite: str | None = None) -> str:
        """Archive-relative ``Filename`` of a published package (newest, in any or one suite)."""
        versions = {
            published_version: path
            for suite_name, packages in self._published.items()
            if suite is None or suite_name == suite
            for published_version, path in packages.get(name, {}).items()
        }
        if not versions:
            raise KeyError(f"package {name!r} was never published in {suite or 'any suite'}")
        if version is None:
            version = max(versions, key=Version)
        if version not in versions:
            raise KeyError(f"{name} {version} was never published; have {sorted(versions)}")
        return versions[version]

    def remove_pool_file(self, rel_path: str) -> None:
        """Delete a pool file, as real mirrors do with superseded packages."""
        self.path(rel_path).unlink()

    def publish_suite(
        self,
        suite: str,
        packages: Sequence[PackageSpec],
        *,
        codename: str | None = None,
        components: Sequence[str] = ("main",),
        architectures: Sequence[str] = ("amd64", "all"),
        valid_until: datetime | None = None,
        date: datetime | None = None,
        by_hash: bool = True,
        compressions: Sequence[str] = ("", ".gz", ".xz"),
        signed_forms: Sequence[str] = ("InRelease", "Release.gpg"),
        installer: InstallerSpec | None = None,
        signing_key: SigningKey | None = None,
        origin: str = "Debian",
        label: str = "Debian",
        translations: bool = False,
    ) -> None:
        """Write pool files, indices, Release and signatures for suite (replacing dists/<suite>).

        installer: write that debian-installer build and point ``current`` at it; None
        keeps the suite's installer directories (and its kernel udeb), if any. Its
        kernel udeb is added to packages unless they have a package of that name.
        signing_key: sign with this key instead of self.key.
        valid_until: the Release's ``Valid-Until`` (none by default); one in the past
        makes apt refuse the suite ("is expired") unless Acquire::Check-Valid-Until=false.
        origin, label: the Release's ``Origin`` and ``Label`` (Debian-Security for the
        security archive).
        translations: also ``<component>/i18n/Translation-en`` as Debian has it: listed in
        Release, only ``.bz2`` on disk (with by-hash); apt fetches it unless
        ``Acquire::Languages`` is ``none``.
        """
        unknown = set(signed_forms) - {"InRelease", "Release.gpg"}
        if unknown:
            raise ValueError(f"unknown signed forms {sorted(unknown)}")
        key = signing_key or self.key
        previous = self._suites.get(suite)
        dists = self.path(f"dists/{suite}")
        if installer is not None:
            if installer.component not in components:
                raise ValueError(
                    f"installer component {installer.component!r} is not in {list(components)}"
                )
            self._check_installer(dists, installer)
        current_installer = installer or (previous.installer if previous else None)
        specs = list(packages)
        if current_installer is not None:
            udeb = current_installer.kernel_udeb()
            if all(spec.name != udeb.name for spec in specs):
                specs.append(udeb)
        published = [self._publish_package(suite, spec, components) for spec in specs]
        index_files = self._index_files(published, components, architectures, compressions)
        if translations:
            index_files += _translations(published, components)
        old_mtime = self._clear_suite(dists)
        # Index files must look newer than the ones they replace, or a client
        # sending If-Modified-Since within the same second would get a 304.
        mtime = max(time.time(), old_mtime + 1)
        for index in index_files:
            if not index.on_disk:
                continue
            target = dists / index.path
            _write(target, index.content, mtime)
            if by_hash:
                for algorithm in ("MD5Sum", "SHA256"):
                    digest = _digest(algorithm, index.content)
                    _write(target.parent / "by-hash" / algorithm / digest, index.content, mtime)
        if installer is not None:
            self._write_installer(dists, installer, mtime)
        if date is None:
            date = datetime.now(UTC)
            if previous is not None:
                # Release dates have whole seconds: make the new one differ.
                last = previous.date.replace(microsecond=0)
                if date.replace(microsecond=0) <= last:
                    date = last + timedelta(seconds=1)
        release = self._release(
            suite,
            codename or suite,
            components,
            architectures,
            [*index_files, *self._installer_sums(dists, components)],
            date=date,
            valid_until=valid_until,
            by_hash=by_hash,
            origin=origin,
            label=label,
        )
        _write(dists / "Release", release, mtime)
        if "InRelease" in signed_forms:
            signed = key.gpg(
                "--local-user",
                key.fingerprint,
                "--digest-algo",
                "SHA512",
                "--clearsign",
                stdin=release,
            )
            _write(dists / "InRelease", signed, mtime)
        if "Release.gpg" in signed_forms:
            signature = key.gpg(
                "--local-user",
                key.fingerprint,
                "--digest-algo",
                "SHA512",
                "--armor",
                "--detach-sign",
                stdin=release,
            )
            _write(dists / "Release.gpg", signature, mtime)
        self._suites[suite] = _Suite(
            packages=list(packages),
            published=specs,
            installer=current_installer,
            date=date,
            options={
                "codename": codename,
                "components": tuple(components),
                "architectures": tuple(architectures),
                "valid_until": valid_until,
                "by_hash": by_hash,
                "compressions": tuple(compressions),
                "signed_forms": tuple(signed_forms),
                "signing_key": signing_key,
                "origin": origin,
                "label": label,
                "translations": translations,
            },
        )

    def packages(self, suite: str) -> list[PackageSpec]:
        """The packages suite's indices list now (with the installer's kernel udeb)."""
        return list(self._suite(suite).published)

    def installer(self, suite: str) -> InstallerSpec | None:
        """The debian-installer build suite's ``current`` points at, if any."""
        return self._suite(suite).installer

    def installer_path(self, suite: str, name: str, *, version: str = "current") -> str:
        """Archive-relative path of an image, e.g. ``netboot/debian-installer/amd64/linux``."""
        installer = self.installer(suite)
        if installer is None:
            raise KeyError(f"suite {suite!r} has no debian-installer images")
        return (
            f"dists/{suite}/{installer.component}/installer-{installer.architecture}"
            f"/{version}/images/{name}"
        )

    def _suite(self, suite: str) -> _Suite:
        if suite not in self._suites:
            raise KeyError(f"suite {suite!r} was never published")
        return self._suites[suite]

    @staticmethod
    def _installer_dir(dists: Path, installer: InstallerSpec, version: str) -> Path:
        return dists / installer.component / f"installer-{installer.architecture}" / version

    def _check_installer(self, dists: Path, installer: InstallerSpec) -> None:
        images = self._installer_dir(dists, installer, installer.version) / "images"
        for name, content in installer.images().items():
            target = images / name
            if target.exists() and target.read_bytes() != content:
                # As for pool files: one version, one set of bytes.
                raise ValueError(f"{target} exists with other content; change the version")

    def _write_installer(self, dists: Path, installer: InstallerSpec, mtime: float) -> None:
        images = installer.images()
        versioned = self._installer_dir(dists, installer, installer.version) / "images"
        for name, content in images.items():
            if not (versioned / name).exists():
                _write(versioned / name, content, mtime)
        # `current` is a real directory, updated file by file (each atomically,
        # never missing), and only where the content changes, like rsync does.
        current = self._installer_dir(dists, installer, "current") / "images"
        for name, content in images.items():
            target = current / name
            if target.exists():
                if target.read_bytes() == content:
                    continue
                _write(target, content, max(mtime, target.stat().st_mtime + 1))
            else:
                _write(target, content, mtime)
        if current.exists():
            for path in sorted(current.rglob("*"), reverse=True):
                relative = path.relative_to(current).as_posix()
                if path.is_file() and relative not in images:
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()

    @staticmethod
    def _installer_sums(dists: Path, components: Sequence[str]) -> list[_IndexFile]:
        """Every installer directory's MD5SUMS and SHA256SUMS, for Release (no by-hash)."""
        files = []
        for component in components:
            for sums in ("MD5SUMS", "SHA256SUMS"):
                for path in sorted(dists.glob(f"{component}/installer-*/*/images/{sums}")):
                    relative = path.relative_to(dists).as_posix()
                    files.append(_IndexFile(relative, path.read_bytes(), on_disk=True))
        return files

    def _publish_package(
        self, suite: str, spec: PackageSpec, components: Sequence[str]
    ) -> _Published:
        if spec.component not in components:
            raise ValueError(
                f"{spec.name} is in component {spec.component!r}, not in {list(components)}"
            )
        content = build_package(spec)
        pool_path = spec.pool_path()
        target = self.path(pool_path)
        if not target.exists():
            _write(target, content)
        elif target.read_bytes() != content:
            # The archive (dak) never reuses a file name for other bytes; a
            # test doing so by accident would get indices that lie.
            raise ValueError(f"{pool_path} exists with other content; change the version")
        self._published.setdefault(suite, {}).setdefault(spec.name, {})[spec.version] = pool_path
        stanza = control_of(spec)
        del stanza["Description"]
        if "Package-Type" in stanza:
            del stanza["Package-Type"]
        stanza["Filename"] = pool_path
        stanza["Size"] = str(len(content))
        stanza["MD5sum"] = hashlib.md5(content).hexdigest()
        stanza["SHA256"] = hashlib.sha256(content).hexdigest()
        stanza["Description"] = f"debcache test package {spec.name}"
        return _Published(spec, pool_path, deb822.Packages(stanza))

    def _index_files(
        self,
        published: list[_Published],
        components: Sequence[str],
        architectures: Sequence[str],
        compressions: Sequence[str],
    ) -> list[_IndexFile]:
        files: list[_IndexFile] = []
        binary_architectures = [a for a in architectures if a != "all"]
        for component in components:
            for kind, directory, archs in (
                ("deb", f"{component}", architectures),
                # d-i only reads per-architecture indices, so no binary-all
                # there: arch-all udebs are repeated in each binary-<arch>.
                ("udeb", f"{component}/debian-installer", binary_architectures),
            ):
                for arch in archs:
                    stanzas = [
                        p.stanza
                        for p in published
                        if p.spec.kind == kind
                        and p.spec.component == component
                        and _listed_in(p.spec.architecture, arch, archs)
                    ]
                    # Every stanza ends with a blank line, the last one too, as in
                    # Debian: debootstrap's parser (pkgdetails_perl) only takes a
                    # stanza once it has seen the blank line after it.
                    content = "".join(s.dump() + "\n" for s in stanzas).encode()
                    files += _compressed(
                        f"{directory}/binary-{arch}/Packages", content, compressions
                    )
        return files

    def _clear_suite(self, dists: Path) -> float:
        """Delete dists/<suite> but by-hash and installer files; return the newest mtime removed."""
        newest = 0.0
        if not dists.exists():
            return newest
        for path in sorted(dists.rglob("*"), reverse=True):
            parts = path.relative_to(dists).parts
            if "by-hash" in parts or (len(parts) > 1 and parts[1].startswith("installer-")):
                continue
            if path.is_file():
                newest = max(newest, path.stat().st_mtime)
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        return newest

    def _release(
        self,
        suite: str,
        codename: str,
        components: Sequence[str],
        architectures: Sequence[str],
        index_files: Iterable[_IndexFile],
        *,
        date: datetime,
        valid_until: datetime | None,
        by_hash: bool,
        origin: str,
        label: str,
    ) -> bytes:
        lines = [
            f"Origin: {origin}",
            f"Label: {label}",
            f"Suite: {suite}",
            f"Codename: {codename}",
            f"Date: {format_date(date)}",
        ]
        if valid_until is not None:
            lines.append(f"Valid-Until: {format_date(valid_until)}")
        if by_hash:
            lines.append("Acquire-By-Hash: yes")
        lines += [
            f"Architectures: {' '.join(architectures)}",
            f"Components: {' '.join(components)}",
            f"Description: debcache test archive {suite}",
        ]
        ordered = sorted(index_files, key=lambda f: f.path)
        for algorithm in ("MD5Sum", "SHA256"):
            lines.append(f"{algorithm}:")
            for index in ordered:
                digest = _digest(algorithm, index.content)
                lines.append(f" {digest} {len(index.content):>16} {index.path}")
        return ("\n".join(lines) + "\n").encode()


def _translations(published: list[_Published], components: Sequence[str]) -> list[_IndexFile]:
    files = []
    for component in components:
        stanzas = []
        for package in sorted(published, key=lambda p: p.spec.name):
            if package.spec.kind == "deb" and package.spec.component == component:
                description = f"debcache test package {package.spec.name}\n"
                stanzas.append(
                    f"Package: {package.spec.name}\n"
                    f"Description-md5: {hashlib.md5(description.encode()).hexdigest()}\n"
                    f"Description-en: {description}\n"
                )
        content = "".join(stanzas).encode()
        files.append(_IndexFile(f"{component}/i18n/Translation-en", content, on_disk=False))
        files.append(
            _IndexFile(f"{component}/i18n/Translation-en.bz2", bz2.compress(content), True)
        )
    return files


def _listed_in(package_arch: str, index_arch: str, architectures: Sequence[str]) -> bool:
    # Debian lists arch-all packages only in binary-all once Release names
    # "all"; older archives (no "all") repeat them in every binary-<arch>.
    if package_arch == "all" and "all" not in architectures:
        return index_arch != "all"
    return package_arch == index_arch


def _compressed(path: str, content: bytes, compressions: Sequence[str]) -> list[_IndexFile]:
    # The uncompressed file is always listed in Release (its hash is what apt
    # checks after decompressing) even when only compressed forms are on disk.
    files = [_IndexFile(path, content, on_disk="" in compressions)]
    for suffix in compressions:
        if suffix == ".gz":
            files.append(_IndexFile(path + suffix, gzip.compress(content, mtime=0), True))
        elif suffix == ".xz":
            files.append(
                _IndexFile(path + suffix, lzma.compress(content, format=lzma.FORMAT_XZ), True)
            )
        elif suffix != "":
            raise ValueError(f"unsupported compression {suffix!r}")
    return files


def _digest(algorithm: str, content: bytes) -> str:
    return (hashlib.md5 if algorithm == "MD5Sum" else hashlib.sha256)(content).hexdigest()


def _write(target: Path, content: bytes, mtime: float | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Replace atomically so a FakeMirror serving concurrently never sends a
    # half-written file.
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(content)
    if mtime is not None:
        os.utime(temporary, (mtime, mtime))
    temporary.replace(target)


def build_test_archive(root: Path, *, expired_updates: bool = False) -> Archive:
    """A new key plus suites bookworm (default_packages, default_installer) and bookworm-updates.

    Each call makes its own key (and gpg home) next to root, at ``<root>-key``; call it
    per test with the test's own directory when the test changes the archive.

    expired_updates: publish bookworm-updates dated two weeks ago with a ``Valid-Until``
    a week ago, so apt refuses it ("... is expired (invalid since 7d ...)", exit 100)
    unless ``-o Acquire::Check-Valid-Until=false`` or ``[check-valid-until=no]``.
    bookworm is unaffected. (Any suite: ``publish_suite(..., valid_until=<past>)``.)
    """
    root = Path(root)
    key = make_signing_key(root.parent / f"{root.name}-key")
    archive = Archive(root, key)
    archive.publish_suite(
        "bookworm", default_packages(), codename="bookworm", installer=default_installer()
    )
    updates: dict[str, Any] = {}
    if expired_updates:
        now = datetime.now(UTC).replace(microsecond=0)
        updates = {"date": now - timedelta(days=14), "valid_until": now - timedelta(days=7)}
    archive.publish_suite(
        "bookworm-updates", updates_packages(), codename="bookworm-updates", **updates
    )
    return archive


def build_security_archive(root: Path, key: SigningKey | None = None) -> Archive:
    """The security archive under ``root/debian-security``: suite bookworm-security.

    ``Suite`` and ``Codename`` bookworm-security, ``Origin: Debian``, ``Label:
    Debian-Security``, security_packages(), signed by key (default: a new key at
    ``<root>-security-key``). Built under the same root as build_test_archive, one
    FakeMirror serves both, at ``/debian/`` and ``/debian-security/``::

        archive = build_test_archive(tmp_path / "www")
        security = build_security_archive(tmp_path / "www", key=archive.key)
        with FakeMirror(archive.root) as mirror:
            sources = [f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian bookworm main",
                       f"deb [signed-by={security.key.keyring}] {mirror.url}/debian-security "
                       "bookworm-security main"]
    """
    root = Path(root)
    if key is None:
        key = make_signing_key(root.parent / f"{root.name}-security-key")
    archive = Archive(root, key, base="debian-security")
    archive.publish_suite(
        "bookworm-security",
        security_packages(),
        codename="bookworm-security",
        label="Debian-Security",
    )
    return archive


# What a point release updates (as +deb12uN stable updates), by package name: libc6
# so that a debootstrap minbase sees the point release too.
POINT_RELEASE_UPDATES = ("hello", "libgreet1", "libc6")


def point_release(archive: Archive, suite: str = "bookworm") -> dict[str, tuple[str, str]]:
    """Republish suite like a Debian point release; return {package: (old, new)} of what changed.

    ``hello``, ``libgreet1`` and ``libc6`` (POINT_RELEASE_UPDATES) get the next
    ``+deb12uN`` version; the installer (if
    any) the next version and kernel ABI (20230607+deb12u1, 6.1.0-9 ->
    20230607+deb12u2, 6.1.0-10) and a new kernel udeb (so the old udeb's name maps
    to ``(old, "")`` and the new one's to ``("", new)``); ``current`` points at the
    new build, the old version directory stays. Everything else and the options of
    the last publish_suite stay; Date is new. Pool files no suite lists any more
    are deleted, as mirrors do once the old versions expire.
    """
    state = archive._suite(suite)
    before = {spec.name: spec.version for spec in state.published}
    old_installer = state.installer
    new_installer = None
    if old_installer is not None:
        new_installer = replace(
            old_installer,
            version=_next_stable_update(old_installer.version),
            kernel=_next_revision(old_installer.kernel),
            kernel_udeb_version=_next_revision(old_installer.kernel_udeb_version),
        )
    packages = []
    for spec in state.packages:
        if old_installer is not None and spec.name == old_installer.kernel_udeb().name:
            continue
        if spec.name in POINT_RELEASE_UPDATES:
            spec = replace(spec, version=_next_stable_update(spec.version))
        packages.append(spec)
    archive.publish_suite(suite, packages, installer=new_installer, **state.options)
    after = {spec.name: spec.version for spec in archive.packages(suite)}
    listed = {spec.pool_path() for other in archive._suites.values() for spec in other.published}
    for spec in state.published:
        if spec.pool_path() not in listed and archive.path(spec.pool_path()).exists():
            archive.remove_pool_file(spec.pool_path())
    return {
        name: (before.get(name, ""), after.get(name, ""))
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    }


def _next_stable_update(version: str) -> str:
    """2.10-3 -> 2.10-3+deb12u1 -> 2.10-3+deb12u2."""
    match = re.fullmatch(r"(.*\+deb\d+u)(\d+)", version)
    return f"{match[1]}{int(match[2]) + 1}" if match else f"{version}+deb12u1"


def _next_revision(version: str) -> str:
    """6.1.0-9 -> 6.1.0-10; 6.1.38-1 -> 6.1.38-2."""
    match = re.fullmatch(r"(.*-)(\d+)", version)
    if match is None:
        raise ValueError(f"{version!r} does not end in -<number>")
    return f"{match[1]}{int(match[2]) + 1}"
