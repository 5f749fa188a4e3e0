"""Test packages: `PackageSpec`, real .debs from dpkg-deb (cached per process), and the
package sets the test archives publish (`default_packages`, `MINBASE`, ...)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from debian import deb822

MAINTAINER = "debcache tests <archive@example.org>"

# dpkg-deb clamps tar mtimes and stamps the ar members with this, so a package
# rebuilt after remove_pool_file() is byte-identical to the first build.
SOURCE_DATE_EPOCH = "1686387231"


@dataclass(frozen=True)
class PackageSpec:
    """One binary package to build and publish; the payload is deterministic."""

    name: str
    version: str
    architecture: str = "amd64"
    depends: str = ""
    pre_depends: str = ""
    priority: str = "optional"
    section: str = "misc"
    payload_size: int = 2000
    essential: bool = False
    kind: str = "deb"
    component: str = "main"
    # More control fields, also listed in Packages: (("Kernel-Version", "6.1.0-9-amd64"),).
    extra_fields: tuple[tuple[str, str], ...] = ()

    @property
    def file_name(self) -> str:
        """The pool file name: the version loses its epoch, as in Debian."""
        version = self.version.split(":", 1)[-1]
        return f"{self.name}_{version}_{self.architecture}.{self.kind}"

    def pool_path(self) -> str:
        """The archive-relative ``Filename:`` of this package."""
        prefix = self.name[:4] if self.name.startswith("lib") else self.name[0]
        return f"pool/{self.component}/{prefix}/{self.name}/{self.file_name}"


def _payload(spec: PackageSpec) -> bytes:
    # Pseudo-random so compression cannot hide payload_size, and deterministic
    # so rebuilding gives the same bytes.
    seed = f"{spec.name}_{spec.version}_{spec.architecture}".encode()
    return hashlib.shake_256(seed).digest(spec.payload_size)


def control_of(spec: PackageSpec) -> deb822.Deb822:
    control = deb822.Deb822()
    control["Package"] = spec.name
    control["Version"] = spec.version
    control["Architecture"] = spec.architecture
    control["Maintainer"] = MAINTAINER
    control["Installed-Size"] = str(spec.payload_size // 1024 + 4)
    if spec.depends:
        control["Depends"] = spec.depends
    if spec.pre_depends:
        control["Pre-Depends"] = spec.pre_depends
    control["Priority"] = spec.priority
    control["Section"] = spec.section
    if spec.essential:
        control["Essential"] = "yes"
    if spec.kind == "udeb":
        control["Package-Type"] = "udeb"
    for name, value in spec.extra_fields:
        control[name] = value
    control["Description"] = (
        f"debcache test package {spec.name}\n"
        f" Built by tests/archive_fixture.py; carries {spec.payload_size} bytes."
    )
    return control


# Built packages by spec, shared by every Archive in the process, so that
# republishing a suite or building a second archive costs no dpkg-deb runs.
_built: dict[PackageSpec, bytes] = {}


def build_package(spec: PackageSpec) -> bytes:
    """Build (or return the cached) ``.deb``/``.udeb`` bytes for spec."""
    if spec in _built:
        return _built[spec]
    if spec.kind not in ("deb", "udeb"):
        raise ValueError(f"unknown package kind {spec.kind!r}")
    with tempfile.TemporaryDirectory(prefix="debcache-deb-") as work:
        tree = Path(work) / "tree"
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN" / "control").write_text(control_of(spec).dump())
        payload = tree / "usr" / "share" / spec.name / "payload.bin"
        payload.parent.mkdir(parents=True)
        payload.write_bytes(_payload(spec))
        output = Path(work) / spec.file_name
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        command = [
            "dpkg-deb",
            "--root-owner-group",
            "-Zgzip",
            "-z6",
            "--build",
            str(tree),
            str(output),
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"dpkg-deb failed for {spec.file_name}: {result.stderr}")
        _built[spec] = output.read_bytes()
    return _built[spec]


def default_packages() -> list[PackageSpec]:
    """A small realistic package set: a library, arch-all data, odd versions, a big one, a udeb,
    and a tiny minbase (``minbase_packages()``) for debootstrap."""
    return [
        PackageSpec("hello", "2.10-3", depends="libgreet1 (>= 1.0), greet-data"),
        PackageSpec("libgreet1", "1.0-1", section="libs"),
        PackageSpec("greet-data", "2.10-3", architecture="all"),
        # "~" and "+" make apt percent-quote the URL (%7e, %2b).
        PackageSpec("tool++", "1.0~rc1+dfsg-1", section="utils", payload_size=5000),
        PackageSpec("bigpkg", "1:3.0-1", payload_size=3 * 1024 * 1024),
        PackageSpec("netcfg-test", "1.0", kind="udeb", section="debian-installer"),
        *minbase_packages(),
    ]


# What `debootstrap --variant=minbase bookworm` downloads from build_test_archive, by name:
# the Priority: required packages plus usr-is-merged ("required"), apt ("base"), and
# what they depend on.
MINBASE = ("apt", "base-files", "dpkg", "libapt-pkg6.0", "libc6", "usr-is-merged")


def minbase_packages() -> list[PackageSpec]:
    """The smallest set debootstrap's minbase variant accepts for bookworm (in MINBASE).

    debootstrap (scripts/debian-common) takes every ``Priority: required`` package of
    ``binary-<arch>/Packages`` (base-files, dpkg), adds ``usr-is-merged`` for bookworm,
    ``apt`` for minbase, and resolves Depends and Pre-Depends (libc6, libapt-pkg6.0) in
    the same index. It never reads binary-all, so these are all amd64 (Debian's
    usr-is-merged is arch all, but Debian repeats arch-all packages in binary-amd64; this
    archive lists them in binary-all only). Priorities and relations are Debian's,
    trimmed to packages that exist here. Nothing else in the archive is required, so
    apt-get installs of the other packages do not pull these in.
    """
    return [
        PackageSpec(
            "base-files",
            "12.4+deb12u1",
            priority="required",
            essential=True,
            section="admin",
            payload_size=3000,
        ),
        PackageSpec(
            "dpkg",
            "1.21.22",
            pre_depends="libc6 (>= 2.34)",
            priority="required",
            essential=True,
            section="admin",
            payload_size=6000,
        ),
        PackageSpec("libc6", "2.36-9+deb12u1", section="libs", payload_size=12000),
        PackageSpec("usr-is-merged", "37~deb12u1", section="oldlibs", payload_size=500),
        PackageSpec("libapt-pkg6.0", "2.6.1", depends="libc6 (>= 2.34)", section="libs"),
        PackageSpec(
            "apt",
            "2.6.1",
            depends="libapt-pkg6.0 (>= 2.6.1), libc6 (>= 2.34)",
            priority="important",
            section="admin",
            payload_size=4000,
        ),
    ]


def updates_packages() -> list[PackageSpec]:
    """The bookworm-updates set: two packages bookworm does not have."""
    # New names rather than newer versions of bookworm's packages, so that
    # pool_path(name) is the file apt gets whichever suites a test lists.
    return [
        PackageSpec("greet-tzdata", "2026a-0+deb12u1", architecture="all"),
        PackageSpec("greet-tools", "1.1-1~deb12u1", depends="hello (>= 2.10)", section="utils"),
    ]


def security_packages() -> list[PackageSpec]:
    """bookworm-security: a security fix of bookworm's libgreet1 and a new package needing it."""
    libgreet1 = next(spec for spec in default_packages() if spec.name == "libgreet1")
    return [
        # The same spec (and so the same bytes) as a second point release's libgreet1.
        replace(libgreet1, version="1.0-1+deb12u2"),
        PackageSpec(
            "greet-sandbox",
            "1.0-1~deb12u1",
            depends="libgreet1 (>= 1.0-1+deb12u2)",
            section="utils",
        ),
    ]
