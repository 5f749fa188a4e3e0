"""debian-installer builds for the test archives: `InstallerSpec`, its netboot images and
their MD5SUMS/SHA256SUMS, built once per process."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass

from archive_packages import SOURCE_DATE_EPOCH, PackageSpec


@dataclass(frozen=True)
class InstallerSpec:
    """A debian-installer build: its version directory and the kernel ABI it boots."""

    version: str  # "20230607+deb12u1"
    kernel: str  # the kernel ABI, "6.1.0-9"
    kernel_udeb_version: str = "6.1.38-1"
    architecture: str = "amd64"
    component: str = "main"

    @property
    def kernel_release(self) -> str:
        """``uname -r`` of the installer's kernel: ``6.1.0-9-amd64``."""
        return f"{self.kernel}-{self.architecture}"

    def kernel_udeb(self) -> PackageSpec:
        """The udeb with the kernel and its core modules, which must match the images."""
        return PackageSpec(
            f"kernel-image-{self.kernel_release}-di",
            self.kernel_udeb_version,
            architecture=self.architecture,
            priority="standard",
            section="debian-installer",
            kind="udeb",
            component=self.component,
            extra_fields=(("Kernel-Version", self.kernel_release),),
        )

    def images(self) -> dict[str, bytes]:
        """Path relative to ``images/`` (no ``./``) to bytes, including MD5SUMS and SHA256SUMS."""
        if self not in _installer_images:
            _installer_images[self] = _build_images(self)
        return dict(_installer_images[self])


# Built installer images by spec, like _built for packages.
_installer_images: dict[InstallerSpec, dict[str, bytes]] = {}


def _build_images(spec: InstallerSpec) -> dict[str, bytes]:
    netboot = f"netboot/debian-installer/{spec.architecture}"
    # Pseudo-random bodies so gzip cannot shrink them; the headers let a test
    # see which kernel an image is for.
    kernel = f"Linux version {spec.kernel_release} (debcache test kernel)\n".encode()
    kernel += hashlib.shake_256(f"linux {spec.kernel_release}".encode()).digest(200 * 1024)
    initrd = (
        f"debian-installer {spec.version} initrd\n"
        f"kernel {spec.kernel_release}\n"
        f"lib/modules/{spec.kernel_release}/kernel/\n"
    ).encode()
    initrd += hashlib.shake_256(f"initrd {spec.version} {spec.kernel_release}".encode()).digest(
        300 * 1024
    )
    initrd_gz = gzip.compress(initrd, mtime=0)
    tarball = _tar_gz(
        {
            f"./debian-installer/{spec.architecture}/linux": kernel,
            f"./debian-installer/{spec.architecture}/initrd.gz": initrd_gz,
        }
    )
    files = {
        f"{netboot}/linux": kernel,
        f"{netboot}/initrd.gz": initrd_gz,
        "netboot/netboot.tar.gz": tarball,
    }
    # As in Debian: "<hex>  ./path", the sums files themselves not listed.
    sums = {}
    for sums_name, hasher in (("MD5SUMS", hashlib.md5), ("SHA256SUMS", hashlib.sha256)):
        lines = [f"{hasher(files[name]).hexdigest()}  ./{name}\n" for name in sorted(files)]
        sums[sums_name] = "".join(lines).encode()
    return {**files, **sums}


def _tar_gz(members: dict[str, bytes]) -> bytes:
    """A reproducible tar.gz of these regular files (and their parent directories)."""
    buffer = io.BytesIO()

    def info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.type, entry.mode, entry.size = kind, mode, size
        entry.mtime = int(SOURCE_DATE_EPOCH)
        entry.uname = entry.gname = "root"
        return entry

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        directories: set[str] = set()
        for name, content in members.items():
            parts = name.split("/")
            for depth in range(2, len(parts)):
                directory = "/".join(parts[:depth]) + "/"
                if directory not in directories:
                    directories.add(directory)
                    tar.addfile(info(directory, tarfile.DIRTYPE, 0o755))
            tar.addfile(info(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)


def default_installer() -> InstallerSpec:
    """bookworm's debian-installer build (kernel udeb kernel-image-6.1.0-9-amd64-di 6.1.38-1)."""
    return InstallerSpec(version="20230607+deb12u1", kernel="6.1.0-9")
