"""User story: a frozen -updates suite keeps installing after its Valid-Until has passed.

Both remedies, with the real apt-get: the client says check-valid-until=no, or
the branch is served re-signed by debcache's own key without Valid-Until.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive, build_test_archive, updates_packages
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import freeze_json, keyed_debcache_for, run

from debcache.config import Branch, load_config

SUITE = "bookworm-updates"


@pytest.fixture
def expired_archive(tmp_path: Path) -> Archive:
    archive = build_test_archive(tmp_path / "www")
    expired = datetime.now(UTC) - timedelta(days=7)
    archive.publish_suite(
        SUITE,
        updates_packages(),
        codename=SUITE,
        date=expired - timedelta(days=7),
        valid_until=expired,
    )
    return archive


@pytest.fixture
def cache(tmp_path: Path, expired_archive: Archive):
    with FakeMirror(expired_archive.root) as mirror:
        branches = {"resigned": Branch("resigned", resign=True)}
        server = keyed_debcache_for(tmp_path, mirror, expired_archive, branches=branches)
        server.mirror = mirror
        yield server
        server.stop()


def update(apt: AptRoot, url: str, keyring: Path, options: str = ""):
    apt.write_sources([f"deb [signed-by={keyring}{options}] {url} {SUITE} main"])
    return apt.update()


def test_both_remedies_for_an_expired_frozen_release(
    cache: DebcacheServer, expired_archive: Archive, tmp_path: Path
) -> None:
    keyring = expired_archive.key.keyring
    # The lab records with the client-side remedy already (the live suite is expired too).
    recorded = update(
        AptRoot(tmp_path / "rec"), f"{cache.url}/record/r/debian", keyring, " check-valid-until=no"
    )
    assert recorded.returncode == 0, recorded.stderr
    cache.wait_for_fetches(len(cache.mirror.requests), recording="r")
    manifest = freeze_json(cache, "r", "--promote", "plain")["id"]
    assert run(cache, "promote", "resigned", manifest[:12]).exit_code == 0

    # Plain pin, plain apt: apt refuses the expired Release, as it would from a mirror.
    refused = update(AptRoot(tmp_path / "plain"), f"{cache.url}/pin/plain/debian", keyring)
    assert refused.returncode != 0
    assert "is expired" in refused.stdout + refused.stderr
    warned = get(cache.url, f"/pin/plain/debian/dists/{SUITE}/InRelease")
    assert "check-valid-until=no" in (warned.header("Warning") or "")
    # Remedy 1: the client ignores Valid-Until.
    relaxed = update(
        AptRoot(tmp_path / "relaxed"),
        f"{cache.url}/pin/plain/debian",
        keyring,
        " check-valid-until=no",
    )
    assert relaxed.returncode == 0, relaxed.stderr

    # Remedy 2: the branch is re-signed; the client trusts debcache's key.
    exported = run(cache, "key", "export")
    assert exported.exit_code == 0
    debcache_key = tmp_path / "debcache-archive-keyring.gpg"
    debcache_key.write_bytes(exported.stdout_bytes)
    resigned = update(
        AptRoot(tmp_path / "resigned"), f"{cache.url}/pin/resigned/debian", debcache_key
    )
    assert resigned.returncode == 0, resigned.stdout + resigned.stderr
    # The archive's own key no longer verifies it, which is the point.
    stranger = update(AptRoot(tmp_path / "stranger"), f"{cache.url}/pin/resigned/debian", keyring)
    assert stranger.returncode != 0

    first = get(cache.url, f"/pin/resigned/debian/dists/{SUITE}/InRelease")
    again = get(cache.url, f"/pin/resigned/debian/dists/{SUITE}/InRelease")
    assert first.body == again.body  # made once per manifest, then stored
    assert b"Valid-Until" not in first.body
    original = expired_archive.read(f"dists/{SUITE}/Release")
    release = get(cache.url, f"/pin/resigned/debian/dists/{SUITE}/Release").body
    assert release == b"".join(
        line for line in original.splitlines(keepends=True) if not line.startswith(b"Valid-Until")
    )
    assert get(cache.url, f"/pin/resigned/debian/dists/{SUITE}/Release.gpg").status == 200


def test_key_export_armor_is_the_same_key(cache: DebcacheServer, tmp_path: Path) -> None:
    armored = run(cache, "key", "export", "--armor")
    assert armored.exit_code == 0
    assert armored.output.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    binary = run(cache, "key", "export").stdout_bytes
    assert binary and binary[0] & 0x80  # an OpenPGP packet, not text
    assert get(cache.url, "/_/key.gpg").body == binary
    assert get(cache.url, "/_/key.asc").body.decode() == armored.output
    secret = cache.data_dir / "signing" / "secret-key.asc"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_the_resign_remedy_names_a_dotted_branch_as_valid_toml(
    cache: DebcacheServer, expired_archive: Archive, tmp_path: Path
) -> None:
    keyring = expired_archive.key.keyring
    url = f"{cache.url}/record/r/debian"
    assert update(AptRoot(tmp_path / "rec"), url, keyring, " check-valid-until=no").returncode == 0
    cache.wait_for_fetches(len(cache.mirror.requests), recording="r")
    manifest = freeze_json(cache, "r", "--promote", "xen-4.19")["id"]

    warned = get(cache.url, f"/pin/xen-4.19/debian/dists/{SUITE}/InRelease")
    valid_until = re.search(
        r"^Valid-Until: (.*)$", expired_archive.read(f"dists/{SUITE}/Release").decode(), re.M
    )[1]
    assert warned.header("Warning") == (
        f'199 debcache "branch xen-4.19 serves the Release of debian {SUITE} frozen in manifest '
        f"{manifest[:12]}, which expired on {valid_until}: apt refuses it unless the source has "
        '[check-valid-until=no]; or set resign = true in [branches.\\"xen-4.19\\"]"'
    )
    # What the remedy says, pasted into the configuration, configures that branch.
    section = re.search(r"in (\[.*\])\"$", warned.header("Warning"))[1].replace('\\"', '"')
    config = tmp_path / "remedy.toml"
    config.write_text(
        f'[upstreams.debian]\nurls = ["{cache.mirror.url}/debian"]\nkeyring = "{keyring}"\n'
        f"{section}\nresign = true\n"
    )
    assert load_config(config).branches["xen-4.19"].resign is True
