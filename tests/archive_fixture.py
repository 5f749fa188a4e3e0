"""Build small, real, signed Debian archives for tests.

Everything here is real: packages come from ``dpkg-deb --build``, indices are
written with python-debian, and ``InRelease``/``Release.gpg`` are signed by a
throwaway gpg key, so ``apt-get``, ``gpgv`` and debootstrap accept the result.

Typical use (a session-scoped fixture builds it once, in well under a second)::

    archive = build_test_archive(tmp_path / "www")   # root/debian/{dists,pool}
    with FakeMirror(archive.root) as mirror:          # serves root over HTTP
        apt = AptRoot(tmp_path / "apt")
        apt.write_sources(
            [f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian bookworm main"]
        )
        apt.update()

bookworm also holds a tiny but complete minbase (``minbase_packages()``, names in
``MINBASE``): ``debootstrap --download-only --variant=minbase
--keyring=<archive.key.keyring> bookworm <target> <url>/debian`` succeeds and
leaves exactly those six .debs in ``<target>/var/cache/apt/archives/``.

A point release is simulated by ``point_release(archive)``: bookworm gets
``hello``, ``libgreet1`` and ``libc6`` as ``+deb12u1`` updates, a new debian-installer build
with a new kernel ABI (``current`` switches to it; the old version directory
stays, as on Debian mirrors), a new ``Date``, and the superseded pool files are
deleted. It returns what changed in the Packages indices::

    changes = point_release(archive)
    changes["hello"]                             # ("2.10-3", "2.10-3+deb12u1")
    changes["kernel-image-6.1.0-9-amd64-di"]     # ("6.1.38-1", ""): gone
    changes["kernel-image-6.1.0-10-amd64-di"]    # ("", "6.1.38-2"): new

The same by hand, with any package set::

    packages = [p for p in default_packages() if p.name != "hello"]
    packages.append(PackageSpec("hello", "2.10-3+deb12u1", depends="libgreet1 (>= 1.0)"))
    archive.publish_suite("bookworm", packages)
    archive.remove_pool_file(archive.pool_path("hello", "2.10-3"))  # optional, as mirrors do

Republishing rewrites ``dists/<suite>`` (old ``by-hash`` files stay, as on real
mirrors) and bumps the mtime of every rewritten index file by at least one
second, so ``If-Modified-Since`` sees the change even within the same second;
without an explicit ``date`` the new ``Date`` is likewise at least one second
after the previous one (so up to a second in the future; apt allows 10 s).
The options of the previous publish are not remembered by ``publish_suite``
itself (pass them again), only by ``point_release``.

debian-installer images: ``publish_suite(..., installer=InstallerSpec(...))``
(bookworm of ``build_test_archive`` has ``InstallerSpec("20230607+deb12u1",
"6.1.0-9")``) writes, like Debian::

    dists/<suite>/main/installer-amd64/<version>/images/SHA256SUMS, MD5SUMS
        (lines "<hex>  ./netboot/debian-installer/amd64/linux", sorted)
    .../images/netboot/debian-installer/amd64/linux      200 KiB, from the kernel ABI
    .../images/netboot/debian-installer/amd64/initrd.gz  real gzip, ~300 KiB, names the kernel
    .../images/netboot/netboot.tar.gz                    real tar.gz of the two
    dists/<suite>/main/installer-amd64/current/...       same files, a real directory

``current`` is a copy, not a symlink: FakeMirror would follow a symlink, but
``Archive.files()`` (``rglob``) would not, nor might other servers. Release
lists each ``<version>/images/{MD5SUMS,SHA256SUMS}`` and ``current``'s (no
by-hash for them, as dak does), and the suite's debian-installer Packages get
the matching kernel udeb (``InstallerSpec.kernel_udeb()``:
``kernel-image-6.1.0-9-amd64-di`` with ``Kernel-Version: 6.1.0-9-amd64``).
Republishing with ``installer=None`` keeps the suite's installer directories
and its kernel udeb. ``archive.installer_path("bookworm",
"netboot/debian-installer/amd64/linux")`` gives the archive-relative path
under ``current/images/``; ``archive.installer("bookworm")`` the spec.

More archives and suites:

- ``build_security_archive(root, key=archive.key)``: ``root/debian-security`` with suite
  bookworm-security (``Label: Debian-Security``). ``Archive(root, key, base=...)`` puts
  each archive under its own ``root/<base>``, so with the same ``root`` as
  ``build_test_archive`` one FakeMirror serves ``/debian/`` and ``/debian-security/``.
- ``build_test_archive(root, expired_updates=True)``: bookworm-updates has a
  ``Valid-Until`` a week in the past; apt refuses it unless
  ``-o Acquire::Check-Valid-Until=false`` (debootstrap never checks it). Any suite:
  ``publish_suite(..., valid_until=datetime.now(UTC) - timedelta(days=7))``.

Tamper tests: ``publish_suite(..., signing_key=make_signing_key(tmp_path / "k"))``
signs a suite with a key that ``archive.key.keyring`` does not hold (gpgv exits
2, apt says ``NO_PUBKEY``). Any number of keys and archives can coexist in one
process (each key has its own gpg home and agent); built packages and
installer images are cached per process, so ``build_test_archive`` per test
costs well under a second (mostly gpg key generation and signing).

Where each helper lives (import them from here; this module re-exports them all):

- ``archive_keys``: ``SigningKey``, ``make_signing_key``.
- ``archive_packages``: ``PackageSpec``, ``build_package``, the package sets
  (``default_packages``, ``minbase_packages``/``MINBASE``, ``updates_packages``,
  ``security_packages``).
- ``archive_installer``: ``InstallerSpec``, ``default_installer``.
- ``archive_publishing``: ``Archive``, ``build_test_archive``, ``build_security_archive``,
  ``point_release``, ``format_date``.
"""

from __future__ import annotations

from archive_installer import InstallerSpec, default_installer
from archive_keys import SigningKey, make_signing_key
from archive_packages import (
    MAINTAINER,
    MINBASE,
    SOURCE_DATE_EPOCH,
    PackageSpec,
    build_package,
    default_packages,
    minbase_packages,
    security_packages,
    updates_packages,
)
from archive_publishing import (
    POINT_RELEASE_UPDATES,
    Archive,
    build_security_archive,
    build_test_archive,
    format_date,
    point_release,
)

__all__ = [
    "MAINTAINER",
    "MINBASE",
    "POINT_RELEASE_UPDATES",
    "SOURCE_DATE_EPOCH",
    "Archive",
    "InstallerSpec",
    "PackageSpec",
    "SigningKey",
    "build_package",
    "build_security_archive",
    "build_test_archive",
    "default_installer",
    "default_packages",
    "format_date",
    "make_signing_key",
    "minbase_packages",
    "point_release",
    "security_packages",
    "updates_packages",
]
