"""Run the real ``apt-get`` against an isolated state directory.

``AptRoot(tmp_path / "apt")`` gives apt its own sources, lists, archives, an
empty dpkg status file and none of the host's configuration, so tests can run
as root without touching (or being influenced by) the machine's apt::

    apt = AptRoot(tmp_path / "apt")
    apt.write_sources([f"deb [signed-by={archive.key.keyring}] {mirror.url}/debian bookworm main"])
    assert apt.update(proxy=debcache_url).returncode == 0
    assert apt.download("hello").returncode == 0
    apt.downloaded()  # {"hello_2.10-3_amd64.deb": b"!<arch>...", ...}

Isolation goes through ``APT_CONFIG``: apt reads that file *before*
``Dir::Etc::Parts`` and ``Dir::Etc::main``, so pointing those at empty places
there is the only way to keep /etc/apt/apt.conf.d out (``-o`` options are
applied after the host's files have been read).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

# Environment variables that would make apt (or its methods) use a proxy or
# another configuration behind our back.
_SCRUBBED_ENV = (
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "APT_CONFIG",
)


def _quote(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"apt configuration values cannot contain quotes or newlines: {value!r}")
    return f'"{value}"'


class AptRoot:
    """An isolated apt state directory: own sources, lists, archives, status; no host config."""

    def __init__(self, directory: Path, architecture: str = "amd64") -> None:
        self.directory = Path(directory).absolute()
        self.architecture = architecture
        etc = self.directory / "etc" / "apt"
        self.sources_list = etc / "sources.list"
        self.lists = self.directory / "var" / "lib" / "apt" / "lists"
        self.archives = self.directory / "var" / "cache" / "apt" / "archives"
        self.status = self.directory / "var" / "lib" / "dpkg" / "status"
        self.config_file = etc / "apt.conf"
        for directory_path in (
            etc / "apt.conf.d",
            etc / "sources.list.d",
            etc / "preferences.d",
            etc / "trusted.gpg.d",
            self.lists / "partial",
            self.archives / "partial",
            self.status.parent,
            self.directory / "var" / "log" / "apt",
        ):
            directory_path.mkdir(parents=True, exist_ok=True)
        self.status.touch()
        self.sources_list.touch()
        self.options: dict[str, str] = {
            "Dir": str(self.directory) + "/",
            "Dir::State": str(self.directory / "var" / "lib" / "apt") + "/",
            "Dir::State::Lists": str(self.lists) + "/",
            # Absolute by default (/var/lib/dpkg/status), so Dir does not move it.
            "Dir::State::status": str(self.status),
            "Dir::Cache": str(self.directory / "var" / "cache" / "apt") + "/",
            "Dir::Cache::Archives": str(self.archives) + "/",
            "Dir::Log": str(self.directory / "var" / "log" / "apt") + "/",
            "Dir::Etc": str(etc) + "/",
            # Already read via APT_CONFIG; /dev/null is skipped (not a regular file).
            "Dir::Etc::main": "/dev/null",
            "Dir::Etc::Parts": str(etc / "apt.conf.d") + "/",
            "Dir::Etc::SourceList": str(self.sources_list),
            "Dir::Etc::SourceParts": str(etc / "sources.list.d") + "/",
            "Dir::Etc::Preferences": str(etc / "preferences"),
            "Dir::Etc::PreferencesParts": str(etc / "preferences.d") + "/",
            "Dir::Etc::Trusted": str(etc / "trusted.gpg"),
            "Dir::Etc::TrustedParts": str(etc / "trusted.gpg.d") + "/",
            "APT::Architecture": architecture,
            "APT::Architectures": architecture,
            # As root apt drops to _apt for downloads, which cannot write into
            # a test's temporary directory.
            "APT::Sandbox::User": "root",
            "Debug::NoLocking": "1",
            "Acquire::Languages": "none",
            "Acquire::Retries": "0",
            "APT::Install-Recommends": "0",
        }
        self.config_file.write_text("".join(f"{k} {_quote(v)};\n" for k, v in self.options.items()))

    def write_sources(self, lines: list[str]) -> None:
        """Replace sources.list with these one-line-format entries."""
        self.sources_list.write_text("".join(line + "\n" for line in lines))

    def command(
        self, *args: str, proxy: str | None = None, options: Mapping[str, str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The apt-get command line and environment run() would use."""
        extra = dict(options or {})
        # "DIRECT" (no proxy) also keeps a proxy from anywhere else out; the
        # environment is scrubbed as well, since apt falls back to http_proxy.
        extra.setdefault("Acquire::http::Proxy", proxy if proxy is not None else "DIRECT")
        command = ["apt-get"]
        for key, value in {**self.options, **extra}.items():
            command += ["-o", f"{key}={value}"]
        command += list(args)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(
            APT_CONFIG=str(self.config_file), LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive"
        )
        return command, env

    def run(
        self,
        *args: str,
        proxy: str | None = None,
        options: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run apt-get with this root's options; never raises on a non-zero exit."""
        command, env = self.command(*args, proxy=proxy, options=options)
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def update(
        self,
        *,
        proxy: str | None = None,
        options: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``apt-get update``."""
        return self.run("update", proxy=proxy, options=options, timeout=timeout)

    def download(
        self,
        *packages: str,
        proxy: str | None = None,
        options: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``apt-get install --download-only -y`` for packages (and their dependencies)."""
        return self.run(
            "install",
            "--download-only",
            "-y",
            *packages,
            proxy=proxy,
            options=options,
            timeout=timeout,
        )

    def downloaded(self) -> dict[str, bytes]:
        """File name to bytes of each .deb apt left in the archives directory."""
        return {path.name: path.read_bytes() for path in sorted(self.archives.glob("*.deb"))}

    def clean(self) -> None:
        """Delete downloaded .debs (and partial files), like ``apt-get clean``."""
        for path in [*self.archives.glob("*.deb"), *(self.archives / "partial").iterdir()]:
            path.unlink()


def install_from(apt: AptRoot, sources: list[str], *packages: str) -> dict[str, bytes]:
    """apt-get update from `sources`, then download `packages`; what apt downloaded."""
    apt.write_sources(sources)
    update = apt.update()
    assert update.returncode == 0, update.stdout + update.stderr
    result = apt.download(*packages)
    assert result.returncode == 0, result.stdout + result.stderr
    return apt.downloaded()
