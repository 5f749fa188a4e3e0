"""User story: a last-known-good set comes only from a good install.

An install that got 404s or cut transfers is not known good: `recordings` and
`recordings show` count and list its failed fetches apart from its files, freeze
names them, and `freeze --strict` (the API's `"strict": true`) refuses it. The
404s a good install gets anyway — apt's InRelease → Release + Release.gpg
fallback, debian-installer's probes of suites the mirror lacks — do not count.
"""

from __future__ import annotations

import json
from pathlib import Path

from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror, Fault
from http_client import get
from test_api import call
from workflow import freeze_json, record_install, run

MISSING = "pool/main/n/nope/nope_1.0-1_amd64.deb"


def test_failed_fetches_are_counted_apart_named_by_freeze_and_refused_by_strict(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    server = keyed_debcache
    record_install(server, apt, archive, mirror, "job", "hello")
    files = len(json.loads(run(server, "recordings", "show", "job", "--json").output)["files"])
    rows_before = len(server.fetches("job"))
    cut = archive.pool_path("bigpkg")
    mirror.set_fault(f"/debian/{cut}", Fault.truncate(100, times=1))
    assert get(server.url, f"/record/job/debian/{cut}").broken
    assert get(server.url, f"/record/job/debian/{MISSING}").status == 404
    server.wait_for_fetches(rows_before + 2, recording="job")

    listing = json.loads(run(server, "recordings", "--json").output)
    assert [
        (r["recording"], r["files"], r["failed"], r["expected_failures"])
        for r in listing["recordings"]
    ] == [("job", files, 2, 0)]
    assert call(server, "GET", "/_/api/recordings")[1] == listing
    table = run(server, "recordings").output.splitlines()
    assert table[0].split() == [
        "RECORDING", "FIRST", "LAST", "FILES", "FAILED", "CLIENTS", "UPSTREAMS",
    ]  # fmt: skip
    assert table[1].split()[-4:-1] == [str(files), "2", "1"]

    shown = run(server, "recordings", "show", "job").output
    assert shown.split("\n\n")[1].splitlines() == [
        "Failed fetches (2, not part of the recording):",
        f"UPSTREAM  PATH{' ' * (len(cut) - 4)}  STATUS          NOTE",
        f"debian    {cut}  502 incomplete  -",
        f"debian    {MISSING}{' ' * (len(cut) - len(MISSING))}  404             -",
    ]

    # Without --strict: frozen, with each failure named as a warning.
    result = run(server, "freeze", "job")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:3] == [
        f"  warning: debian/{cut} (HTTP 502, incomplete): a failed fetch, not in the manifest",
        f"  warning: debian/{MISSING} (HTTP 404): a failed fetch, not in the manifest",
    ]
    # With it: refused, in one line naming them.
    refusal = (
        f"Recording job had 2 failed fetch(es), so it is not a known-good install: debian/{cut} "
        f"(HTTP 502, incomplete), debian/{MISSING} (HTTP 404). Fix the mirror and record the "
        "install again, or freeze without --strict."
    )
    strict = run(server, "freeze", "job", "--strict", "--name", "strict")
    assert (strict.exit_code, strict.output) == (1, f"Error: {refusal}\n")
    status, text = call(server, "POST", "/_/api/freeze", {"recordings": ["job"], "strict": True})
    assert (status, text) == (409, f"{refusal}\n")
    labels = [m["label"] for m in json.loads(run(server, "manifests", "--json").output)]
    assert "strict" not in labels


def test_a_recording_of_nothing_but_failures_is_listed_and_not_frozen(
    keyed_debcache: DebcacheServer,
) -> None:
    assert get(keyed_debcache.url, f"/record/dud/debian/{MISSING}").status == 404
    keyed_debcache.wait_for_fetches(1, recording="dud")
    listing = json.loads(run(keyed_debcache, "recordings", "--json").output)
    assert [(r["recording"], r["files"], r["failed"]) for r in listing["recordings"]] == [
        ("dud", 0, 1)
    ]
    result = run(keyed_debcache, "freeze", "dud")
    assert result.exit_code == 1
    assert result.output == (
        "Error: Recording dud received no file whole, so there is nothing to freeze. Record "
        "the install again; `debcache recordings show NAME` lists its failed fetches.\n"
    )


def test_apts_fallback_from_inrelease_to_release_gpg_is_a_good_install(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    # No InRelease on this mirror: apt gets a 404, then fetches Release and Release.gpg.
    own_archive.publish_suite(
        "bookworm", own_archive.packages("bookworm"), signed_forms=("Release.gpg",)
    )
    apt = AptRoot(tmp_path / "apt")
    record_install(own_debcache, apt, own_archive, own_mirror, "plain", "hello")
    shown = json.loads(run(own_debcache, "recordings", "show", "plain", "--json").output)
    assert [(f["path"], f["status"]) for f in shown["failed"]] == [
        ("dists/bookworm/InRelease", 404)
    ]
    assert shown["failed"][0]["expected"] == "Release and Release.gpg were fetched instead"
    frozen = freeze_json(own_debcache, "plain", "--strict")
    assert frozen["warnings"] == [] and frozen["unverified"] == []


def test_a_transfer_cut_short_and_retried_is_not_a_failed_fetch(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror
) -> None:
    hello = archive.pool_path("hello", "2.10-3")
    mirror.set_fault(f"/debian/{hello}", Fault.truncate(100, times=1))
    assert get(keyed_debcache.url, f"/record/retry/debian/{hello}").broken
    assert get(keyed_debcache.url, f"/record/retry/debian/{hello}").broken is None
    keyed_debcache.wait_for_fetches(2, recording="retry")
    shown = json.loads(run(keyed_debcache, "recordings", "show", "retry", "--json").output)
    assert [f["path"] for f in shown["files"]] == [hello] and shown["failed"] == []
