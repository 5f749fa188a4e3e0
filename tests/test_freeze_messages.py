"""User story: what freeze says is true, names what was recorded, and reads in one line.

Golden output of the real CLI: `--allow-unverified` includes every recorded file,
marked unverified; the error without it names the recorded files (never an
InRelease nobody fetched) with its cause and remedy on the first line; a second
freeze of the same set applies the new `--name`.
"""

from __future__ import annotations

import gzip
import json

from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import freeze_json, manifest_json, record_install, run

# freeze's golden error for a recording of a Release, README and ls-lR.gz.
NOT_ARCHIVE_FILES = [
    "Error: 2 recorded file(s) could not be verified. Fix the mirror or the keyring and "
    "record again, or pass --allow-unverified to include them marked unverified.",
    "  debian/README: neither under dists/ nor under pool/",
    "  debian/ls-lR.gz: neither under dists/ nor under pool/",
]


def test_allow_unverified_keeps_every_recorded_file_and_the_error_names_only_those(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    # Issue 12's recording: a Release (no Release.gpg), the mirror's README and ls-lR.gz.
    own_archive.path("README").write_text("a mirror's README\n")
    own_archive.path("ls-lR.gz").write_bytes(gzip.compress(b"total 0\n"))
    recorded = ["dists/bookworm/Release", "README", "ls-lR.gz"]
    for path in recorded:
        assert get(own_debcache.url, f"/record/misc/debian/{path}").status == 200
    own_debcache.wait_for_fetches(len(recorded), recording="misc")

    result = run(own_debcache, "freeze", "misc")
    assert (result.exit_code, result.output.splitlines()) == (1, NOT_ARCHIVE_FILES)

    # The Release is verified by the Release.gpg fetched at freeze time; the other two
    # go in marked unverified.
    allowed = run(own_debcache, "freeze", "misc", "--allow-unverified", "--json")
    assert allowed.exit_code == 0, allowed.output
    frozen = json.loads(allowed.output)
    entries = {e["path"] for e in manifest_json(own_debcache, frozen["id"])["entries"]}
    assert entries == {*recorded, "dists/bookworm/Release.gpg"}
    assert frozen["unverified"] == [
        "debian/README: neither under dists/ nor under pool/",
        "debian/ls-lR.gz: neither under dists/ nor under pool/",
    ]
    shown = manifest_json(own_debcache, frozen["id"])
    assert shown["unverified"] == frozen["unverified"]


def test_a_second_freeze_of_the_same_set_applies_its_new_name(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "run-1", "hello")
    first = freeze_json(keyed_debcache, "run-1", "--name", "first")
    short = first["id"][:12]
    again = run(keyed_debcache, "freeze", "run-1", "--name", "june")
    assert again.exit_code == 0, again.output
    size = again.output.split(", ", 1)[1].split(".\n")[0]
    assert again.output == (
        f"Already frozen as manifest {short}: {first['files']} files, {size}.\n"
        "Its label is now 'june'.\n"
        f"Pin it with: debcache promote BRANCH {short}\n"
    )
    assert manifest_json(keyed_debcache, short)["label"] == "june"
    # Without --name the label stays.
    unnamed = freeze_json(keyed_debcache, "run-1")
    assert unnamed["label"] == "june" and not unnamed["created"]
    assert manifest_json(keyed_debcache, short)["label"] == "june"


def test_allow_unverified_keeps_a_release_that_has_no_release_gpg_marked_unverified(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    # Issue 12's recording, from a mirror that has no Release.gpg for the Release (nor an
    # InRelease, whose signed text would vouch for it).
    own_archive.path("README").write_text("a mirror's README\n")
    own_archive.path("ls-lR.gz").write_bytes(gzip.compress(b"total 0\n"))
    own_archive.path("dists/bookworm/Release.gpg").unlink()
    own_archive.path("dists/bookworm/InRelease").unlink()
    recorded = ["dists/bookworm/Release", "README", "ls-lR.gz"]
    for path in recorded:
        assert get(own_debcache.url, f"/record/misc/debian/{path}").status == 200
    own_debcache.wait_for_fetches(len(recorded), recording="misc")
    no_signature = (
        "debian/dists/bookworm/Release: no Release.gpg recorded or cached, nor at the upstream "
        f"({own_mirror.url}/debian/dists/bookworm/Release.gpg: HTTP 404)"
    )

    # Without the flag: the two files that are no archive file stop it; the Release, a
    # probe of a suite nothing else was fetched of, is a warning.
    result = run(own_debcache, "freeze", "misc")
    assert (result.exit_code, result.output.splitlines()) == (1, NOT_ARCHIVE_FILES)

    # With it, every recorded file goes in, the Release too, marked unverified.
    allowed = run(own_debcache, "freeze", "misc", "--allow-unverified", "--json")
    assert allowed.exit_code == 0, allowed.output
    frozen = json.loads(allowed.output)
    entries = {e["path"] for e in manifest_json(own_debcache, frozen["id"])["entries"]}
    assert entries == set(recorded)
    assert frozen["unverified"] == [
        "debian/README: neither under dists/ nor under pool/",
        "debian/ls-lR.gz: neither under dists/ nor under pool/",
        no_signature,
    ]
    assert frozen["warnings"] == []


def test_without_the_flag_an_unverifiable_probe_is_a_warning_and_left_out(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    own_archive.path("dists/bookworm/Release.gpg").unlink()
    own_archive.path("dists/bookworm/InRelease").unlink()  # it would vouch for the Release
    assert get(own_debcache.url, "/record/probe/debian/dists/bookworm/Release").status == 200
    own_debcache.wait_for_fetches(1, recording="probe")
    result = run(own_debcache, "freeze", "probe", "--json")
    assert result.exit_code == 0, result.output
    frozen = json.loads(result.output)
    assert frozen["warnings"] == [
        "debian/dists/bookworm/Release: no Release.gpg recorded or cached, nor at the upstream "
        f"({own_mirror.url}/debian/dists/bookworm/Release.gpg: HTTP 404); a suite probe, left out"
    ]
    assert frozen["unverified"] == [] and frozen["files"] == 0
