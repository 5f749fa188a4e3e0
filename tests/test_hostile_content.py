"""User story: a broken or hostile mirror, or a tampered lockfile, never crashes debcache
nor leads it outside the archive.

Properties (hypothesis) of the parsers that read what others wrote: Release and
Packages indices, installer SHA256SUMS, by-hash names, request paths and lockfiles.
Each either returns what the text says or raises its documented error (request paths:
`InvalidArchivePath`, lockfiles: `InvalidLockfile`); never a traceback of another
kind. Examples that once failed are pinned as explicit tests below the properties.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from debcache.archive import (
    MAX_INDEX_LINE,
    MAX_INDEX_STANZA,
    by_hash_sha256,
    packages_pool_entries,
    packages_stanzas,
    parse_archive_path,
    parse_checksums_file,
    parse_release,
)
from debcache.errors import InvalidArchivePath, InvalidLockfile, UnreadableIndex
from debcache.lockfile import LOCKFILE_FORMAT, parse_lockfile
from debcache.manifest import Entry, manifest_id

SHA = "a" * 64
FIELDS = {"Package", "Version", "Architecture", "Filename", "Size", "SHA256"}
HOSTILE_NAMES = ["../../etc/passwd", "/etc/passwd", "main/../../x", "./x", "", "a//b", "é/ü"]
# Field values as a hostile index may carry them: traversals, huge, non-ASCII, empty.
hostile_values = st.one_of(
    st.sampled_from([*HOSTILE_NAMES, SHA, "12", "-1", "1e9"]),
    st.integers(1, 200_000).map(lambda n: "x" * n),  # huge
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"), max_size=40),
)
field_names = st.sampled_from(
    ["Package", "Version", "Architecture", "Filename", "Size", "SHA256", "Suite", "Date"]
)
# deb822-ish text: known and arbitrary field names, duplicates, continuation lines, and
# bytes that are not UTF-8.
stanza_lines = st.lists(
    st.one_of(
        st.builds(lambda k, v: f"{k}: {v}".encode(), field_names, hostile_values),
        st.builds(lambda v: f" {v}".encode(), hostile_values),
        st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
        st.just(b""),
    ),
    max_size=12,
)
index_text = stanza_lines.map(lambda lines: b"\n".join(lines) + b"\n")
# Tests that write a file per example share one directory: hypothesis reuses the test.
SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def escapes(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return path.startswith("/") or ".." in parts or "." in path.split("/")


# --- Release ----------------------------------------------------------------------


def release_text(entries: list[tuple[str, str, str]], extra: bytes = b"") -> bytes:
    lines = "".join(f" {digest} {size} {name}\n" for digest, size, name in entries)
    return (
        b"Suite: bookworm\nDate: Sat, 10 Jun 2023 08:53:51 UTC\n"
        + extra
        + b"SHA256:\n"
        + (lines.encode())
    )


@given(index_text)
@example(b"SHA256:\n abc 12x main/Packages\n")  # a size that is not a number
@example(b"SHA256:\n abc main/Packages\n")  # a line without its size
@example(b"\xff\xfe: x\n")  # a field name that is not UTF-8
def test_a_release_parses_into_entries_or_nothing_never_a_crash(text: bytes) -> None:
    info = parse_release(text)
    for name, entry in info.entries.items():
        assert name == entry.name and entry.size >= 0
        assert len(entry.sha256) == 64 and not escapes(name), entry


@given(
    st.lists(
        st.tuples(
            st.sampled_from([SHA, "b" * 64, "zz"]),
            st.sampled_from(["1", "x"]),
            st.text(st.characters(blacklist_categories=["Cc", "Cs", "Z"]), max_size=20),
        ),
        max_size=8,
    )
)
def test_only_well_formed_release_entries_count(entries: list[tuple[str, str, str]]) -> None:
    parsed = parse_release(release_text(entries)).entries
    for digest, size, name in entries:
        segments = name.split("/")  # a file below the suite: no empty, . or .. segment
        if digest != "zz" and size == "1" and not {"", ".", ".."} & set(segments):
            assert name in parsed  # (a later duplicate may have replaced its digest)
    assert all(not escapes(name) for name in parsed)


def test_release_entries_that_leave_the_suite_are_dropped() -> None:
    text = release_text(
        [(SHA, "1", "../../../etc/passwd"), (SHA, "2", "/etc/shadow"), (SHA, "3", "main/Packages")]
    )
    assert list(parse_release(text).entries) == ["main/Packages"]


def test_a_release_with_a_broken_entry_or_encoding_still_parses() -> None:
    info = parse_release(release_text([("abc", "12x", "main/Packages"), (SHA, "5", "ok")]))
    assert list(info.entries) == ["ok"] and info.suite == "bookworm"
    assert parse_release(b"\xff\xfe: x\nSuite: bookworm\n").suite == "bookworm"
    assert parse_release(b"Suite: \xff\n").suite is not None


def test_a_duplicated_release_field_takes_the_last_value() -> None:
    assert parse_release(b"Suite: a\nSuite: b\n").suite == "b"


# --- Packages ---------------------------------------------------------------------


@SETTINGS
@given(index_text)
@example(b"Filename: ../../etc/passwd\nSize: 12\nSHA256: " + SHA.encode() + b"\n")
@example(b"Filename: x\nFilename: y\nSize: 1\nSHA256: aa\n")  # duplicated field
@example(b"Package: \xff\xfe\nFilename: x\nSize: zz\nSHA256: a\n")  # not UTF-8, bad Size
@example(b"\x80\n")  # not UTF-8, and python-debian's guess of the encoding fails
@example(b"Package: a\n \x1e0\n")  # a continuation line that str.splitlines() splits
@example(b"BZh\n")  # the magic bytes of bz2, then nothing that decompresses
def test_a_packages_index_yields_its_stanzas_verbatim_never_a_crash(
    tmp_path: Path, text: bytes
) -> None:
    index = tmp_path / "Packages"
    index.write_bytes(text)
    # Compression is told by magic bytes, not the name: b"BZh\n" is a broken bz2 stream.
    with contextlib.suppress(UnreadableIndex):
        for filename, size, digest in packages_pool_entries(index):
            assert filename and size >= 0 and digest
    with contextlib.suppress(UnreadableIndex):  # python-debian refuses some stanzas whole
        for stanza in packages_stanzas(index):
            assert set(stanza) <= FIELDS


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("Packages.gz", b"\x1f\x8b garbage"),
        ("Packages.xz", b"\xfd7zXZ\x00 garbage"),
        ("Packages.bz2", b"BZh garbage"),
        ("Packages.gz", gzip.compress(b"Package: a\n" * 100)[:-20]),  # truncated
    ],
)
def test_a_corrupt_compressed_index_is_one_unreadable_index_error(
    tmp_path: Path, name: str, content: bytes
) -> None:
    index = tmp_path / name
    index.write_bytes(content)
    for parse in (packages_pool_entries, packages_stanzas):
        with pytest.raises(UnreadableIndex, match=f"^{name}: not a readable Packages index"):
            list(parse(index))


def test_a_traversing_filename_is_listed_as_written_and_can_never_be_requested(
    tmp_path: Path,
) -> None:
    """The scan keeps a Filename verbatim: it is only ever looked up by request paths,
    which parse_archive_path has already refused when they hold `..` or start with /."""
    index = tmp_path / "Packages"
    index.write_bytes(f"Filename: ../../etc/passwd\nSize: 12\nSHA256: {SHA}\n".encode())
    assert list(packages_pool_entries(index)) == [("../../etc/passwd", 12, SHA)]
    for raw in ("../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"):
        with pytest.raises(InvalidArchivePath):
            parse_archive_path(raw)


def test_a_long_field_is_read_whole(tmp_path: Path) -> None:
    index = tmp_path / "Packages"
    description = "x" * 900_000  # under MAX_INDEX_LINE
    index.write_bytes(
        f"Package: a\nDescription: {description}\nFilename: pool/a.deb\nSize: 1\n"
        f"SHA256: {SHA}\n".encode()
    )
    assert list(packages_pool_entries(index)) == [("pool/a.deb", 1, SHA)]
    assert [s["Filename"] for s in packages_stanzas(index)] == ["pool/a.deb"]


def test_a_stanza_over_the_limits_is_skipped_or_refused(tmp_path: Path, caplog) -> None:
    index = tmp_path / "Packages"
    good = f"Filename: pool/b.deb\nSize: 2\nSHA256: {SHA}\n"
    long_line = f"Package: a\nDescription: {'x' * (MAX_INDEX_LINE + 1)}\nFilename: pool/a.deb\n"
    many_lines = "Package: c\n" + " y\n" * (MAX_INDEX_STANZA // 3) + "Filename: pool/c.deb\n"
    for stanza in (long_line, many_lines):
        index.write_bytes(f"{stanza}Size: 1\nSHA256: {SHA}\n\n{good}".encode())
        caplog.clear()
        assert list(packages_pool_entries(index)) == [("pool/b.deb", 2, SHA)]
        assert [r.getMessage() for r in caplog.records] == [
            "Packages: skipped 1 stanzas over the size limits"
        ]
        with pytest.raises(UnreadableIndex, match="over 1048576 bytes"):
            list(packages_stanzas(index))


# --- installer SHA256SUMS and by-hash names ---------------------------------------


@given(st.text())
@example(f"{SHA}  ../../etc/passwd\n{SHA}  ./netboot/linux\n")
def test_checksums_files_keep_only_digest_lines(text: str) -> None:
    for name, digest in parse_checksums_file(text).items():
        assert len(digest) == 64 and int(digest, 16) >= 0 and name


@given(st.text(), st.text(alphabet="0123456789abcdefABCDEF/", max_size=70))
def test_a_by_hash_digest_is_64_lower_hex_or_none(head: str, tail: str) -> None:
    for path in (f"{head}/by-hash/SHA256/{tail}", tail, head):
        digest = by_hash_sha256(path)
        assert digest is None or (len(digest) == 64 and digest == digest.lower())


# --- request paths ------------------------------------------------------------------


@given(st.lists(st.sampled_from(["..", ".", "", "%2e%2e", "%2F", "%00", "a", "b", "é"])))
def test_a_parsed_request_path_stays_below_the_archive_root(parts: list[str]) -> None:
    try:
        path = parse_archive_path("/".join(parts))
    except InvalidArchivePath:
        return
    root = PurePosixPath("/srv/archive")
    assert not escapes(path)
    assert (root / path).parts[: len(root.parts)] == root.parts


# --- lockfiles ----------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
good_entries = st.lists(
    st.builds(
        Entry,
        st.sampled_from(["debian", "security"]),
        st.sampled_from(["pool/main/a/a.deb", "dists/bookworm/InRelease", *HOSTILE_NAMES]),
        st.sampled_from([SHA, "B" * 64, "short"]),
        st.sampled_from([0, 12, -1]),
    ),
    min_size=1,
    max_size=4,
)


def lockfile(entries: list[Entry], **fields: object) -> dict:
    document: dict = {
        "format": LOCKFILE_FORMAT,
        "id": manifest_id(entries),
        "entries": [
            {"upstream": e.upstream, "path": e.path, "sha256": e.sha256, "size": e.size}
            for e in entries
        ],
    }
    document.update(fields)
    return document


@given(
    good_entries,
    st.dictionaries(
        st.sampled_from(["label", "created", "recordings", "releases", "unverified", "completed"]),
        json_values,
    ),
)
@example([Entry("debian", "pool/main/a/a.deb", SHA, 1)], {"created": "yesterday"})
@example([Entry("debian", "pool/main/a/a.deb", SHA, 1)], {"releases": [1, 2]})
@example([Entry("debian", "pool/main/a/a.deb", SHA, 1)], {"recordings": 5})
def test_a_lockfile_gives_a_manifest_with_its_id_or_bad_request(
    entries: list[Entry], fields: dict
) -> None:
    document = lockfile(entries, **fields)
    try:
        manifest = parse_lockfile(json.loads(json.dumps(document)), "x.lock.json")
    except InvalidLockfile:
        return
    assert manifest.id == document["id"] == manifest_id(manifest.entries)
    assert all(not escapes(e.path) for e in manifest.entries)


@given(json_values)
def test_any_json_is_a_lockfile_or_bad_request(document: object) -> None:
    with contextlib.suppress(InvalidLockfile):
        parse_lockfile(document, "x.lock.json")


@pytest.mark.parametrize(
    "fields",
    [{"created": "yesterday"}, {"releases": [1, 2]}, {"recordings": 5}, {"unverified": 1}],
)
def test_a_lockfile_with_a_mistyped_field_is_refused_in_one_line(fields: dict) -> None:
    document = lockfile([Entry("debian", "pool/main/a/a.deb", SHA, 1)], **fields)
    with pytest.raises(InvalidLockfile) as refused:
        parse_lockfile(document, "x.lock.json")
    assert str(refused.value).startswith("x.lock.json: ") and "\n" not in str(refused.value)


def test_a_lockfile_whose_id_was_edited_is_refused() -> None:
    document = lockfile([Entry("debian", "pool/main/a/a.deb", SHA, 1)])
    document["id"] = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(InvalidLockfile, match="does not match"):
        parse_lockfile(document, "x.lock.json")
