"""User story: as root on a fresh Debian 12, the README's set-up commands work as written.

The only tests that reach beyond loopback: a minbase bookworm is debootstrapped from
this host's own apt sources, and the commands inside it install from this host's
Debian mirror and Python package index (tests/fresh_debian.py carries the
configuration for both in). The commands are read from README.md, so the test fails
when the README and reality part.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fresh_debian import (
    Chroot,
    base_system,
    close_keeping_error,
    host_mirror,
    readme_setup_commands,
    unpack,
)
from processes import free_port, wait_until

from debcache.config import upstream_name_for

REPOSITORY = Path(__file__).parent.parent
README = REPOSITORY / "README.md"
CHECKOUT = "/root/debcache"  # where the user cloned it
INSTALL_DEADLINE = 600  # seconds for apt-get and pip over the network, under load
LISTEN_CONFIG = "/root/listen.toml"


def setup_command(index: int) -> str:
    """The README's set-up command `index` without its trailing comment."""
    return re.sub(r"\s+#.*$", "", readme_setup_commands(README)[index])


@pytest.fixture(scope="module")
def base_tarball() -> Path:
    if os.geteuid() != 0:
        pytest.fail("the fresh-Debian tests need root (debootstrap, chroot, mount)")
    return base_system(host_mirror())


@pytest.fixture
def fresh_debian(base_tarball: Path, tmp_path: Path) -> Iterator[Chroot]:
    """A just-debootstrapped Debian 12 holding a copy of this checkout in CHECKOUT."""
    chroot = unpack(base_tarball, tmp_path / "root")
    try:
        chroot.carry_host_configuration()
        copy_checkout(chroot.path(CHECKOUT))
        yield chroot
    except BaseException as exc:
        close_keeping_error(chroot, exc)
        raise
    else:
        chroot.close()


def copy_checkout(target: Path) -> None:
    """The files of this checkout as a clone has them (tracked, and new ones not ignored)."""
    files = ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listing = subprocess.run(
        ["git", "-C", str(REPOSITORY), *files], capture_output=True, check=True
    )
    for name in sorted(set(listing.stdout.decode().split("\0")) - {""}):
        source = REPOSITORY / name
        if source.is_file():  # a tracked file deleted in the work tree is left out
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@contextlib.contextmanager
def running(chroot: Chroot, command: str, log: Path, port: int) -> Iterator[None]:
    """`command` run in the checkout as root until /_/health answers on `port`; stopped
    with SIGTERM (the way systemd stops it) on exit."""
    config = chroot.path(LISTEN_CONFIG)
    config.write_text(f'[server]\nlisten = ["127.0.0.1:{port}"]\n')  # upstreams: apt's
    process = chroot.start(
        command, CHECKOUT, log, chroot.environment(DEBCACHE_CONFIG=LISTEN_CONFIG)
    )
    try:
        wait_until(
            lambda: answers_health(process, port, log),
            f"`{command}` to answer /_/health",
            deadline=INSTALL_DEADLINE,
        )
        yield
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; its output:\n{tail(log)}") from None
    finally:
        stop(process)


def answers_health(process: subprocess.Popen, port: int, log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"exited with {process.returncode} before serving:\n{tail(log)}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_/health", timeout=2) as reply:
            return reply.status == 200 and reply.read() == b"ok\n"
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tail(log: Path, lines: int = 40) -> str:
    # pip 23's warnings about projects missing from a local index drown the rest.
    text = [
        line for line in log.read_text(errors="replace").splitlines() if "is ignored" not in line
    ]
    return "\n".join(text[-lines:])


