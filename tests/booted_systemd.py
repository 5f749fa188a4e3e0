"""A systemd booted in namespaces of its own, to run debcache's units under a real one.

PID 1 of the test machine need not be systemd. `unshare` makes mount, PID, UTS, IPC and
cgroup namespaces (the network stays the host's: units listen on loopback ports the test
picks) and /lib/systemd/systemd boots there into an empty target, on a root that is an
overlay of the host's whose writes stay in a tmpfs, with everything a boot would start
masked except journald and D-Bus. `install.sh`'s result is made there without pip: a
venv from Debian's python3 holding this checkout's debcache and copies of the
dependencies this interpreter has, and the units where install.sh puts them.

Its cgroups are made under the test's own, one directory per hierarchy, and removed on
close. The namespaces die with the test, even on SIGKILL (a parent-death signal kills
`unshare`, and `--kill-child` its child, systemd).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from processes import wait_until

REPOSITORY = Path(__file__).parent.parent
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV = "/opt/debcache"  # install.sh's
UNITS = "/usr/local/lib/systemd/system"  # install.sh's
# Every unit these targets pull in at boot is masked but for journald and D-Bus.
BOOT_TARGETS = ("sysinit", "sockets", "timers", "paths", "basic", "local-fs", "swap", "slices")
KEPT = re.compile(r"systemd-journald.*|systemd-journal-flush\.service|dbus\..*")

# $1 state dir, $2 checkout, $3 file listing what to copy into the venv's site-packages.
BOOT = r"""
set -euo pipefail
state=$1 checkout=$2 copies=$3
mkdir -p "$state/layers" "$state/root"
mount -t tmpfs tmpfs "$state/layers"
mkdir "$state/layers/upper" "$state/layers/work"
root=$state/root
mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$state/layers/upper,workdir=$state/layers/work" "$root"
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys" && mount -o remount,bind,ro "$root/proc/sys"
mount --rbind /sys "$root/sys" && mount -o remount,bind,ro "$root/sys"
mount -t tmpfs -o mode=755 tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    touch "$root/dev/$node" && mount --bind "/dev/$node" "$root/dev/$node"
done
touch "$state/console" "$root/dev/console"  # what systemd says before journald runs
mount --bind "$state/console" "$root/dev/console"
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"

units=$root/etc/systemd/system
while read -r unit; do ln -sfn /dev/null "$units/$unit"; done < "$state/masked"
printf '[Unit]\nDescription=nothing: debcache tests start what they need\n' > "$units/empty.target"
: > "$root/etc/machine-id"
rm -rf "$root/var/lib/debcache" "$root/var/lib/private/debcache" "$root/etc/debcache"

chroot "$root" /usr/bin/python3 -m venv --without-pip /opt/debcache
site=$(echo "$root"/opt/debcache/lib/python3*/site-packages)
while read -r path; do cp -a "$path" "$site/"; done < "$copies"
cp -a "$checkout/debcache" "$site/"
printf '%s\n' '#!/opt/debcache/bin/python3' 'import sys' 'from debcache.cli import main' \
    'sys.exit(main())' > "$root/opt/debcache/bin/debcache"
chmod 755 "$root/opt/debcache/bin/debcache"
ln -sfn /opt/debcache/bin/debcache "$root/usr/local/bin/debcache"
install -D -m 644 -t "$root/usr/local/lib/systemd/system" \
    "$checkout/systemd/debcache.service" "$checkout/systemd/debcache.socket"

