"""User story: one branch pins an install that used debian, -updates and debian-security.

A recording spanning two upstreams (each with its own key) freezes into one
manifest, every suite verified with its own keyring, and one branch serves all
three sources to the real apt-get with the mirror gone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive, build_security_archive, build_test_archive, point_release
from debcache_server import DebcacheServer, make_config, write_config_file
from fake_mirror import FakeMirror
from workflow import freeze_json, run

from debcache.config import Upstream


@pytest.fixture
def archives(tmp_path: Path) -> tuple[Archive, Archive]:
    main = build_test_archive(tmp_path / "www")
    security = build_security_archive(tmp_path / "www")  # its own key
    return main, security


@pytest.fixture
def mirror(archives: tuple[Archive, Archive]):
    with FakeMirror(archives[0].root) as server:
        yield server


@pytest.fixture
def cache(tmp_path: Path, archives: tuple[Archive, Archive], mirror: FakeMirror):
    main, security = archives
    config = make_config(
        tmp_path / "data", {"debian": [f"{mirror.url}/debian"]}, keyring=main.key.keyring
    )
    config.upstreams["debian-security"] = Upstream(
        "debian-security",
        (f"{mirror.url}/debian-security",),
        keyring=security.key.keyring,
        proxy_hosts=config.upstreams["debian"].proxy_hosts,
    )
    config = dataclasses.replace(config, upstreams=dict(config.upstreams))
    server = DebcacheServer(config)
    server.config_file = write_config_file(config, tmp_path / "debcache.toml")
    server.start()
    yield server
    server.stop()


def sources(archives: tuple[Archive, Archive], base: str, security_base: str) -> list[str]:
    main, security = archives
    return [
        f"deb [signed-by={main.key.keyring}] {base} bookworm main",
        f"deb [signed-by={main.key.keyring}] {base} bookworm-updates main",
        f"deb [signed-by={security.key.keyring}] {security_base} bookworm-security main",
    ]


PACKAGES = ("hello", "greet-sandbox", "greet-tools")


def test_one_manifest_and_one_branch_span_two_upstreams(
    cache: DebcacheServer,
    archives: tuple[Archive, Archive],
    mirror: FakeMirror,
    tmp_path: Path,
) -> None:
    # Recorded in proxy mode: the sources name the mirror, as on a real host.
    recorded = AptRoot(tmp_path / "recorded")
    recorded.write_sources(
        sources(archives, f"{mirror.url}/debian", f"{mirror.url}/debian-security")
    )
    proxy = f"http://multi@127.0.0.1:{cache.port}/"
    assert recorded.update(proxy=proxy).returncode == 0
    result = recorded.download(*PACKAGES, proxy=proxy)
    assert result.returncode == 0, result.stderr
    cache.wait_for_fetches(len(mirror.requests), recording="multi")
    before = recorded.downloaded()
    assert any("deb12u2" in name for name in before)  # libgreet1 from the security archive

    frozen = freeze_json(cache, "multi", "--promote", "stable")
    manifest = json.loads(run(cache, "manifests", "show", frozen["id"][:12], "--json").output)
    assert set(manifest["releases"]) == {
        "debian bookworm",
        "debian bookworm-updates",
        "debian-security bookworm-security",
    }
    upstream_of = {e["package"]: e["upstream"] for e in manifest["entries"] if e["package"]}
    assert upstream_of["greet-sandbox"] == "debian-security"
    assert upstream_of["hello"] == "debian"

    point_release(archives[0])
    mirror.stop()
    pinned = AptRoot(tmp_path / "pinned")
    pinned.write_sources(
        sources(
            archives, f"{cache.url}/pin/stable/debian", f"{cache.url}/pin/stable/debian-security"
        )
    )
    update = pinned.update()
    assert update.returncode == 0, update.stdout + update.stderr
    assert pinned.download(*PACKAGES).returncode == 0
    assert pinned.downloaded() == before


def test_each_suite_is_verified_with_its_own_keyring(
    cache: DebcacheServer,
    archives: tuple[Archive, Archive],
    mirror: FakeMirror,
    tmp_path: Path,
) -> None:
    main, security = archives
    # The security archive signed by the main key: its configured keyring must refuse it.
    security.publish_suite(
        "bookworm-security", [], codename="bookworm-security", signing_key=main.key
    )
    apt = AptRoot(tmp_path / "apt")
    url = f"{cache.url}/record/mixed/debian-security"
    apt.write_sources([f"deb [signed-by={main.key.keyring}] {url} bookworm-security main"])
    assert apt.update().returncode == 0
    cache.wait_for_fetches(len(mirror.requests), recording="mixed")
    result = run(cache, "freeze", "mixed")
    assert result.exit_code == 1
    assert "debian-security/dists/bookworm-security/InRelease: bad signature" in result.output