def installed_copy(chroot: Chroot, relative: str) -> Path:
    """Where the installed debcache holds `relative` (a path inside the package)."""
    found = list(
        chroot.path("/opt/debcache/lib").glob(f"python3*/site-packages/debcache/{relative}")
    )
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_readme_install_serves_on_fresh_debian_again_and_after_a_pull(
    fresh_debian: Chroot, tmp_path: Path
) -> None:
    install_and_serve = setup_command(0)
    mirror = host_mirror().rstrip("/")

    first = tmp_path / "first.log"
    with running(fresh_debian, install_and_serve, first, free_port()):
        pass
    output = first.read_text()
    # No configuration's upstreams: they come from the chroot's apt sources, which
    # debootstrap wrote with the mirror it used.
    assert f"debcache: upstream {upstream_name_for(mirror)}: {mirror}\n" in output, tail(first)
    assert "creating the virtual environment /opt/debcache" in output
    command = fresh_debian.path("/usr/local/bin/debcache")
    assert os.readlink(command) == "/opt/debcache/bin/debcache"
    for documentation in unit_documentation_files():
        assert fresh_debian.path(documentation).is_file(), documentation
    for unit in ("debcache.service", "debcache.socket"):  # README: "Run as a service"
        installed = fresh_debian.path(f"/usr/local/lib/systemd/system/{unit}").read_text()
        assert installed == (REPOSITORY / "systemd" / unit).read_text()
    service = fresh_debian.path("/usr/local/lib/systemd/system/debcache.service").read_text()
    start = re.search(r"^ExecStart=(\S+)", service, re.MULTILINE)
    assert start and os.access(fresh_debian.path(start.group(1)), os.X_OK), start

    # `git pull` brought a change: the same command installs it over the old copy.
    pulled = "PULLED = True  # a commit the user pulled\n"
    with open(fresh_debian.path(f"{CHECKOUT}/debcache/__init__.py"), "a") as module:
        module.write(pulled)
    second = tmp_path / "second.log"
    with running(fresh_debian, install_and_serve, second, free_port()):
        pass
    assert "creating the virtual environment" not in second.read_text(), tail(second)
    assert installed_copy(fresh_debian, "__init__.py").read_text().endswith(pulled)


@pytest.mark.slow
def test_readme_test_command_runs_the_tests_on_fresh_debian(
    fresh_debian: Chroot, tmp_path: Path
) -> None:
    # One quick test file stands for the suite (which holds this test).
    command = f"{setup_command(1)} -q -p no:cacheprovider tests/test_docs.py"
    log = tmp_path / "tests.log"
    process = fresh_debian.start(command, CHECKOUT, log, fresh_debian.environment())
    try:
        returncode = process.wait(timeout=INSTALL_DEADLINE)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"`{command}` took over {INSTALL_DEADLINE} s; its output ended:\n{tail(log)}"
        ) from None
    finally:
        stop(process)
    assert returncode == 0, tail(log)
    assert re.search(r"^\d+ passed", log.read_text(), re.MULTILINE), tail(log)


def unit_documentation_files() -> list[str]:
    """The local files that systemd/debcache.service's Documentation= names."""
    unit = (REPOSITORY / "systemd" / "debcache.service").read_text()
    urls = [u for line in unit.splitlines() if line.startswith("Documentation=")
            for u in line.removeprefix("Documentation=").split()]  # fmt: skip
    assert urls, "the unit has no Documentation="
    return [u.removeprefix("file://") for u in urls if u.startswith("file://")]


def test_the_units_documentation_is_a_file_install_sh_installs() -> None:
    install = (REPOSITORY / "install.sh").read_text()
    installed = re.search(r"^documentation=(\S+)", install, re.MULTILINE)
    assert installed and 'install -D -m 644 README.md "$documentation/README.md"' in install
    assert unit_documentation_files() == [f"{installed.group(1)}/README.md"]


def test_install_deps_removes_its_policy_rc_d_when_apt_get_fails(tmp_path: Path) -> None:
    """In a mount namespace with an empty /usr/sbin (so debootstrap is missing and the
    host's policy-rc.d untouched) and an apt-get that fails."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: no network' >&2\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    script = (
        'mount -t tmpfs tmpfs /usr/sbin && PATH="$0:$PATH" bash .ci/install-deps; '
        'echo "exit $?"; ls -A /usr/sbin'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(fake)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "E: no network" in result.stderr
    installing, *after = result.stdout.splitlines()
    assert "debootstrap" in installing.split()
    assert after == ["exit 100"], result.stdout  # and /usr/sbin empty again


def test_ci_runs_the_readme_test_command_exactly() -> None:
    ci = (REPOSITORY / ".ci" / "run").read_text().splitlines()
    assert setup_command(1) in ci


def test_install_as_another_user_says_to_run_it_as_root() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # The script on stdin: the checkout's directories need not be readable by nobody.
    with open(REPOSITORY / "install.sh") as script:
        result = subprocess.run(
            [*nobody, "bash", "-s"], stdin=script, cwd="/", capture_output=True, text=True
        )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "install.sh: must run as root (it installs a Debian package and writes /opt/debcache); "
        "run it with sudo\n"
    )
