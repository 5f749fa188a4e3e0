"""The Debian caches debcache is compared with: apt-cacher-ng and approx, each on 127.0.0.1.

Each peer is a `PeerCache`: what to install, and the configuration and command of one
run in its own directory; the base class starts it empty and waits for its port.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from benchmarks.processes import spawn
from benchmarks.systems import Cache


class PeerCache(Cache):
    """A packaged cache, run as root from its binary with a configuration of our own."""

    binary = ""  # what must exist for the peer to run
    packages: tuple[str, ...] = ()  # what apt-get installs when it does not
    helpers: tuple[str, ...] = ()  # other commands it needs on PATH

    @classmethod
    def installed(cls) -> bool:
        return Path(cls.binary).exists() and all(shutil.which(c) for c in cls.helpers)

    def launch(self) -> subprocess.Popen:
        run = self.dir / f"run{self.runs}"
        run.mkdir(parents=True)
        return spawn(self.command(run), run / "stdout.log")

    def command(self, run: Path) -> list[str]:
        """Write this run's configuration below `run`; the command that serves self.port."""
        raise NotImplementedError


class AptCacherNg(PeerCache):
    name = "apt-cacher-ng"
    binary = "/usr/sbin/apt-cacher-ng"
    packages = ("apt-cacher-ng",)

    def command(self, run: Path) -> list[str]:
        for sub in ("conf", "cache", "log"):
            (run / sub).mkdir()
        # Only our own remapping: the packaged mirror lists are not used.
        (run / "conf" / "acng.conf").write_text(
            f"CacheDir: {run / 'cache'}\nLogDir: {run / 'log'}\n"
            "SupportDir: /usr/lib/apt-cacher-ng\n"
            f"Port: {self.port}\nBindAddress: 127.0.0.1\n"
            f"SocketPath: {run / 'acng.socket'}\nPidFile: {run / 'acng.pid'}\n"
            "ForeGround: 1\nExThreshold: 4\n"
            f"Remap-bench: /debian ; {self.upstream}/\n"
        )
        return [self.binary, "-c", str(run / "conf")]


class Approx(PeerCache):
    name = "approx"
    binary = "/usr/sbin/approx"
    # approx runs from inetd; systemd-socket-activate is that inetd here.
    packages = ("approx", "systemd")
    helpers = ("systemd-socket-activate",)

    def command(self, run: Path) -> list[str]:
        (run / "cache").mkdir()
        (run / "approx.conf").write_text(
            f"debian {self.upstream}\n$cache {run / 'cache'}\n"
            "$user root\n$group root\n$verbose false\n"
        )
        # approx is an inetd service (a process per connection): this is the inetd.
        listen = f"127.0.0.1:{self.port}"
        inetd = ["systemd-socket-activate", "--inetd", "--accept", "--listen", listen]
        return [*inetd, self.binary, "-c", str(run / "approx.conf")]


PEERS: tuple[type[PeerCache], ...] = (AptCacherNg, Approx)
PEER_NAMES = tuple(peer.name for peer in PEERS)
