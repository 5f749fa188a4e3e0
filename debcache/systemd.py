"""The two systemd protocols `debcache serve` speaks, with no library: socket activation
(sd_listen_fds) and readiness notification (sd_notify).

Both are a few lines of specified behaviour (sd_listen_fds(3), sd_notify(3)); the
variables are removed once read, so that child processes do not take them as theirs.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)
SD_LISTEN_FDS_START = 3


def listen_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed (LISTEN_FDS for this process), else none."""
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))  # family and type read from the fd
    return sockets


class Notifier:
    """sd_notify(3): datagrams to $NOTIFY_SOCKET; nothing when not run by systemd."""

    def __init__(self) -> None:
        address = os.environ.pop("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address or None

    def notify(self, *assignments: str) -> None:
        """Send `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=...`; errors are logged."""
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            log.warning("could not notify systemd at %s: %s", self.address, exc)

    def reloading(self) -> None:
        # systemd 253+ wants the monotonic time with RELOADING=1 (Type=notify-reload).
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={now}")
