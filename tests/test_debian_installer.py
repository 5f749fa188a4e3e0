"""User story: a debian-installer recording freezes, and its pin answers as the mirror did.

d-i's mirror check (PROTOCOL-NOTES §7) asks for ``dists/<suite>/Release`` — without
``Release.gpg`` — of every suite name it knows, skipping the 404s; then Release and
Release.gpg of the chosen suite, its debian-installer Packages.xz and udebs. The
lab's netboot script fetches the kernel, initrd and SHA256SUMS. This test replays
that sequence through ``/record/di1/debian/`` on the real server against an archive
where ``stable`` is a symlink to bookworm (as on a mirror), ``testing`` one to
``trixie`` (signed with Release.gpg only), ``unstable`` has an unsigned Release, and
``oldstable``, ``sid`` and ``forky`` do not exist.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import freeze_json, manifest_json, record_install, run

PROBED = ("oldstable", "stable", "testing", "unstable", "sid", "trixie", "forky")
MISSING = ("oldstable", "sid", "forky")  # the mirror answers 404
IMAGES = (
    "SHA256SUMS",
    "netboot/debian-installer/amd64/linux",
    "netboot/debian-installer/amd64/initrd.gz",
)
UDEB_INDEX = "dists/bookworm/main/debian-installer/binary-amd64/Packages.xz"


@pytest.fixture
def installer_archive(own_archive: Archive) -> Archive:
    """own_archive plus the suites d-i probes, as a mirror has them."""
    dists = own_archive.path("dists")
    (dists / "stable").symlink_to("bookworm")
    updates = own_archive.packages("bookworm-updates")
    own_archive.publish_suite("trixie", updates, signed_forms=("Release.gpg",))
    (dists / "testing").symlink_to("trixie")
    own_archive.publish_suite("unstable", updates, signed_forms=())  # nothing signs it
    return own_archive


def installer_paths(archive: Archive) -> list[str]:
    """What d-i fetches after its probes, and the netboot files, in order."""
    udebs = [archive.pool_path("netcfg-test"), archive.pool_path("kernel-image-6.1.0-9-amd64-di")]
    images = [archive.installer_path("bookworm", name) for name in IMAGES]
    return [
        "dists/bookworm/Release",
        "dists/bookworm/Release.gpg",
        UDEB_INDEX,
        *udebs,
        *images,
    ]


def record_installer(server: DebcacheServer, archive: Archive, recording: str) -> dict[str, bytes]:
    """Replay d-i's requests through /record/<recording>/; the bodies of the 200s."""
    received = {}
    for suite in PROBED:
        reply = get(server.url, f"/record/{recording}/debian/dists/{suite}/Release")
        assert reply.status == (404 if suite in MISSING else 200), suite
    for path in installer_paths(archive):
        reply = get(server.url, f"/record/{recording}/debian/{path}")
        assert reply.status == 200, path
        received[path] = reply.body
    server.wait_for_fetches(len(PROBED) + len(installer_paths(archive)), recording=recording)
    return received


def test_a_debian_installer_recording_freezes_and_its_pin_answers_the_probes(
    own_debcache: DebcacheServer, installer_archive: Archive, own_mirror: FakeMirror
) -> None:
    archive = installer_archive
    received = record_installer(own_debcache, archive, "di1")

    # The 404s are failed fetches, not files, and expected ones.
    listing = json.loads(run(own_debcache, "recordings", "--json").output)
    assert [(r["files"], r["failed"], r["expected_failures"]) for r in listing["recordings"]] == [
        (len(PROBED) - len(MISSING) + len(installer_paths(archive)), 3, 3)
    ]
    shown = json.loads(run(own_debcache, "recordings", "show", "di1", "--json").output)
    assert sorted(f["path"] for f in shown["failed"]) == sorted(
        f"dists/{suite}/Release" for suite in MISSING
    )
    assert all(f["status"] == 404 and f["expected"] for f in shown["failed"])

    frozen = freeze_json(own_debcache, "di1", "--strict", "--promote", "di")
    assert frozen["unverified"] == []
    # The one probe nothing can verify is named, and the freeze went ahead without it.
    assert len(frozen["warnings"]) == 1
    assert frozen["warnings"][0].startswith("debian/dists/unstable/Release: ")
    assert "suite probe, left out" in frozen["warnings"][0]
    entries = {e["path"] for e in manifest_json(own_debcache, frozen["id"])["entries"]}
    assert set(installer_paths(archive)) <= entries
    for suite in ("stable", "testing", "trixie"):
        assert {f"dists/{suite}/Release", f"dists/{suite}/Release.gpg"} <= entries, suite
    assert not [p for p in entries if p.startswith(("dists/unstable/", "dists/sid/"))]

    # With the mirror gone, the pin answers each probe as the mirror did (but the
    # unverifiable one) and serves the installer's files byte for byte.
    own_mirror.stop()
    before = len(own_mirror.requests)
    for suite in PROBED:
        reply = get(own_debcache.url, f"/pin/di/debian/dists/{suite}/Release")
        if suite in (*MISSING, "unstable"):
            assert reply.status == 404, suite
        else:
            assert reply.body == archive.read(f"dists/{suite}/Release"), suite
            signature = get(own_debcache.url, f"/pin/di/debian/dists/{suite}/Release.gpg")
            assert signature.body == archive.read(f"dists/{suite}/Release.gpg"), suite
    for path, body in received.items():
        assert get(own_debcache.url, f"/pin/di/debian/{path}").body == body, path
    assert len(own_mirror.requests) == before


