"""User story: a name is exactly its pattern, or it is refused in one line.

`$` in a Python pattern also matches before a final newline, so `abc\\n` once passed
every name check: a recording from Basic credentials, a branch from the CLI and the
API, a lockfile's sha256, an upstream name, an archive path segment. Every kind of
name is checked here with hypothesis (any text plus a newline never passes) and end
to end through the surface that takes it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from hypothesis import example, given
from hypothesis import strategies as st
from test_api import call

from debcache.archive import installer_images_dir, parse_archive_path
from debcache.branches import check_branch_name
from debcache.cli import cli
from debcache.config import parse_config
from debcache.errors import (
    ConfigError,
    InvalidArchivePath,
    InvalidLockfile,
    InvalidName,
)
from debcache.lockfile import LOCKFILE_FORMAT, parse_lockfile
from debcache.manifest import Entry, manifest_id
from debcache.recording import check_recording_name, recording_from_credentials
from debcache.store import FileStore

SHA = "ab" * 32
# Text that would be a good name but for the newline it ends with.
good_then_newline = st.from_regex(r"[a-z0-9][a-z0-9.]{0,20}", fullmatch=True).map(
    lambda name: name + "\n"
)
any_then_newline = st.text(max_size=40).map(lambda text: text + "\n")


@given(st.one_of(good_then_newline, any_then_newline))
@example("abc\n")
@example(":\n")  # found by hypothesis 6.170: the user before the colon is empty
def test_no_recording_name_ends_in_a_newline(name: str) -> None:
    with pytest.raises(InvalidName):
        check_recording_name(name)
    if ":" in name:
        return  # a credential's user ends at its first colon: that part is another name
    with pytest.raises(InvalidName):
        recording_from_credentials("Basic " + base64.b64encode(f"{name}:".encode()).decode())


@given(st.one_of(good_then_newline, any_then_newline))
@example("abc\n")
def test_no_branch_name_ends_in_a_newline(name: str) -> None:
    with pytest.raises(InvalidName):
        check_branch_name(name)


@given(st.one_of(good_then_newline, any_then_newline))
@example("debian\n")
def test_no_upstream_or_branch_in_the_config_is_named_with_a_newline(name: str) -> None:
    upstream = {"upstreams": {name: {"urls": ["http://mirror.example.org/debian"]}}}
    with pytest.raises(ConfigError):
        parse_config(upstream, Path("debcache.toml"))
    branch = {"upstreams": {"debian": {"urls": ["http://mirror.example.org/debian"]}}}
    branch["branches"] = {name: {}}
    with pytest.raises(ConfigError):
        parse_config(branch, Path("debcache.toml"))


@given(st.sampled_from(["\n", "%0A", "%0a"]), st.sampled_from(["", "x.deb"]))
def test_no_archive_path_segment_ends_in_a_newline(newline: str, name: str) -> None:
    with pytest.raises(InvalidArchivePath):
        parse_archive_path(f"pool/main/h/hello{name}{newline}")
    with pytest.raises(InvalidArchivePath):
        parse_archive_path(f"dists{newline}/bookworm/InRelease")


@given(any_then_newline)
@example("hello_1.0_amd64.deb\n")
def test_no_archive_path_ends_in_a_newline_whatever_precedes_it(name: str) -> None:
    with pytest.raises(InvalidArchivePath):
        parse_archive_path(f"pool/main/{name}")
    with pytest.raises(InvalidArchivePath):
        parse_archive_path(f"pool/main/{quote(name)}")


def test_an_installer_images_file_never_ends_in_a_newline() -> None:
    images = "dists/bookworm/main/installer-amd64/current/images"
    assert installer_images_dir(f"{images}/netboot/x") == images
    assert installer_images_dir(f"{images}/netboot/x\n") is None


@given(st.one_of(st.just(SHA + "\n"), any_then_newline))
def test_no_blob_name_ends_in_a_newline(name: str) -> None:
    store = FileStore(Path("/nonexistent"))
    with pytest.raises(ValueError):
        store.local_path(name)


def lockfile_with_sha256(sha256: str) -> dict:
    entries = [Entry("debian", "pool/main/a/a.deb", sha256, 1)]
    return {
        "format": LOCKFILE_FORMAT,
        "id": manifest_id(entries),  # consistent: only the sha256 is wrong
        "entries": [
            {"upstream": "debian", "path": "pool/main/a/a.deb", "sha256": sha256, "size": 1}
        ],
    }


@given(st.one_of(st.just(SHA + "\n"), any_then_newline))
def test_no_lockfile_sha256_or_upstream_ends_in_a_newline(text: str) -> None:
    with pytest.raises(InvalidLockfile, match="no valid sha256"):
        parse_lockfile(lockfile_with_sha256(text), "x.lock.json")
    document = lockfile_with_sha256(SHA)
    document["entries"][0]["upstream"] = text
    entries = [Entry(text, "pool/main/a/a.deb", SHA, 1)]
    document["id"] = manifest_id(entries)
    with pytest.raises(InvalidLockfile, match="no valid upstream"):
        parse_lockfile(document, "x.lock.json")


# --- end to end ---------------------------------------------------------------------


def test_a_recording_named_with_a_newline_is_a_400(
    debcache: DebcacheServer, mirror: FakeMirror
) -> None:
    credentials = base64.b64encode(b"abc\n:").decode()
    target = f"{mirror.url}/debian/dists/bookworm/InRelease"
    reply = get(debcache.url, target, headers={"Proxy-Authorization": f"Basic {credentials}"})
    assert reply.status == 400 and reply.body.count(b"\n") == 1, reply
    assert b"not a valid recording name" in reply.body
    reply = get(debcache.url, "/record/abc%0A/debian/dists/bookworm/InRelease")
    assert reply.status == 400 and b"not a valid recording name" in reply.body
    assert mirror.requests == []


def test_pinned_upstream_and_manifest_id_with_a_newline_are_a_400(
    debcache: DebcacheServer,
) -> None:
    reply = get(debcache.url, "/pin/b/debian%0A/dists/bookworm/InRelease")
    assert reply.status == 400 and b"not an upstream name" in reply.body, reply
    reply = get(debcache.url, f"/manifest/{SHA}%0A/debian/dists/bookworm/InRelease")
    assert reply.status == 400 and b"not a full manifest id" in reply.body, reply


def test_promote_to_a_branch_named_with_a_newline_is_refused_in_one_line(
    keyed_debcache: DebcacheServer,
) -> None:
    result = CliRunner().invoke(
        cli, ["--config", str(keyed_debcache.config_file), "promote", "abc\n", "ffff"]
    )
    assert result.exit_code != 0
    assert "not a valid branch name" in result.output
    assert result.output.count("\n") == 1, result.output
    status, text = call(keyed_debcache, "POST", "/_/api/branches/abc%0A/promote", {"manifest": "f"})
    assert status == 400 and "not a valid branch name" in text, text
    assert text.count("\n") == 1


def test_a_lockfile_whose_sha256_ends_in_a_newline_is_not_imported(
    keyed_debcache: DebcacheServer, tmp_path: Path
) -> None:
    lockfile = tmp_path / "x.lock.json"
    lockfile.write_text(json.dumps(lockfile_with_sha256(SHA + "\n")))
    result = CliRunner().invoke(
        cli, ["--config", str(keyed_debcache.config_file), "manifests", "import", str(lockfile)]
    )
    assert result.exit_code != 0 and "no valid sha256" in result.output, result.output
    assert result.output.count("\n") == 1
