"""User story: `debcache serve` works with no config on a Debian host, and a bad config says why.

Upstreams come from the host's apt sources (one-line and deb822 formats); a
configuration file is validated at start with one line naming file, key and
reason. The real `debcache` command is run for the start-up checks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from processes import free_port, start_serve

from debcache.cli import cli
from debcache.config import (
    DEBIAN_ARCHIVE_KEYRING,
    discover_upstreams,
    load_config,
    toml_table,
)


def write_apt_dir(root: Path) -> Path:
    apt = root / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(
        "# a comment\n"
        "deb http://mirror.example.org/debian bookworm main contrib\n"
        "deb-src http://mirror.example.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/extra.gpg] "
        "http://extra.example.org/extra/ stable main\n"
        "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"
    )
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://mirror.example.org/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://second.example.org/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://disabled.example.org/debian-old\n"
        "Suites: buster\n"
        "Components: main\n"
        "Enabled: no\n"
    )
    (apt / "sources.list.d" / "ignored.list.disabled").write_text(
        "deb http://ignored.example.org/ignored stable main\n"
    )
    return apt


def test_upstreams_are_derived_from_the_hosts_apt_sources(tmp_path: Path) -> None:
    upstreams = discover_upstreams(write_apt_dir(tmp_path))
    assert sorted(upstreams) == ["debian", "debian-security", "extra"]
    debian = upstreams["debian"]
    assert debian.urls == ("http://mirror.example.org/debian", "http://second.example.org/debian")
    assert debian.proxy_hosts == ("mirror.example.org", "second.example.org")
    assert debian.keyring == DEBIAN_ARCHIVE_KEYRING
    assert upstreams["extra"].keyring == Path("/etc/apt/keyrings/extra.gpg")
    assert upstreams["debian-security"].urls == ("http://mirror.example.org/debian-security",)


def test_with_no_file_the_defaults_apply(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DEBCACHE_CONFIG", raising=False)
    monkeypatch.setattr("debcache.config.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    config = load_config(None, apt_dir=write_apt_dir(tmp_path))
    assert config.listen == (("0.0.0.0", 3142),)
    assert config.source is None
    assert "debian-security" in config.upstreams
    expected = Path("/var/lib/debcache") if os.geteuid() == 0 else None
    if expected:
        assert config.data_dir == expected


def test_data_dir_for_non_root_follows_xdg(monkeypatch, tmp_path: Path) -> None:
    from debcache import config as config_module

    monkeypatch.setattr(config_module.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert config_module.default_data_dir() == tmp_path / "xdg" / "debcache"


def test_a_full_config_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "debcache.toml"
    path.write_text(
        """
[server]
listen = ["127.0.0.1:3142", "[::1]:3143"]
data_dir = "/srv/debcache"
admin_token = "secret"

[upstreams.debian]
urls = ["http://mirror.example.org/debian/", "https://mirror2.example.org:8443/debian"]
keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
timeout = 12

[upstreams.debian-security]
urls = ["http://mirror.example.org/debian-security"]
proxy_hosts = ["security.example.org", "mirror.example.org:80"]