def test_freeze_names_the_unverifiable_probe_in_its_human_output(
    own_debcache: DebcacheServer, installer_archive: Archive, own_mirror: FakeMirror
) -> None:
    record_installer(own_debcache, installer_archive, "di2")
    result = run(own_debcache, "freeze", "di2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Froze manifest ")
    url = f"{own_mirror.url}/debian/dists/unstable/Release.gpg"
    assert lines[1:3] == [
        "  warning: debian/dists/unstable/Release: no Release.gpg recorded or cached, nor at "
        f"the upstream ({url}: HTTP 404); a suite probe, left out",
        f"Pin it with: debcache promote BRANCH {lines[0].split()[2].rstrip(':')}",
    ]
    short_id = lines[0].split()[2].rstrip(":")
    # The manifest keeps the warning: `manifests show` names it, and the pin's 404 says why.
    shown = run(own_debcache, "manifests", "show", short_id).output.splitlines()
    assert f"warning  {lines[1].removeprefix('  warning: ')}" in shown
    assert run(own_debcache, "promote", "di2", short_id).exit_code == 0
    reply = get(own_debcache.url, "/pin/di2/debian/dists/unstable/Release")
    assert reply.status == 404
    assert b"a recording fetched it, but freeze could not verify it (no Release.gpg" in reply.body
    assert b"Record an install" not in reply.body


def test_a_probe_identical_to_the_chosen_suite_needs_no_upstream(
    own_debcache: DebcacheServer, installer_archive: Archive, own_mirror: FakeMirror
) -> None:
    # `stable` is bookworm's Release byte for byte: bookworm's verified Release.gpg vouches
    # for it, so freeze asks the upstream nothing of stable (it may be gone by then; what
    # the upstream is asked for is bookworm's indices, which completion adds).
    for path in ("dists/stable/Release", "dists/bookworm/Release", "dists/bookworm/Release.gpg"):
        assert get(own_debcache.url, f"/record/di3/debian/{path}").status == 200
    own_debcache.wait_for_fetches(3, recording="di3")
    before = len(own_mirror.requests)
    frozen = freeze_json(own_debcache, "di3")
    assert not [r for r in own_mirror.requests[before:] if "/dists/stable/" in r.decoded_path]
    assert frozen["warnings"] == [] and frozen["unverified"] == []
    entries = {e["path"]: e["sha256"] for e in manifest_json(own_debcache, frozen["id"])["entries"]}
    assert entries["dists/stable/Release.gpg"] == entries["dists/bookworm/Release.gpg"]
    assert entries["dists/stable/Release"] == installer_archive.sha256("dists/bookworm/Release")


def test_an_unverifiable_release_of_a_used_suite_is_named_as_recorded_and_kept_when_allowed(
    own_debcache: DebcacheServer, installer_archive: Archive, own_mirror: FakeMirror
) -> None:
    # Not a probe: the install used unstable's Packages too. Nothing signs its Release.
    (installer_archive.path("README")).write_text("a mirror's README\n")
    recorded = ["dists/unstable/Release", "dists/unstable/main/binary-amd64/Packages.xz", "README"]
    for path in recorded:
        assert get(own_debcache.url, f"/record/odd/debian/{path}").status == 200
    own_debcache.wait_for_fetches(len(recorded), recording="odd")

    result = run(own_debcache, "freeze", "odd")
    assert result.exit_code == 1
    url = f"{own_mirror.url}/debian/dists/unstable/Release.gpg"
    assert result.output.splitlines() == [
        "Error: 3 recorded file(s) could not be verified. Fix the mirror or the keyring and "
        "record again, or pass --allow-unverified to include them marked unverified.",
        "  debian/README: neither under dists/ nor under pool/",
        "  debian/dists/unstable/Release: no Release.gpg recorded or cached, nor at the "
        f"upstream ({url}: HTTP 404)",
        "  debian/dists/unstable/main/binary-amd64/Packages.xz: no verified Release of "
        f"unstable: no Release.gpg recorded or cached, nor at the upstream ({url}: HTTP 404)",
    ]
    assert "InRelease" not in result.output

    allowed = freeze_json(own_debcache, "odd", "--allow-unverified")
    entries = {e["path"] for e in manifest_json(own_debcache, allowed["id"])["entries"]}
    assert entries == set(recorded)
    assert sorted(line.split(":")[0] for line in allowed["unverified"]) == sorted(
        f"debian/{path}" for path in recorded
    )
    shown = run(own_debcache, "manifests", "show", allowed["id"][:12]).output.splitlines()
    assert "unverified debian/README: neither under dists/ nor under pool/" in shown


