"""The lab's workflow as tests script it: record an install, freeze it, look at manifests.

Everything runs for real: apt-get with isolated state through debcache, and the
`debcache` command line (click's runner, in-process) on the same data dir.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from apt import AptRoot
from archive_fixture import Archive
from click.testing import CliRunner, Result
from debcache_server import DebcacheServer, make_config, write_config_file
from fake_mirror import FakeMirror
from http_client import get

from debcache.cli import cli


def keyed_debcache_for(
    tmp_path: Path, mirror: FakeMirror, archive: Archive, branches: dict | None = None
) -> DebcacheServer:
    """A started debcache whose `debian` upstream trusts the archive's key; has .config_file."""
    config = make_config(
        tmp_path / "data",
        {"debian": [f"{mirror.url}/debian"]},
        keyring=archive.key.keyring,
        coalesce_window=0,
    )
    config = dataclasses.replace(config, branches=branches or {})
    server = DebcacheServer(config)
    server.config_file = write_config_file(config, tmp_path / "debcache.toml")
    return server.start()


def run(server: DebcacheServer, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(server.config_file), *args])


def record_install(
    server: DebcacheServer,
    apt: AptRoot,
    archive: Archive,
    mirror: FakeMirror,
    recording: str,
    *packages: str,
    via_proxy: bool = False,
) -> None:
    """apt-get update (+ download) through /record/<recording>/ or as proxy user; waits for
    the log rows (one per mirror request, as every request here goes upstream)."""
    before, rows_before = len(mirror.requests), len(server.fetches(recording))
    had = set(apt.downloaded())
    base = f"{server.url}/record/{recording}/debian"
    proxy = None
    if via_proxy:
        base, proxy = f"{mirror.url}/debian", f"http://{recording}@127.0.0.1:{server.port}/"
    apt.write_sources([f"deb [signed-by={archive.key.keyring}] {base} bookworm main"])
    assert apt.update(proxy=proxy).returncode == 0
    if packages:
        result = apt.download(*packages, proxy=proxy)
        assert result.returncode == 0, result.stderr
    wait_for_install_rows(server, recording, rows_before + len(mirror.requests) - before, apt, had)


def wait_for_install_rows(
    server: DebcacheServer, recording: str, expected: int, apt: AptRoot, had: set[str]
) -> None:
    """Until the recording has `expected` rows and one for each .deb apt downloaded since
    it had `had`. The recording may have rows already, and files served from the cache
    reach no mirror, so a count alone can be reached before the .debs (which come last)
    are logged."""
    # apt names a file name_EPOCH%3aVERSION_ARCH.deb; the pool name has no epoch.
    downloaded = {re.sub(r"_\d+%3a", "_", name) for name in set(apt.downloaded()) - had}

    def complete(rows: list[dict]) -> bool:
        names = {row["path"].rpartition("/")[2] for row in rows}
        return len(rows) >= expected and downloaded <= names

    server.wait_for_rows(complete, f"the rows of {sorted(downloaded)}", recording)


def freeze_json(server: DebcacheServer, *args: str) -> dict:
    result = run(server, "freeze", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def manifest_json(server: DebcacheServer, manifest_id: str) -> dict:
    result = run(server, "manifests", "show", manifest_id[:12], "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def pin_a_recorded_inrelease(server: DebcacheServer, branch: str) -> str:
    """Record bookworm's InRelease as run-1, freeze it and promote it to `branch`; its id."""
    assert get(server.url, "/record/run-1/debian/dists/bookworm/InRelease").status == 200
    server.wait_for_fetches(1, recording="run-1")
    return freeze_json(server, "run-1", "--promote", branch)["id"]
