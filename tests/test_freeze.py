"""User story: a recorded install becomes a verified, immutable manifest.

Record an install with the real apt-get, freeze it with the real CLI, and check
that the manifest holds exactly what was fetched plus what authenticates it;
tampered mirrors, unknown keys and mismatched indices make freeze fail naming
the file; export → wipe → import restores the same id.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive, make_signing_key
from click.testing import CliRunner, Result
from debcache_server import DebcacheServer, make_config, write_config_file
from fake_mirror import FakeMirror, Fault
from http_client import get
from processes import wait_until
from workflow import freeze_json, manifest_json, record_install, run

from debcache.cli import cli, size

HELLO = ("hello", "2.10-3")
INSTALLED = {
    "hello": "2.10-3",
    "libgreet1": "1.0-1",
    "greet-data": "2.10-3",
    "tool++": "1.0~rc1+dfsg-1",
    "bigpkg": "1:3.0-1",
}


def test_freeze_holds_exactly_the_fetched_files_and_what_authenticates_them(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "run-1", "hello", "tool++", "bigpkg")
    recorded = {r["path"] for r in keyed_debcache.fetches("run-1") if r["status"] == 200}
    frozen = freeze_json(keyed_debcache, "run-1", "--name", "first")
    assert len(frozen["id"]) == 64 and frozen["unverified"] == []
    manifest = manifest_json(keyed_debcache, frozen["id"])
    assert manifest["id"] == frozen["id"] and manifest["label"] == "first"
    entries = {e["path"]: e for e in manifest["entries"]}

    # Everything apt received, byte for byte as the archive has it...
    assert recorded <= set(entries)
    for path in entries:
        assert entries[path]["sha256"] == archive.sha256(path), path
        assert entries[path]["upstream"] == "debian"
    # ...the five .debs with what the Packages index says of them...
    debs = {e["package"]: e["version"] for e in manifest["entries"] if e["package"]}
    assert debs == INSTALLED
    # ...and apt asked for by-hash names, so their canonical names come along, with every
    # other index a fresh apt-get update may ask for (test_completeness.py), said so.
    by_hash = {p for p in recorded if "/by-hash/" in p}
    assert by_hash
    for path in by_hash:
        directory, digest = path.split("/by-hash/SHA256/")
        assert any(entries[p]["sha256"] == digest for p in entries if p.startswith(directory))
    completed = set(entries) - recorded
    assert set(manifest["completed"]) == {f"debian/{p}" for p in completed}
    assert all(p.startswith("dists/bookworm/main/binary-") for p in completed)
    assert frozen["files"] == len(entries)
    assert frozen["bytes"] == sum(e["size"] for e in manifest["entries"])


def test_the_same_files_always_give_the_same_id(
    keyed_debcache: DebcacheServer,
    apt: AptRoot,
    archive: Archive,
    mirror: FakeMirror,
    tmp_path: Path,
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "run-a", "hello")
    other_host = AptRoot(tmp_path / "other-host")
    record_install(keyed_debcache, other_host, archive, mirror, "run-b", "hello")
    first = freeze_json(keyed_debcache, "run-a", "--name", "a")
    again = freeze_json(keyed_debcache, "run-a")
    other = freeze_json(keyed_debcache, "run-b")
    assert first["id"] == again["id"] == other["id"]
    assert first["created"] and not again["created"]
    listing = run(keyed_debcache, "manifests")
    assert listing.exit_code == 0 and first["id"][:12] in listing.output
    assert listing.output.count(first["id"][:12]) == 1


def test_an_update_only_recording_freezes(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "update-only")
    frozen = freeze_json(keyed_debcache, "update-only")
    paths = {e["path"] for e in manifest_json(keyed_debcache, frozen["id"])["entries"]}
    assert "dists/bookworm/InRelease" in paths
    assert not any(p.startswith("pool/") for p in paths)


def test_a_second_update_answered_304_still_freezes_with_its_indices(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "warm-up", "hello", via_proxy=True)
    # Same apt state and sources: apt sends If-Modified-Since, gets 304, fetches no Packages.
    record_install(
        keyed_debcache, apt, archive, mirror, "second", "hello", "tool++", via_proxy=True
    )
    second = {r["path"]: r for r in keyed_debcache.fetches("second")}
    assert second["dists/bookworm/InRelease"]["status"] == 304
    frozen = freeze_json(keyed_debcache, "second")
    paths = {e["path"] for e in manifest_json(keyed_debcache, frozen["id"])["entries"]}
    assert archive.pool_path("tool++", INSTALLED["tool++"]) in paths
    assert any(p.startswith("dists/bookworm/main/binary-amd64/Packages") for p in paths)


# --- what freeze refuses ------------------------------------------------------------


def test_a_deb_that_does_not_match_its_packages_entry_fails_the_freeze(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    hello = archive.pool_path(*HELLO)
    # Fetched before any Packages index was cached, so the live path could not check it.
    mirror.set_fault(f"/debian/{hello}", Fault.corrupt(times=1))
    assert get(keyed_debcache.url, f"/record/tampered/debian/{hello}").status == 200
    keyed_debcache.wait_for_fetches(1, recording="tampered")
    record_install(keyed_debcache, apt, archive, mirror, "tampered")
    result = run(keyed_debcache, "freeze", "tampered")
    assert result.exit_code == 1
    assert f"debian/{hello}: sha256 or size does not match" in result.output
    assert "--allow-unverified" in result.output
    assert "Traceback" not in result.output
    assert run(keyed_debcache, "manifests", "--json").output.strip() == "[]"

    allowed = freeze_json(keyed_debcache, "tampered", "--allow-unverified")
    assert any(hello in line for line in allowed["unverified"])


def test_a_release_signed_by_an_unknown_key_fails_the_freeze(
    tmp_path: Path, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    stranger = make_signing_key(tmp_path / "other-key")
    config = make_config(
        tmp_path / "data", {"debian": [f"{mirror.url}/debian"]}, keyring=stranger.keyring
    )
    with DebcacheServer(config) as server:
        server.config_file = write_config_file(config, tmp_path / "debcache.toml")
        record_install(server, apt, archive, mirror, "unknown-key", "hello")
        result = run(server, "freeze", "unknown-key")
    assert result.exit_code == 1
    assert "debian/dists/bookworm/InRelease: bad signature (NO_PUBKEY" in result.output
    assert f"debian/{archive.pool_path(*HELLO)}" in result.output


def test_a_packages_file_that_does_not_match_the_release_fails_the_freeze(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "bad-index")
    packages = "dists/bookworm/main/binary-amd64/Packages.gz"
    mirror.set_fault(f"/debian/{packages}", Fault.corrupt(times=1))
    assert get(keyed_debcache.url, f"/record/bad-index/debian/{packages}").status == 200
    keyed_debcache.wait_for_fetches(len(mirror.requests), recording="bad-index")
    result = run(keyed_debcache, "freeze", "bad-index")
    assert result.exit_code == 1
    assert f"debian/{packages}: sha256 or size does not match the Release file" in result.output


def test_unknown_recordings_and_ids_are_one_line_errors_with_near_matches(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "nightly-42")
    result = run(keyed_debcache, "freeze", "nightly-24")
    assert result.exit_code == 1
    assert "No recording named 'nightly-24'" in result.output and "nightly-42" in result.output
    assert run(keyed_debcache, "manifests", "show", "abcd").exit_code == 1
    assert (
        "No manifest id starts with abcd" in run(keyed_debcache, "manifests", "show", "abcd").output
    )
    assert "is not a manifest id" in run(keyed_debcache, "manifests", "show", "xyz").output


# --- export and import --------------------------------------------------------------


def test_export_wipe_import_restores_the_same_manifest(
    keyed_debcache: DebcacheServer,
    apt: AptRoot,
    archive: Archive,
    mirror: FakeMirror,
    tmp_path: Path,
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "to-export", "hello", "bigpkg")
    frozen = freeze_json(keyed_debcache, "to-export", "--name", "exported")
    exported = run(keyed_debcache, "manifests", "export", frozen["id"][:12])
    assert exported.exit_code == 0
    lockfile = tmp_path / "lock.json"
    lockfile.write_text(exported.output)

    # A second site: an empty data dir, the same upstream.
    site = make_config(tmp_path / "site-b", {"debian": [f"{mirror.url}/debian"]})
    site_file = write_config_file(site, tmp_path / "site-b.toml")
    imported = CliRunner().invoke(
        cli, ["--config", str(site_file), "manifests", "import", str(lockfile)]
    )
    assert imported.exit_code == 0, imported.output
    shown = CliRunner().invoke(
        cli, ["--config", str(site_file), "manifests", "show", frozen["id"], "--json"]
    )
    document = json.loads(shown.output)
    short, files = frozen["id"][:12], len(document["entries"])
    fetched = size(sum({e["sha256"]: e["size"] for e in document["entries"]}.values()))
    assert imported.output == (
        f"Imported manifest {short}: {files} files, fetched {files} missing file(s) ({fetched}).\n"
        f"Pin it with: debcache promote BRANCH {short}\n"
    )
    assert document["id"] == frozen["id"] and document["label"] == "exported"
    blobs = tmp_path / "site-b" / "blobs" / "sha256"
    for entry in document["entries"]:
        assert (blobs / entry["sha256"][:2] / entry["sha256"]).read_bytes() == archive.read(
            entry["path"]
        )


def test_bad_lockfiles_are_rejected_and_nothing_is_written(
    keyed_debcache: DebcacheServer,
    apt: AptRoot,
    archive: Archive,
    mirror: FakeMirror,
    tmp_path: Path,
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "lock", "hello")
    frozen = freeze_json(keyed_debcache, "lock")
    document = json.loads(run(keyed_debcache, "manifests", "export", frozen["id"]).output)
    site = make_config(tmp_path / "site-c", {"debian": [f"{mirror.url}/debian"]})
    site_file = write_config_file(site, tmp_path / "site-c.toml")

    def import_document(text: str) -> Result:
        path = tmp_path / "bad.json"
        path.write_text(text)
        return CliRunner().invoke(
            cli, ["--config", str(site_file), "manifests", "import", str(path)]
        )

    traversal = json.loads(json.dumps(document))
    traversal["entries"][0]["path"] = "../../etc/passwd"
    wrong_id = dict(document, id="0" * 64)
    missing_blob = json.loads(json.dumps(document))
    missing_blob["entries"][-1]["sha256"] = "1" * 64
    from debcache.manifest import Entry, manifest_id

    missing_blob["id"] = manifest_id(Entry(**e) for e in missing_blob["entries"])
    cases = [
        ("{not json", "not JSON"),
        ('{"format": "other"}', "not a debcache lockfile"),
        (json.dumps(traversal), "unsafe path"),
        (json.dumps(wrong_id), "does not match its entries"),
        (json.dumps(missing_blob), "could not be fetched"),
    ]
    for text, message in cases:
        result = import_document(text)
        assert result.exit_code == 1, (message, result.output)
        assert message in result.output and "Traceback" not in result.output
    listing = CliRunner().invoke(cli, ["--config", str(site_file), "manifests", "--json"])
    assert json.loads(listing.output) == []


def test_concurrent_freezes_of_the_same_recordings_make_one_manifest(
    keyed_debcache: DebcacheServer, apt: AptRoot, archive: Archive, mirror: FakeMirror
) -> None:
    import threading

    from debcache import db as queries
    from debcache.config import load_config
    from debcache.freeze import freeze
    from debcache.store import FileStore

    record_install(keyed_debcache, apt, archive, mirror, "twice", "hello")
    config = load_config(keyed_debcache.config_file)
    results: list = []

    def one() -> None:
        database = queries.connect(config.data_dir / "debcache.db")
        try:
            results.append(freeze(config, database, FileStore(config.data_dir), ["twice"]))
        finally:
            database.conn.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({manifest.id for manifest, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    listing = json.loads(run(keyed_debcache, "manifests", "--json").output)
    assert len(listing) == 1 and listing[0]["files"] == len(results[0][0].entries)


def test_an_ambiguous_id_prefix_lists_the_candidates(tmp_path: Path) -> None:
    from debcache import db as queries
    from debcache.errors import AmbiguousManifestId
    from debcache.manifest import resolve_manifest_id

    queries.create_schema(tmp_path / "debcache.db")
    database = queries.connect(tmp_path / "debcache.db")
    for manifest_id in ("abcd1111" + "0" * 56, "abcd2222" + "0" * 56):
        row = {"id": manifest_id, "label": None, "created": 1.0, "recordings": "[]",
               "files": 0, "bytes": 0, "releases": "{}", "unverified": "[]"}  # fmt: skip
        queries.insert_manifest(database, row, [])
    with pytest.raises(AmbiguousManifestId, match="ambiguous: abcd11110000, abcd22220000"):
        resolve_manifest_id(database, "abcd")
    assert resolve_manifest_id(database, "abcd2").startswith("abcd2222")


def test_a_second_site_imports_from_the_first_debcache_with_the_mirror_gone(
    keyed_debcache: DebcacheServer,
    apt: AptRoot,
    archive: Archive,
    mirror: FakeMirror,
    tmp_path: Path,
) -> None:
    record_install(keyed_debcache, apt, archive, mirror, "site-a", "hello", "bigpkg")
    frozen = freeze_json(keyed_debcache, "site-a")
    lockfile = tmp_path / "lock.json"
    lockfile.write_text(run(keyed_debcache, "manifests", "export", frozen["id"][:12]).output)

    # Site B knows no reachable mirror: every blob must come from site A's /manifest/.
    site = make_config(tmp_path / "site-b", {"debian": ["http://127.0.0.1:9/debian"]})
    site_file = write_config_file(site, tmp_path / "site-b.toml")
    mirror.reset()
    imported = CliRunner().invoke(
        cli,
        [
            "--config",
            str(site_file),
            "manifests",
            "import",
            str(lockfile),
            "--from",
            keyed_debcache.url,
        ],
    )
    assert imported.exit_code == 0, imported.output
    assert mirror.requests == []
    bigpkg = archive.pool_path("bigpkg")
    wait_until(  # served by site A's /manifest/<id>/, and logged there
        lambda: bigpkg in {r["path"] for r in keyed_debcache.fetches() if r["source"] == "pinned"},
        "site A to log the /manifest/ fetch",
    )
    shown = CliRunner().invoke(
        cli, ["--config", str(site_file), "manifests", "show", frozen["id"], "--json"]
    )
    assert json.loads(shown.output)["id"] == frozen["id"]
