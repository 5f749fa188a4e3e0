"""A fresh Debian 12 in a directory, for the README's set-up commands.

A minbase bookworm debootstrapped from this host's own apt sources, with what this
machine needs to reach its Debian mirror and Python package index carried in (apt's
configuration, local CA certificates, pip's configuration and the local directories
it names, and the name resolution of the moment), so the chroot's apt and pip go where
this machine's go. Every mount is made in a mount namespace of the chroot's own, so
the host sees none of them even if the test is killed with SIGKILL; on close every
process in the chroot is killed and every mount undone, whatever happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

SUITE = "bookworm"
# root's PATH on Debian, for commands run in the chroot as a root login would.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
CHROOT = shutil.which("chroot", path=HOST_PATH) or "chroot"
# The environment that decides where pip and downloads go.
CARRIED_ENV = re.compile(r"PIP_.*|(?i:https?_proxy|no_proxy)|XDG_CONFIG_(HOME|DIRS)")
APT_CONFIGURATION = ("apt.conf", "apt.conf.d", "auth.conf.d")
LOCAL_CA_CERTIFICATES = Path("/usr/local/share/ca-certificates")
# Copied at each use, not kept in the base: the host's resolver may change in a week.
NAME_RESOLUTION = (Path("/etc/resolv.conf"), Path("/etc/hosts"))
# The debootstrapped base is kept between runs; apt in the chroot updates its indices
# anyway, a week-old base only means a few more upgrades.
BASE_CACHE = Path("/var/cache/debcache-tests")
BASE_MAX_AGE = 7 * 86400


def readme_setup_commands(readme: Path) -> list[str]:
    """The command lines of the first code block under `## Set-up`, comments left out."""
    lines = readme.read_text().splitlines()
    heading = next(i for i, line in enumerate(lines) if re.match(r"##+ *[Ss]et-?up", line))
    fence = next(i for i in range(heading + 1, len(lines)) if lines[i].startswith("```"))
    commands = []
    for line in lines[fence + 1 :]:
        if line.startswith("```"):
            return commands
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.strip())
    raise AssertionError("README.md: the set-up code block has no closing ```")


def host_mirror(suite: str = SUITE) -> str:
    """The archive URI of this host's `deb` source for `suite`, as apt itself reads them
    (sources.list and sources.list.d, one-line and DEB822)."""
    listing = _run(
        ["apt-get", "indextargets", "--no-release-info", "--format",
         "$(TARGET_OF) $(RELEASE) $(REPO_URI)"],
    )  # fmt: skip
    for line in listing.splitlines():
        kind, release, uri = line.split(maxsplit=2)
        if kind == "deb" and release == suite:
            return uri
    raise AssertionError(
        f"this host's apt sources have no `deb` source for {suite}: add one (a Debian mirror), "
        "the fresh-Debian test debootstraps from it"
    )


def base_system(mirror: str) -> Path:
    """A tarball of a minbase `SUITE` debootstrapped from `mirror`: the one in
    BASE_CACHE if it is younger than BASE_MAX_AGE, else made now (and kept there)."""
    architecture = _run(["dpkg", "--print-architecture"]).strip()
    key = hashlib.sha256(mirror.encode()).hexdigest()[:12]
    tarball = BASE_CACHE / f"{SUITE}-minbase-{architecture}-{key}.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime < BASE_MAX_AGE:
        return tarball
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    building = Chroot(Path(tempfile.mkdtemp(prefix="debootstrap-", dir=BASE_CACHE)) / "root")
    partial = tarball.with_suffix(f".{os.getpid()}.partial")
    try:
        # In the chroot's namespace: the /proc and /sys debootstrap mounts stay there.
        building.run(["debootstrap", "--variant=minbase", SUITE, str(building.root), mirror], 900)
        _run(["tar", "-C", str(building.root), "--numeric-owner", "-cf", str(partial), "."])
        partial.replace(tarball)  # atomic: a concurrent run sees all of it or none
    except BaseException as exc:
        close_keeping_error(building, exc)
        raise
    else:
        building.close()
    finally:
        partial.unlink(missing_ok=True)
    building.root.parent.rmdir()
    return tarball


def close_keeping_error(chroot: Chroot, error: BaseException) -> None:
    """Close `chroot` after `error`; a failure to close is a note on it, never its mask."""
    try:
        chroot.close()
    except Exception as close_error:
        error.add_note(f"closing the chroot {chroot.root} failed too: {close_error}")


def unpack(tarball: Path, root: Path) -> Chroot:
    """A fresh copy of the base system in `root`."""
    root.mkdir(parents=True)
    _run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)])
    return Chroot(root)


def _run(command: list[str], timeout: float = 120) -> str:
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PATH": HOST_PATH},
        )
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise AssertionError(
            f"{' '.join(command)} timed out after {timeout} s; its output ended:\n{output[-3000:]}"
        ) from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{output}")
    return result.stdout


def _text(output: bytes | str | None) -> str:
    """TimeoutExpired's partial output: bytes even when text=True was asked for."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