def test_a_probe_identical_to_an_apt_recorded_inrelease_goes_in_alone(
    own_debcache: DebcacheServer,
    installer_archive: Archive,
    own_mirror: FakeMirror,
    tmp_path: Path,
) -> None:
    # apt fetched bookworm's InRelease; d-i's probe of `stable` got the same Release text.
    apt = AptRoot(tmp_path / "apt")
    record_install(own_debcache, apt, installer_archive, own_mirror, "mixed", "hello")
    rows = len(own_debcache.fetches("mixed"))
    assert get(own_debcache.url, "/record/mixed/debian/dists/stable/Release").status == 200
    own_debcache.wait_for_fetches(rows + 1, recording="mixed")
    before = len(own_mirror.requests)
    frozen = freeze_json(own_debcache, "mixed", "--strict")
    assert not [r for r in own_mirror.requests[before:] if "/dists/stable/" in r.decoded_path]
    assert frozen["warnings"] == [] and frozen["unverified"] == []
    entries = {e["path"] for e in manifest_json(own_debcache, frozen["id"])["entries"]}
    assert "dists/stable/Release" in entries and "dists/stable/Release.gpg" not in entries


def test_a_probe_whose_release_gpg_lags_goes_in_verified_by_the_suites_inrelease(
    own_debcache: DebcacheServer, installer_archive: Archive, own_mirror: FakeMirror
) -> None:
    # A mirror's Release.gpg may lag its Release (BADSIG) while its InRelease verifies and
    # signs the same Release text byte for byte.
    archive = installer_archive
    archive.publish_suite("trixie", archive.packages("bookworm-updates"))
    archive.path("dists/trixie/Release.gpg").write_bytes(archive.read("dists/bookworm/Release.gpg"))
    recorded = ["dists/trixie/Release", "dists/bookworm/Release", "dists/bookworm/Release.gpg"]
    for path in recorded:
        assert get(own_debcache.url, f"/record/lag/debian/{path}").status == 200, path
    own_debcache.wait_for_fetches(len(recorded), recording="lag")

    frozen = freeze_json(own_debcache, "lag")
    assert frozen["warnings"] == [] and frozen["unverified"] == []
    entries = {e["path"]: e["sha256"] for e in manifest_json(own_debcache, frozen["id"])["entries"]}
    assert entries["dists/trixie/Release"] == archive.sha256("dists/trixie/Release")
    assert entries["dists/trixie/InRelease"] == archive.sha256("dists/trixie/InRelease")
    assert "dists/trixie/Release.gpg" not in entries  # it does not verify

    assert run(own_debcache, "promote", "lag", frozen["id"]).exit_code == 0
    own_mirror.stop()
    reply = get(own_debcache.url, "/pin/lag/debian/dists/trixie/Release")
    assert reply.body == archive.read("dists/trixie/Release")


def test_an_expired_probe_is_served_without_a_valid_until_warning(
    own_debcache: DebcacheServer, installer_archive: Archive
) -> None:
    # d-i's mirror check takes an expired Release (it did from the mirror): only a suite
    # of which the manifest holds an index is one apt will refuse.
    expired = datetime.now(UTC) - timedelta(days=7)
    updates = installer_archive.packages("bookworm-updates")
    installer_archive.publish_suite(
        "trixie", updates, date=expired - timedelta(days=7), valid_until=expired
    )
    recorded = ["dists/trixie/Release", "dists/bookworm/Release", "dists/bookworm/Release.gpg"]
    for path in recorded:
        assert get(own_debcache.url, f"/record/old/debian/{path}").status == 200, path
    own_debcache.wait_for_fetches(len(recorded), recording="old")
    frozen = freeze_json(own_debcache, "old", "--promote", "old")
    assert frozen["warnings"] == [] and frozen["unverified"] == []

    reply = get(own_debcache.url, "/pin/old/debian/dists/trixie/Release")
    assert reply.status == 200 and reply.header("Warning") is None