cd "$root"
mkdir -p oldroot
pivot_root . oldroot  # not chroot: a chrooted process may not make a user namespace
umount -l /oldroot
export container=debcache-tests
exec /lib/systemd/systemd --system --unit=empty.target --show-status=false
"""


class BootedSystemd:
    """`with BootedSystemd() as system:` then `system.run("systemctl", ...)`."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="debcache-systemd-"))
        self.cgroups: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0  # systemd's, as this machine sees it

    def __enter__(self) -> BootedSystemd:
        check_python()
        (self.state / "masked").write_text("".join(f"{u}\n" for u in masked_units()))
        (self.state / "copies").write_text("".join(f"{p}\n" for p in dependency_paths()))
        self.cgroups = make_cgroups(self.state.name)
        log = open(self.state / "boot.log", "wb")
        enter = "".join(f'echo $$ > "{group}/cgroup.procs" && ' for group in self.cgroups)
        unshare = (
            "unshare --mount --pid --uts --ipc --cgroup --kill-child --propagation private "
            'bash -c "$0" boot "$@"'
        )
        self.process = subprocess.Popen(
            [
                "setpriv",
                "--pdeathsig",
                "KILL",
                "sh",
                "-c",
                f"{enter}exec {unshare}",
                BOOT,
                str(self.state),
                str(REPOSITORY),
                str(self.state / "copies"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            self.pid = wait_until(self._systemd_pid, "systemd to start", deadline=120)
            wait_until(self._running, lambda: f"systemd to boot; {self._boot_log()}", 120)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, *command: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """`command` inside, as root, with root's PATH; its output as text."""
        result = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.pid),
                "-m",
                "-p",
                "-u",
                "-i",
                "-C",
                "-r",
                "-w",
                "env",
                "-i",
                f"PATH={ROOT_PATH}",
                "LANG=C.UTF-8",
                *command,
            ],
            input=input,
            capture_output=True,
            timeout=300,
        )
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
        )

    def write(self, path: str, content: bytes | str) -> None:
        data = content.encode() if isinstance(content, str) else content
        result = self.run("sh", "-c", 'mkdir -p "$(dirname "$0")" && cat > "$0"', path, input=data)
        assert result.returncode == 0, result.stderr

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit).stdout

    def close(self) -> None:
        """Kill everything inside (unshare's death kills systemd, PID 1 of them all)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        for group in self.cgroups:
            wait_until(lambda g=group: remove_cgroup(g), f"{group} to empty", deadline=60)
        self.cgroups = []
        subprocess.run(["rm", "-rf", str(self.state)], check=False)

    def _systemd_pid(self) -> int | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the boot failed; {inotify_instances()}: {self._boot_log()}")
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            shown = children.read_text().split()
        except FileNotFoundError:
            return None
        # setpriv execs sh, which execs unshare; its one child is systemd once exec'd.
        for pid in shown:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except FileNotFoundError:
                continue
        return None

    def _running(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None or not Path(f"/proc/{self.pid}").exists():
            raise AssertionError(
                f"systemd (pid {self.pid}) ended while booting, unshare's exit status "
                f"{self.process.poll()}; {inotify_instances()}: {self._boot_log()}"
            )
        state = self.run("systemctl", "is-system-running").stdout.strip()
        return state in ("running", "degraded")

    def _boot_log(self) -> str:
        """What the boot script and systemd (on its console) said."""
        said = [(self.state / name).read_text(errors="replace") for name in ("boot.log", "console")]
        return "\n".join(text[-2000:] for text in said if text.strip()) or "(nothing)"


def inotify_instances() -> str:
    """How many inotify instances are open, of the limit per user: systemd exits at once,
    silently, when it cannot make one (leaked gpg-agents hold two each)."""
    used = 0
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            used += os.readlink(fd) == "anon_inode:inotify"
        except OSError:
            continue
    limit = Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
    return f"{used} inotify instances open (at most {limit} per user)"


def check_python() -> None:
    """The copied dependencies (C extensions among them) must suit Debian's python3."""
    debian = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert debian == str(sys.version_info[:2]), (
        f"/usr/bin/python3 is {debian}, the tests' Python {sys.version_info[:2]}: run the "
        "tests with Debian's python3 (as .ci/install-deps's venv does)"
    )


def dependency_paths() -> list[Path]:
    """The installed files of debcache's dependencies, each top-level entry once."""
    wanted = [Requirement(r) for r in importlib.metadata.requires("debcache") or []]
    pending = [r.name for r in wanted if not r.marker or r.marker.evaluate({"extra": ""})]
    seen: set[str] = set()
    paths: set[Path] = set()
    while pending:
        name = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or []:
            top = Path(str(file)).parts[0]
            if top != ".." and not top.endswith(".dist-info") and top != "__pycache__":
                paths.add(Path(str(distribution.locate_file(top))))
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if not requirement.marker or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return sorted(p for p in paths if p.exists() and p.name != "debcache")


def masked_units() -> list[str]:
    found: set[str] = set()
    for base in (Path("/lib/systemd/system"), Path("/etc/systemd/system")):
        for target in BOOT_TARGETS:
            wants = base / f"{target}.target.wants"
            if wants.is_dir():
                found.update(p.name for p in wants.iterdir() if not KEPT.fullmatch(p.name))
    return sorted(found | {"systemd-udevd.service", "systemd-logind.service", "tmp.mount"})


def make_cgroups(name: str) -> list[Path]:
    """A directory `name` in this process's cgroup of every mounted hierarchy."""
    own = {}  # controllers ("" for cgroup2) -> this process's cgroup in that hierarchy
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        own[controllers if number != "0" else ""] = path
    made = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        mount_root, mount_point = fields.split()[3:5]
        kind, _, options = rest.split()[:3]
        if kind == "cgroup2":
            path = own.get("")
        elif kind == "cgroup":
            mounted = set(options.split(","))
            path = next((p for c, p in own.items() if c and set(c.split(",")) <= mounted), None)
        else:
            continue
        if path is None or not path.startswith(mount_root):
            continue
        group = Path(mount_point, os.path.relpath(path, mount_root), name)
        group.mkdir()
        made.append(group)
        if kind == "cgroup" and "cpuset" in options.split(","):
            for limit in ("cpuset.cpus", "cpuset.mems"):  # empty in a new cpuset: no task fits
                (group / limit).write_text((group.parent / limit).read_text())
    return made


def remove_cgroup(group: Path) -> bool:
    """Remove `group` and what systemd made in it, deepest first; False while in use."""
    if not group.exists():
        return True
    for directory in sorted(
        (p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        try:
            directory.rmdir()
        except OSError:
            return False
    try:
        group.rmdir()
    except OSError:
        return False
    return True
