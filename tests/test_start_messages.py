"""User story: a newcomer's first mistakes at start-up get one true line each.

`serve` says "listening on" only once every address listens, names the address that
failed and the remedy for that failure; a data dir that can't be one is reported before
anything listens; a bad $DEBCACHE_CONFIG or $DEBCACHE_DATA_DIR is blamed on the variable,
not on an option. Golden output: the whole of what the user reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

from click.testing import CliRunner
from processes import free_port, wait_until

from debcache.cli import cli

ROOT = Path(__file__).parent.parent


def cli_env(**variables: str) -> dict[str, str | None]:
    return {"DEBCACHE_CONFIG": None, "DEBCACHE_DATA_DIR": None, **variables}


def serve_config(tmp_path: Path) -> Path:
    """A configuration with one upstream (never reached) and a data dir in `tmp_path`."""
    config = tmp_path / "debcache.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
        '[upstreams.debian]\nurls = ["http://127.0.0.1:9/debian"]\n'
    )
    return config


def serve(config: Path, *arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), "serve", *arguments], env=cli_env())
    return result.exit_code, result.output


# --- listening --------------------------------------------------------------------------


def test_ipv4_and_ipv6_wildcards_on_one_port_both_listen(tmp_path: Path) -> None:
    config, port = serve_config(tmp_path), free_port()
    command = [sys.executable, "-m", "debcache", "--config", str(config), "serve"]
    command += ["--listen", f"0.0.0.0:{port}", "--listen", f"[::]:{port}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBCACHE_")}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:

        def both_answer() -> bool:
            assert process.poll() is None, process.stderr.read()
            try:
                for host in ("127.0.0.1", "[::1]"):
                    with urllib.request.urlopen(f"http://{host}:{port}/_/health", timeout=1):
                        pass
                return True
            except OSError:
                return False

        wait_until(both_answer, "debcache to answer on 127.0.0.1 and ::1")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    listening = [line for line in stderr.splitlines() if "listening on" in line]
    assert listening == [
        f"debcache: listening on http://0.0.0.0:{port}/",
        f"debcache: listening on http://[::]:{port}/",
    ]


def test_an_address_given_twice_is_named_before_anything_listens(tmp_path: Path) -> None:
    port = free_port()
    listen = ["--listen", f"127.0.0.1:{port}"]
    assert serve(serve_config(tmp_path), *listen, *listen) == (
        1,
        f"Error: --listen 127.0.0.1:{port} is given twice. Give each address once.\n",
    )


def test_overlapping_addresses_are_named_with_the_one_they_overlap(tmp_path: Path) -> None:
    port = free_port()
    output = serve(
        serve_config(tmp_path), "--listen", f"0.0.0.0:{port}", "--listen", f"127.0.0.1:{port}"
    )
    assert output == (
        1,
        f"Error: Cannot listen on 127.0.0.1:{port}: it overlaps --listen 0.0.0.0:{port}, "
        f"on which debcache listens already. Drop one of the two; 0.0.0.0:{port} covers "
        f"every IPv4 address, [::]:{port} every IPv6 one.\n",
    )


# --- the data dir -----------------------------------------------------------------------


def test_a_data_dir_under_a_file_is_reported_before_listening(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.touch()
    result = CliRunner().invoke(
        cli,
        ["--config", str(serve_config(tmp_path)), "--data-dir", str(afile / "sub"), "serve"],
        env=cli_env(),
    )
    assert (result.exit_code, result.output) == (
        1,
        f"Error: Cannot create data dir {afile / 'sub'} (from --data-dir): {afile} is a file, "
        "not a directory. Point --data-dir at a directory, or at a path to create.\n",
    )


def test_a_data_dir_that_is_a_file_is_blamed_on_serves_own_option(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.touch()
    assert serve(serve_config(tmp_path), "--data-dir", str(afile)) == (
        1,
        f"Error: Cannot create data dir {afile} (from --data-dir): it is a file. "
        "Point --data-dir at a directory, or at a path to create.\n",
    )


# --- environment variables are named as the source -------------------------------------


def test_a_directory_in_debcache_config_is_blamed_on_the_variable(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["recordings"], env=cli_env(DEBCACHE_CONFIG=str(tmp_path)))
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {tmp_path}: a directory, not a configuration file (named by $DEBCACHE_CONFIG). "
        f"Point $DEBCACHE_CONFIG at the TOML file, e.g. {tmp_path / 'debcache.toml'}.\n",
    )


def test_a_file_in_debcache_data_dir_is_blamed_on_the_variable(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.touch()
    result = CliRunner().invoke(cli, ["recordings"], env=cli_env(DEBCACHE_DATA_DIR=str(afile)))
    assert (result.exit_code, result.output) == (
        1,
        f"Error: Data dir {afile} (from $DEBCACHE_DATA_DIR) is a file, not a directory. "
        "Point $DEBCACHE_DATA_DIR at the directory `debcache serve` uses.\n",
    )


def test_an_unreadable_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "debcache.toml"
    config.write_text("")
    config.chmod(0)
    # As root, drop the capabilities that read any file; as another user, nothing to do.
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    prefix = drop if os.geteuid() == 0 else []
    command = [*prefix, sys.executable, "-m", "debcache", "--config", str(config), "recordings"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBCACHE_")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: {config}: this user may not read it (named by --config). Run debcache as the "
        "user `debcache serve` runs as, or name another with --config.\n",
    )


# --- the build ---------------------------------------------------------------------------


def test_the_build_uses_an_spdx_license_and_a_bounded_setuptools() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # A table `license = {text = ...}` is deprecated from setuptools 77 and to break in 2027.
    assert pyproject["project"]["license"] == "MIT"
    (setuptools,) = pyproject["build-system"]["requires"]
    assert setuptools.startswith("setuptools>=77,") and "<" in setuptools