class MountNamespace:
    """A private mount namespace held open by a process that lives as long as this one.

    Its holder reads its stdin, a pipe from this process: when this process ends, even
    by SIGKILL, the pipe closes and the holder exits, and the namespace (with every
    mount made in it) goes with the last process in it. The host never sees its mounts.
    """

    def __init__(self) -> None:
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private",
             "sh", "-c", "echo ready && read _ || true"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PATH": HOST_PATH},
        )  # fmt: skip
        # Until sh runs, the namespace may not exist or not be private yet: an nsenter
        # then would mount on the host.
        assert self._holder.stdout is not None
        ready = self._holder.stdout.readline()
        if ready != b"ready\n":
            raise AssertionError(f"unshare --mount failed (exit {self._holder.wait()})")

    def enter(self, command: list[str]) -> list[str]:
        """`command`, run in the namespace."""
        return ["nsenter", f"--target={self._holder.pid}", "--mount", "--", *command]

    def mountinfo(self) -> str:
        return Path(f"/proc/{self._holder.pid}/mountinfo").read_text()

    def close(self) -> None:
        assert self._holder.stdin is not None
        self._holder.stdin.close()  # the holder's `read` ends
        self._holder.wait(timeout=30)


class Chroot:
    """A debootstrapped tree to run commands in as root, with /proc and read-only binds
    of this host's local package directories; `close` undoes all of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.namespace = MountNamespace()

    def run(self, command: list[str], timeout: float = 120) -> str:
        """`command` run on the host, but in the chroot's mount namespace."""
        return _run(self.namespace.enter(command), timeout)

    def path(self, host_path: Path | str) -> Path:
        """Where `host_path` is inside the chroot."""
        return self.root / Path(host_path).relative_to("/")

    # --- what this host needs to reach its archive and package index -------------

    def carry_host_configuration(self) -> None:
        """/proc, and what apt and pip here need to reach this host's archive and index."""
        self.run(["mount", "-t", "proc", "proc", str(self.path("/proc"))])  # python, dpkg read it
        for name in APT_CONFIGURATION:
            self.copy_in(Path("/etc/apt") / name)
        for host_file in NAME_RESOLUTION:
            self.replace_file(host_file)
        # Trusted by the chroot's ca-certificates too when python3 pulls it in.
        self.copy_in(LOCAL_CA_CERTIFICATES)
        for config_file in pip_configuration_files():
            self.copy_in(config_file)
        for local_path in pip_local_paths():
            if local_path.is_dir():
                self.bind_readonly(local_path)
            else:
                self.copy_in(local_path)

    def environment(self, **extra: str) -> dict[str, str]:
        """A root login's environment with the pip and proxy settings of this process."""
        carried = {k: v for k, v in os.environ.items() if CARRIED_ENV.fullmatch(k)}
        return {"PATH": ROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", **carried, **extra}

    def copy_in(self, host_path: Path) -> None:
        """Copy a file or directory to the same place in the chroot (not bound: apt and
        update-ca-certificates in the chroot may rewrite it)."""
        if not host_path.exists():
            return
        target = self.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if host_path.is_dir():
            shutil.copytree(host_path, target, dirs_exist_ok=True)
        else:
            shutil.copy2(host_path, target)

    def replace_file(self, host_file: Path) -> None:
        """Put the content of `host_file` at its place in the chroot as a plain file. A
        symbolic link there (resolv.conf often is one) is removed, not written through:
        its target would be read on the host."""
        target = self.path(host_file)
        if target.is_symlink():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(host_file, target)  # follows a link on the host side only

    def bind_readonly(self, host_dir: Path) -> None:
        target = self.path(host_dir)
        target.mkdir(parents=True, exist_ok=True)
        self.run(["mount", "--bind", "-o", "ro", str(host_dir), str(target)])

    # --- running and ending ---------------------------------------------------------

    def start(self, command: str, cwd: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
        """`bash -c command` in the chroot, in its own process group, output to `log`."""
        with open(log, "ab") as out:
            return subprocess.Popen(
                self.namespace.enter(
                    [CHROOT, str(self.root), "bash", "-c", f"cd {cwd} && {command}"]
                ),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def close(self) -> None:
        """Kill what still runs in the chroot, unmount everything, remove the tree."""
        self._kill_processes()
        # Whatever is mounted there, also by an interrupted debootstrap; deepest first.
        for target in sorted(self.mounted(), key=len, reverse=True):
            umount = self.namespace.enter(["umount", target])
            if subprocess.run(umount, capture_output=True).returncode != 0:
                lazy = self.namespace.enter(["umount", "--lazy", target])
                subprocess.run(lazy, capture_output=True)
        left = self.mounted()
        self.namespace.close()
        if left:  # never delete through a mount: it could reach the host's files
            raise AssertionError(f"still mounted in the chroot, not removed: {left}")
        host_mounts = self._mounted_in(Path("/proc/self/mountinfo").read_text())
        if host_mounts:  # made outside the namespace by someone else: leave the tree alone
            raise AssertionError(f"mounted on the host in the chroot, not removed: {host_mounts}")
        shutil.rmtree(os.path.realpath(self.root), ignore_errors=True)  # rmtree stops at a link

    def mounted(self) -> list[str]:
        """Mount points at or under the chroot's root, in the chroot's namespace."""
        return self._mounted_in(self.namespace.mountinfo())

    def _mounted_in(self, mountinfo: str) -> list[str]:
        root = os.path.realpath(self.root)  # mountinfo holds resolved paths
        points = [
            line.split()[4].encode().decode("unicode_escape") for line in mountinfo.splitlines()
        ]
        return [p for p in points if p == root or p.startswith(root + "/")]

    def _kill_processes(self) -> None:
        # /proc/PID/root is the resolved path: compare with the resolved root (a symlink
        # in tmp_path, e.g. /tmp -> /var/tmp, would otherwise leave them all running).
        root = os.path.realpath(self.root)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                inside = os.readlink(entry / "root") == root
            except OSError:
                continue  # gone, or a kernel thread
            if inside:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)


# --- this machine's pip configuration -----------------------------------------------


def _pip(*arguments: str) -> str:
    return _run([sys.executable, "-m", "pip", *arguments])


def pip_configuration_files() -> list[Path]:
    """The configuration files this machine's pip reads (global, user, $PIP_CONFIG_FILE),
    as `pip config debug` lists them; not the venv's own (`site`)."""
    files, scope = [], ""
    for line in _pip("config", "debug").splitlines():
        if not line.startswith(" "):
            scope = line.rstrip(":")
            continue
        match = re.fullmatch(r"  (/\S.*), exists: True", line)
        if match and scope in ("global", "user", "env"):
            files.append(Path(match.group(1)))
    return files


def pip_local_paths() -> list[Path]:
    """Local files and directories that pip's settings name: find-links directories,
    file:// indexes, constraint and certificate files."""
    paths = []
    for line in _pip("config", "list").splitlines():
        key, _, value = line.partition("=")
        for word in value.strip("'\"").split():
            path = Path(unquote(urlsplit(word).path)) if word.startswith("file:") else Path(word)
            if not path.is_absolute() or not path.exists():
                continue
            # A local simple index links to its files beside it (../../files/...).
            if key.endswith("index-url") and path.name == "simple":
                path = path.parent
            paths.append(path)
    return sorted(set(paths))
