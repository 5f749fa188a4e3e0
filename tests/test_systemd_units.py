"""User story: as an admin, I install systemd/debcache.{service,socket} as the README says
and get a hardened service that runs the command install.sh installed, on the socket
debcache listens on by default, with its data where debcache looks for it as root.

systemd-analyze checks the units offline (no systemd needed as PID 1): `verify` on a
copy whose ExecStart names this checkout's debcache instead of install.sh's venv (the
one difference), `security --offline=true` on the units as shipped. Then a systemd
booted in namespaces of its own (tests/booted_systemd.py) runs debcache under the
service's sandbox, and the README's commands against its data.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

from archive_fixture import Archive
from booted_systemd import BootedSystemd
from fake_mirror import FakeMirror
from processes import free_port, wait_until

from debcache.config import DEFAULT_CONFIG_PATH, DEFAULT_LISTEN

REPOSITORY = Path(__file__).parent.parent
UNITS = REPOSITORY / "systemd"
INSTALL = REPOSITORY / "install.sh"
MAX_EXPOSURE = 2.0  # issue 16: "an exposure of at most 2.0"


def settings(unit: str) -> dict[str, list[str]]:
    """Each key of a unit file with its values, in order (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def one(unit: str, key: str) -> str:
    values = settings(unit).get(key, [])
    assert len(values) == 1, f"{unit}: {key}= is set {len(values)} times: {values}"
    return values[0]


def installed_command() -> str:
    """The console script in install.sh's venv."""
    venv = re.search(r"^venv=(\S+)", INSTALL.read_text(), re.MULTILINE)
    assert venv, "install.sh sets no venv="
    return f"{venv.group(1)}/bin/debcache"


def analyze(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *arguments], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """verify checks every key and that ExecStart's command exists; the copy runs this
    checkout's debcache (`sys.executable -m debcache`) where install.sh's would be."""
    command = tmp_path / "debcache"
    command.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m debcache "$@"\n')
    command.chmod(0o755)
    for unit in ("debcache.service", "debcache.socket"):
        text = (UNITS / unit).read_text()
        (tmp_path / unit).write_text(text.replace(installed_command(), str(command)))
    result = analyze("verify", "debcache.service", "debcache.socket", cwd=tmp_path)
    # verify only warns about a bad value; the units' own lines must be silent.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "debcache" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_the_service_is_exposed_at_most_2() -> None:
    result = analyze("security", "--offline=true", str(UNITS / "debcache.service"), cwd=UNITS)
    assert result.returncode == 0, result.stderr
    level = re.search(r"Overall exposure level for debcache\.service: (\d+\.\d+)", result.stdout)
    assert level, result.stdout
    weaknesses = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert float(level.group(1)) <= MAX_EXPOSURE, "\n".join([level.group(0), *weaknesses])


def test_the_service_runs_the_command_install_sh_installs() -> None:
    executable, *arguments = shlex.split(one("debcache.service", "ExecStart"))
    assert executable == installed_command()
    # The arguments are ones this checkout's command line takes.
    result = subprocess.run(
        [sys.executable, "-m", "debcache", *arguments, "--help"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_install_sh_installs_the_units_where_systemd_looks() -> None:
    """Beside the code they run, so that a reinstall updates both (not enabled: the
    README's "Run as a service" does that)."""
    units = re.search(r"^units=(\S+)", INSTALL.read_text(), re.MULTILINE)
    assert units, "install.sh sets no units="
    result = subprocess.run(
        ["systemd-analyze", "unit-paths"], capture_output=True, text=True, timeout=60
    )
    assert units.group(1) in result.stdout.split(), result.stdout
    assert 'install -D -m 644 -t "$units" systemd/debcache.service systemd/debcache.socket' in (
        INSTALL.read_text()
    )


def test_the_service_keeps_its_data_and_reads_its_config_where_debcache_does_as_root() -> None:
    """DynamicUser runs debcache as a user that is not root, whose default data dir would
    be under its home: ExecStart names the state directory, root's default."""
    state = one("debcache.service", "StateDirectory")
    arguments = shlex.split(one("debcache.service", "ExecStart"))
    assert (
        arguments[1:3] == ["--data-dir", f"/var/lib/{state}"] == ["--data-dir", "/var/lib/debcache"]
    )
    configuration = one("debcache.service", "ConfigurationDirectory")
    assert DEFAULT_CONFIG_PATH.parent == Path("/etc") / configuration
    assert one("debcache.service", "DynamicUser") == "yes"
    assert one("debcache.service", "Type") == "notify"
    assert one("debcache.service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_the_socket_listens_where_debcache_does_by_default() -> None:
    listen = [f"{host}:{port}" for host, port in DEFAULT_LISTEN]
    assert settings("debcache.socket")["ListenStream"] == listen
    assert one("debcache.socket", "Service") == "debcache.service"
    # Starting the service alone brings the socket, so the service never binds the port.
    assert "debcache.socket" in one("debcache.service", "Requires").split()


# --- under a real systemd -------------------------------------------------------


def readme_service_function() -> str:
    """The README's shell function that runs debcache as the service's user."""
    readme = (REPOSITORY / "README.md").read_text()
    found = re.search(r"^( *)(debcache-service\(\) \{.*?^\1\})$", readme, re.M | re.S)
    assert found, "README.md has no debcache-service() function"
    return "\n".join(line.removeprefix(found.group(1)) for line in found.group(2).splitlines())


def sandboxed_unit() -> str:
    """debcache.service as shipped, except that a system call the filter refuses kills it
    (SIGSYS) instead of failing with EPERM, so that no refused call goes unseen."""
    unit = (UNITS / "debcache.service").read_text()
    old = "SystemCallErrorNumber=EPERM\n"
    assert unit.count(old) == 1, f"debcache.service: no single {old!r}"
    return unit.replace(old, "")


def socket_on(port: int) -> str:
    """A drop-in that moves debcache.socket to a loopback port of the test's."""
    return f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def healthy(url: str) -> bool:
    try:
        return get(f"{url}/_/health").strip() == b"ok"
    except (urllib.error.URLError, ConnectionError):
        return False


def failed(system: BootedSystemd) -> bool:
    """False while debcache.service runs or starts for the first time; raises once it
    failed (a sandbox that kills it at start would otherwise only show as a timeout)."""
    show = system.run("systemctl", "show", "debcache.service", "-p", "NRestarts,Result")
    if sorted(show.stdout.split()) != ["NRestarts=0", "Result=success"]:
        raise AssertionError(f"debcache.service failed: {show.stdout}{system.journal('debcache')}")
    return False


def test_debcache_runs_under_the_services_sandbox_and_the_readme_commands_work(
    archive: Archive, mirror: FakeMirror
) -> None:
    """Live and recorded requests (gpgv checks the InRelease), a freeze and promote of a
    re-signed branch through the README's `systemd-run` (gpg makes the key and signs), gc
    and verify: all under DynamicUser, the seccomp filter and the rest, with every file
    of the data dir the service user's."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with BootedSystemd() as system:
        system.write("/etc/systemd/system/debcache.service", sandboxed_unit())
        system.write("/etc/systemd/system/debcache.socket.d/test.conf", socket_on(port))
        system.write("/etc/debcache/archive-keyring.gpg", archive.key.keyring.read_bytes())
        system.write(
            "/etc/debcache/debcache.toml",
            f'[upstreams.debian]\nurls = ["{mirror.url}/debian"]\n'
            'keyring = "/etc/debcache/archive-keyring.gpg"\n\n'
            "[branches.rel]\nresign = true\n",
        )
        # What `debcache serve` as root left (the README's set-up): systemd moves it to
        # /var/lib/private/debcache and gives it to the service's user.
        system.write("/var/lib/debcache/left-by-root", "")
        for command in (
            # What a boot would have started, for journalctl and systemd-run:
            ["systemctl", "start", "systemd-journald.socket", "systemd-journald.service"],
            ["systemctl", "start", "dbus.socket"],
            ["systemctl", "daemon-reload"],
            # The README's sequence: returns once debcache said READY=1.
            ["systemctl", "enable", "--now", "debcache.socket", "debcache.service"],
        ):
            result = system.run(*command)
            assert result.returncode == 0, result.stderr + system.journal("debcache")
        wait_until(
            lambda: healthy(url) or failed(system),
            lambda: system.journal("debcache"),
            deadline=60,
        )

        recorded = [
            "dists/bookworm/InRelease",
            "dists/bookworm/main/binary-amd64/Packages.xz",
            "pool/main/b/base-files/base-files_12.4+deb12u1_amd64.deb",
        ]
        for path in recorded:
            assert get(f"{url}/record/run1/debian/{path}") == archive.read(path), path
        function = readme_service_function()
        for command in ("freeze run1 --promote rel", "gc --max-size 1G", "verify"):
            result = system.run("bash", "-c", f"{function}\ndebcache-service {command}")
            assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        listing = system.run("debcache", "--data-dir", "/var/lib/debcache", "branches")
        assert listing.returncode == 0 and "rel" in listing.stdout, listing.stderr

        release = get(f"{url}/pin/rel/debian/dists/bookworm/InRelease")
        key = get(f"{url}/_/key.gpg")
        with tempfile.TemporaryDirectory() as home:
            keyring = Path(home, "key.gpg")
            subprocess.run(
                ["gpg", "--homedir", home, "--batch", "--dearmor", "-o", str(keyring)],
                input=key,
                check=True,
                capture_output=True,
            )
            Path(home, "InRelease").write_bytes(release)
            verified = subprocess.run(
                ["gpgv", "--homedir", home, "--keyring", str(keyring), f"{home}/InRelease"],
                capture_output=True,
                text=True,
            )
        assert verified.returncode == 0, verified.stderr

        show = system.run("systemctl", "show", "debcache.service", "-p", "NRestarts,SubState")
        assert sorted(show.stdout.split()) == ["NRestarts=0", "SubState=running"], system.journal(
            "debcache"
        )
        owners = system.run("stat", "-c", "%U %u", "/var/lib/private/debcache").stdout.split()
        strangers = system.run(
            "find", "/var/lib/private/debcache", "!", "-uid", owners[1]
        ).stdout.split()
        assert not strangers, f"not the service user's ({owners}): {strangers}"
        assert system.run("readlink", "/var/lib/debcache").stdout.strip() == "private/debcache"
        assert system.run("test", "-f", "/var/lib/private/debcache/left-by-root").returncode == 0


def fetch_loop(url: str, expected: bytes, stop: threading.Event) -> dict[str, int]:
    """Fetch `url` until `stop`; count answers, refused connections and wrong bodies."""
    counts = {"right": 0, "refused": 0, "wrong": 0}
    while not stop.is_set():
        try:
            body = get(url)
        except urllib.error.URLError as error:
            refused = isinstance(error.reason, ConnectionRefusedError)
            counts["refused" if refused else "wrong"] += 1
            continue
        except (ConnectionError, OSError):
            counts["wrong"] += 1
            continue
        counts["right" if body == expected else "wrong"] += 1
    return counts


def test_the_socket_keeps_every_connection_through_reload_restart_and_stop_start(
    archive: Archive, mirror: FakeMirror
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with BootedSystemd() as system:
        system.write(
            "/etc/systemd/system/debcache.socket.d/test.conf",
            socket_on(port),
        )
        system.write("/etc/debcache/archive-keyring.gpg", archive.key.keyring.read_bytes())
        system.write(
            "/etc/debcache/debcache.toml",
            f'[upstreams.debian]\nurls = ["{mirror.url}/debian"]\n'
            'keyring = "/etc/debcache/archive-keyring.gpg"\n',
        )
        for command in (
            ["systemctl", "start", "systemd-journald.socket", "systemd-journald.service"],
            ["systemctl", "daemon-reload"],
            # The README's sequence: returns once debcache said READY=1.
            ["systemctl", "enable", "--now", "debcache.socket", "debcache.service"],
        ):
            result = system.run(*command)
            assert result.returncode == 0, result.stderr + system.journal("debcache")
        path = "dists/bookworm/InRelease"
        expected = archive.read(path)
        assert get(f"{url}/debian/{path}") == expected

        stop = threading.Event()
        counts: dict[str, int] = {}
        client = threading.Thread(
            target=lambda: counts.update(fetch_loop(f"{url}/debian/{path}", expected, stop))
        )
        client.start()
        try:
            for command in (
                ["systemctl", "reload", "debcache"],  # HUP: new code, sockets kept
                ["systemctl", "restart", "debcache"],  # the socket stays
                ["systemctl", "stop", "debcache.service"],  # the next connection starts it
                ["systemctl", "start", "debcache.service"],
                ["systemctl", "reload", "debcache"],
            ):
                result = system.run(*command)
                assert result.returncode == 0, result.stderr + system.journal("debcache")
                wait_until(
                    lambda: (
                        "ActiveState=active"
                        in system.run("systemctl", "show", "debcache", "-p", "ActiveState").stdout
                    ),
                    lambda: system.journal("debcache"),
                    deadline=60,
                )
        finally:
            stop.set()
            client.join()
        assert counts["refused"] == 0 and counts["wrong"] == 0, counts
        assert counts["right"] > 0, counts
        show = system.run("systemctl", "show", "debcache.service", "-p", "NRestarts,Result")
        assert sorted(show.stdout.split()) == ["NRestarts=0", "Result=success"], system.journal(
            "debcache"
        )