[branches.xen-4-19]
fill = "verified"
resign = true
grace = "30m"
"""
    )
    config = load_config(path)
    assert config.listen == (("127.0.0.1", 3142), ("::1", 3143))
    assert config.data_dir == Path("/srv/debcache")
    debian = config.upstreams["debian"]
    assert debian.urls == (
        "http://mirror.example.org/debian",
        "https://mirror2.example.org:8443/debian",
    )
    assert debian.proxy_hosts == ("mirror.example.org", "mirror2.example.org:8443")
    assert debian.timeout == 12
    assert config.upstreams["debian-security"].proxy_hosts == (
        "security.example.org",
        "mirror.example.org:80",
    )
    branch = config.branches["xen-4-19"]
    assert (branch.fill, branch.resign, branch.grace) == ("verified", True, 1800)


BAD_CONFIGS = [
    ("[server]\nlisten_on = 1\n", "server.listen_on: unknown key"),
    ('[server]\nlisten = ["nowhere"]\n', "server.listen: 'nowhere' is not HOST:PORT"),
    ("[upstreams.debian]\nurls = []\n", "upstreams.debian.urls: missing"),
    ('[upstreams.debian]\nurls = ["ftp://mirror.example.org/debian"]\n', "is not an http"),
    ('[upstreams.pin]\nurls = ["http://mirror.example.org/debian"]\n', "reserved"),
    ('[upstreams.debian]\nurls = ["http://mirror.example.org/debian"]\nmirror = 1\n', "mirror"),
    ('[upstreams.debian]\nurls = ["http://mirror.example.org/d"]\ntimeout = "x"\n', "timeout"),
    ('[branches.b]\nfill = "sometimes"\n', "branches.b.fill"),
    ('[branches."xen-4.19"]\nfill = "x"\n', "branches.\"xen-4.19\".fill: 'x' is not a fill"),
    ('[upstreams."deb.ian"]\nurls = []\n', 'upstreams."deb.ian".urls: missing'),
    ("[server\n", "cannot read it"),
    ("surprise = 1\n", "surprise: unknown key"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_a_bad_config_is_one_line_naming_file_key_and_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["--config", str(path), "serve"])
    assert result.exit_code == 1
    output = result.output.strip()
    assert output.startswith("Error: ") and "\n" not in output, output
    assert str(path) in output and message in output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["xen-4.19", "b1", "debian+ports", "x.y_z", ""])
def test_a_table_named_for_the_user_is_valid_toml_for_that_name(name: str) -> None:
    document = tomllib.loads(f"{toml_table('branches', name)}\nresign = true\n")
    assert document == {"branches": {name: {"resign": True}}}


def test_a_config_error_quotes_a_dotted_branch_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[branches]\n"xen-4.19" = "verified"\n')
    result = CliRunner().invoke(cli, ["--config", str(path), "serve"])
    assert result.exit_code == 1
    header = '[branches."xen-4.19"]'
    assert result.output == f"Error: {path}: {header} must be a table. Write it as {header}.\n"


def test_a_missing_config_file_is_reported(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "serve"])
    assert result.exit_code == 1
    assert "no such configuration file" in result.output


def test_debcache_serve_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "debcache.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{tmp_path / "data"}"\n'
        '[upstreams.debian]\nurls = ["http://127.0.0.1:9/debian"]\n'
    )
    process = start_serve(config, port, stderr=subprocess.PIPE, text=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_/health") as reply:
            assert reply.read() == b"ok\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        log = process.stderr.read()
        assert f"listening on http://127.0.0.1:{port}/" in log
        assert '"GET /_/health" 200' in log
        assert (tmp_path / "data" / "debcache.db").exists()
    finally:
        process.kill()
        process.wait()


def test_a_busy_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "debcache.toml"
        config.write_text('[upstreams.debian]\nurls = ["http://127.0.0.1:9/debian"]\n')
        result = CliRunner().invoke(
            cli,
            [
                "--config",
                str(config),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(tmp_path / "d"),
            ],
        )
    assert result.exit_code == 1
    assert "Cannot listen on" in result.output and "--listen" in result.output


def test_the_example_config_in_the_repository_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "etc" / "debcache.toml")
    assert set(config.upstreams) == {"debian", "debian-security"}
    assert all("example.org" in url for u in config.upstreams.values() for url in u.urls)


def test_proxy_hosts_must_be_host_or_host_port(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[upstreams.debian]\nurls = ["http://mirror.example.org/debian"]\n'
        'proxy_hosts = ["mirror.example.org:abc"]\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(path), "serve"])
    assert result.exit_code == 1 and "upstreams.debian.proxy_hosts" in result.output


def test_a_missing_keyring_is_a_start_up_error(tmp_path: Path) -> None:
    path = tmp_path / "debcache.toml"
    path.write_text(
        '[upstreams.debian]\nurls = ["http://mirror.example.org/debian"]\n'
        f'keyring = "{tmp_path / "missing.gpg"}"\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(path), "serve"])
    assert result.exit_code == 1
    assert "upstreams.debian.keyring" in result.output and "missing.gpg" in result.output


def test_resign_without_gpg_fails_at_start_not_at_the_first_request(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "debcache.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{tmp_path / "data"}"\n'
        '[upstreams.debian]\nurls = ["http://127.0.0.1:9/debian"]\n'
        "[branches.b1]\nresign = true\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "debcache", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path / "no-tools"), "HOME": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "gpg is not installed" in result.stderr
    assert "Traceback" not in result.stderr
