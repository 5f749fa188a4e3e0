"""The chroot behind the fresh-Debian tests cleans up after itself, whatever happens.

Its mounts live in a mount namespace of its own (a SIGKILLed test leaks none on the
host), the processes in it are found through a symlinked root too, the host's
name resolution is copied in without writing through a link, and a failure to
close never hides the error that came first. A tiny tree with the host's /usr
bound in stands for the debootstrapped system.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fresh_debian import NAME_RESOLUTION, Chroot, close_keeping_error
from processes import wait_until

TESTS = Path(__file__).parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and chroot need root")


def host_mounts_under(root: Path) -> list[str]:
    real = os.path.realpath(root)
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == real or p.startswith(real + "/")]


def tiny_system(root: Path) -> Chroot:
    """A tree where bash and sleep run: the host's /usr, bound read-only."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("bin", "lib", "lib64"):
        (root / name).symlink_to(f"usr/{name}")
    chroot = Chroot(root)
    chroot.bind_readonly(Path("/usr"))
    return chroot


def test_a_killed_test_leaves_no_mount_on_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    program = (
        f"import os, signal, sys; sys.path.insert(0, {str(TESTS)!r})\n"
        "from pathlib import Path\n"
        "from fresh_debian import Chroot\n"
        f"chroot = Chroot(Path({str(root)!r}))\n"
        "chroot.bind_readonly(Path('/usr'))\n"
        "print('bound', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root.mkdir()
    try:
        killed = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
        )
        assert (killed.returncode, killed.stdout) == (-signal.SIGKILL, "bound\n"), killed.stderr
        assert host_mounts_under(root) == []
    finally:  # what the unfixed helper leaked
        for point in reversed(host_mounts_under(root)):
            subprocess.run(["umount", "--lazy", point], check=False)


def test_close_kills_what_runs_in_a_chroot_reached_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    chroot = tiny_system(tmp_path / "link")
    process = chroot.start("sleep 1000", "/", tmp_path / "log", {"PATH": "/usr/bin"})
    try:

        def chrooted() -> bool:
            assert process.poll() is None, (tmp_path / "log").read_text()
            try:
                return os.readlink(f"/proc/{process.pid}/root") == str(real)
            except OSError:
                return False

        wait_until(chrooted, "the sleep to run in the chroot")
        chroot.close()
        assert process.wait(timeout=30) == -signal.SIGKILL
        assert not real.exists()
    finally:
        if process.poll() is None:  # what the unfixed helper left running
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_name_resolution_is_copied_in_without_writing_through_a_link(tmp_path: Path) -> None:
    chroot = Chroot(tmp_path / "root")
    try:
        victim = tmp_path / "host-file-a-link-points-at"
        victim.write_text("untouched\n")
        for host_file in NAME_RESOLUTION:
            target = chroot.path(host_file)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(victim)
            chroot.replace_file(host_file)
            assert not target.is_symlink()
            assert target.read_bytes() == host_file.read_bytes()
        assert victim.read_text() == "untouched\n"
    finally:
        chroot.close()


def test_a_failing_close_is_a_note_on_the_first_error(tmp_path: Path) -> None:
    chroot = Chroot(tmp_path / "root")
    (tmp_path / "root").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "root")], check=True)
    try:  # a mount on the host, which close must not delete through
        first = RuntimeError("debootstrap failed")
        close_keeping_error(chroot, first)
        assert len(first.__notes__) == 1
        assert "closing the chroot" in first.__notes__[0]
        assert "mounted on the host" in first.__notes__[0]
    finally:
        subprocess.run(["umount", str(tmp_path / "root")], check=True)
