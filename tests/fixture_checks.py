"""Checks shared by the tests of the test helpers: gpgv, raw HTTP to FakeMirror, Release and
Packages readers, installer checksum files."""

from __future__ import annotations

import email.utils
import http.client
import lzma
import subprocess
from datetime import datetime
from pathlib import Path

from archive_fixture import (
    Archive,
)
from debian import deb822
from fake_mirror import FakeMirror

HELLO = "/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
TOOL = "/debian/pool/main/t/tool++/tool++_1.0~rc1+dfsg-1_amd64.deb"
INSTALLER = "dists/bookworm/main/installer-amd64"
LINUX = "netboot/debian-installer/amd64/linux"
INITRD = "netboot/debian-installer/amd64/initrd.gz"
NETBOOT = "netboot/netboot.tar.gz"


def gpgv(
    keyring: Path, *files: Path, output: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["gpgv", "--keyring", str(keyring)]
    if output is not None:
        command += ["--output", str(output)]
    return subprocess.run([*command, *map(str, files)], capture_output=True, text=True, check=False)


def fetch(
    mirror: FakeMirror,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=timeout)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    return response, response.read()


def release_of(archive: Archive, suite: str) -> deb822.Release:
    return deb822.Release(archive.read(f"dists/{suite}/Release"))


def release_date(release: deb822.Release) -> datetime:
    return email.utils.parsedate_to_datetime(release["Date"])


def index_versions(archive: Archive, suite: str) -> dict[str, str]:
    """{package: version} over the suite's deb, arch-all and udeb indices."""
    versions = {}
    for index in ("binary-amd64", "binary-all", "debian-installer/binary-amd64"):
        with lzma.open(archive.path(f"dists/{suite}/main/{index}/Packages.xz")) as f:
            for stanza in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False):
                versions[stanza["Package"]] = stanza["Version"]
    return versions


def read_sums(content: bytes) -> dict[str, str]:
    """{"./path": hex} of an installer MD5SUMS/SHA256SUMS."""
    sums = {}
    for line in content.decode().splitlines():
        digest, separator, name = line.partition("  ")
        assert separator and name.startswith("./"), line
        sums[name] = digest
    return sums
