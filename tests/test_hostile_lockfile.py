"""An imported lockfile is checked like a recording: every field's type and range, sizes
against the blobs, Release metadata recomputed from the Release files; a failed import
leaves no manifest and no blob it added.

Crafted lockfiles of the signed fixture archive, imported with the real command line
from the fake mirror on 127.0.0.1; the pinned route answered by the real server.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from archive_fixture import Archive
from click.testing import CliRunner, Result
from debcache_server import DebcacheServer, make_config, write_config_file
from fake_mirror import FakeMirror
from http_client import get

from debcache import db as queries
from debcache.archive import parse_release
from debcache.cli import cli
from debcache.lockfile import LOCKFILE_FORMAT
from debcache.manifest import Entry, manifest_id
from debcache.store import FileStore

SUITE = "dists/bookworm/"


class Site:
    """An empty debcache whose `debian` upstream is the fake mirror, used through its CLI."""

    def __init__(self, tmp_path: Path, mirror: FakeMirror) -> None:
        self.config = make_config(tmp_path / "site", {"debian": [f"{mirror.url}/debian"]})
        self.config_file = write_config_file(self.config, tmp_path / "site.toml")
        self.tmp_path = tmp_path

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(self.config_file), *args])

    def import_lockfile(self, document: dict) -> Result:
        path = self.tmp_path / "crafted.lock.json"
        path.write_text(json.dumps(document))
        return self.run("manifests", "import", str(path))

    def manifest_ids(self) -> list[str]:
        if not (self.config.data_dir / "debcache.db").exists():  # refused before creating it
            return []
        return [m["id"] for m in json.loads(self.run("manifests", "--json").output)]

    def blobs(self) -> set[str]:
        store = FileStore(self.config.data_dir)
        return set(store.iterate()) if store.blobs.is_dir() else set()


def entry(archive: Archive, path: str) -> Entry:
    content = archive.read(path)
    return Entry("debian", path, hashlib.sha256(content).hexdigest(), len(content))


def lockfile(entries: list[Entry], **fields: object) -> dict:
    """A lockfile as `manifests export` writes it, with `fields` changed; its id is right."""
    document = {
        "format": LOCKFILE_FORMAT,
        "id": manifest_id(entries),
        "label": "crafted",
        "created": 1700000000.0,
        "recordings": ["r1"],
        "releases": {},
        "unverified": [],
        "completed": [],
        "entries": [
            {"upstream": e.upstream, "path": e.path, "sha256": e.sha256, "size": e.size}
            for e in entries
        ],
    }
    return {**document, **fields}


@pytest.fixture
def site(tmp_path: Path, mirror: FakeMirror) -> Site:
    return Site(tmp_path, mirror)


@pytest.fixture
def suite_entries(archive: Archive) -> list[Entry]:
    names = ("InRelease", "Release", "Release.gpg")
    return [entry(archive, SUITE + name) for name in names] + [
        entry(archive, archive.pool_path("hello"))
    ]


def refused(result: Result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("\n") <= 2, result.output
    for word in words:
        assert word in result.output, result.output


def test_releases_are_recomputed_from_the_release_files_not_taken_from_the_file(
    site: Site, archive: Archive, suite_entries: list[Entry]
) -> None:
    lying = {"debian bookworm": {"date": "poison", "sha256": "0" * 64, "valid_until": "poison"}}
    document = lockfile(suite_entries, releases=lying)
    assert site.import_lockfile(document).exit_code == 0
    database = queries.connect(site.config.data_dir / "debcache.db")
    try:
        stored = json.loads(queries.manifest_row(database, document["id"])["releases"])
    finally:
        database.conn.close()
    info = parse_release(archive.read(SUITE + "Release"))
    assert stored == {
        "debian bookworm": {
            "date": info.date,
            "sha256": suite_entries[0].sha256,  # the InRelease's, as freeze records it
            "valid_until": info.valid_until,
        }
    }
    assert site.run("promote", "b1", document["id"]).exit_code == 0
    with DebcacheServer(site.config) as server:
        reply = get(server.url, "/pin/b1/debian/dists/bookworm/InRelease")
        assert reply.status == 200 and reply.body == archive.read(SUITE + "InRelease")


def with_size(document: dict, number: int, size: object) -> dict:
    """`document` with entry `number`'s size changed and its id made right again."""
    changed = json.loads(json.dumps(document))
    changed["entries"][number]["size"] = size
    changed["id"] = manifest_id(Entry(**e) for e in changed["entries"])
    return changed


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"releases": {"debian bookworm": "poison"}}, ["releases are not an object"]),
        ({"releases": [1]}, ["releases are not an object"]),
        ({"created": "yesterday"}, ["created time"]),
        ({"created": "1700000000"}, ["created time"]),
        ({"created": True}, ["created time"]),
        ({"created": [1]}, ["created time"]),
        ({"created": 1e300}, ["created time"]),
        ({"created": -1}, ["created time"]),
        ({"recordings": [1]}, ["recordings are not a list of strings"]),
        ({"recordings": ["../x"]}, ["not all recording names"]),
        ({"unverified": [1]}, ["unverified are not a list of strings"]),
        ({"completed": "x"}, ["completed are not a list of strings"]),
        ({"warnings": [None]}, ["warnings are not a list of strings"]),
        ({"label": 5}, ["label is not one line"]),
        ({"label": "two\nlines"}, ["label is not one line"]),
    ],
)
def test_a_mistyped_field_is_refused_in_one_line_and_nothing_is_written(
    site: Site, suite_entries: list[Entry], fields: dict, words: list[str]
) -> None:
    refused(site.import_lockfile(lockfile(suite_entries, **fields)), "crafted.lock.json: ", *words)
    assert site.manifest_ids() == [] and site.blobs() == set()


