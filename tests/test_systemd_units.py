"""User story: as an admin, I install systemd/debcache.{service,socket} as the README says
and get a hardened service that runs the command install.sh installed, on the socket
debcache listens on by default, with its data where debcache looks for it as root.

systemd-analyze checks the units offline (no systemd needed as PID 1): `verify` on a
copy whose ExecStart names this checkout's debcache instead of install.sh's venv (the
one difference), `security --offline=true` on the units as shipped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

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