@pytest.mark.parametrize("size", [10**30, -1, 2**63, 1.5, "12", None])
def test_an_entry_size_out_of_range_is_refused_in_one_line(
    site: Site, suite_entries: list[Entry], size: object
) -> None:
    document = with_size(lockfile(suite_entries), 3, size)
    refused(site.import_lockfile(document), "entry 4 has no valid size")
    assert site.manifest_ids() == [] and site.blobs() == set()


def test_an_entry_field_of_the_wrong_type_is_refused(
    site: Site, suite_entries: list[Entry]
) -> None:
    document = lockfile(suite_entries)
    document["entries"][3]["package"] = 5
    refused(site.import_lockfile(document), "entry 4 has a package that is not one line")


def test_a_wrong_size_for_a_blob_already_stored_is_refused(
    site: Site, suite_entries: list[Entry]
) -> None:
    good = lockfile(suite_entries)
    assert site.import_lockfile(good).exit_code == 0
    wrong = with_size(good, 3, suite_entries[3].size + 1)
    refused(site.import_lockfile(wrong), f"says {suite_entries[3].size + 1} bytes", "has")
    assert site.manifest_ids() == [good["id"]]


def test_a_failed_import_leaves_no_blob_it_added(
    site: Site, archive: Archive, suite_entries: list[Entry]
) -> None:
    """The pool file arrives; the Release's content is not what the entry says, so the
    import fails: the pool file it fetched goes too."""
    lying = Entry("debian", SUITE + "Release", "1" * 64, suite_entries[1].size)
    refused(site.import_lockfile(lockfile([suite_entries[3], lying])), "could not be fetched")
    assert site.manifest_ids() == [] and site.blobs() == set()


def test_a_failed_import_keeps_the_blobs_that_were_stored_before(
    site: Site, suite_entries: list[Entry]
) -> None:
    kept = lockfile(suite_entries[:1])
    assert site.import_lockfile(kept).exit_code == 0
    lying = Entry("debian", SUITE + "Release", "1" * 64, suite_entries[1].size)
    refused(site.import_lockfile(lockfile([suite_entries[0], lying])), "could not be fetched")
    assert site.blobs() == {suite_entries[0].sha256}
