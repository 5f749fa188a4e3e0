"""Pure logic: which archive paths are immutable, and which requests can never escape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from debcache.archive import (
    PathKind,
    ReleaseEntry,
    ReleaseInfo,
    by_hash_sha256,
    classify_path,
    content_type_for,
    fresh_update_indices,
    host_architecture,
    is_packages_index,
    parse_archive_path,
    upstream_url,
)
from debcache.errors import InvalidArchivePath

SHA = "a" * 64


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("pool/main/h/hello/hello_2.10-3_amd64.deb", PathKind.POOL),
        ("pool/main/n/netcfg/netcfg_1.0_amd64.udeb", PathKind.POOL),
        (f"dists/bookworm/main/binary-amd64/by-hash/SHA256/{SHA}", PathKind.BY_HASH),
        ("dists/bookworm/InRelease", PathKind.VOLATILE),
        ("dists/bookworm/main/binary-amd64/Packages.xz", PathKind.VOLATILE),
        ("dists/bookworm/main/installer-amd64/current/images/SHA256SUMS", PathKind.VOLATILE),
        ("dists/bookworm/main/installer-amd64/current/images/netboot/initrd.gz", PathKind.VOLATILE),
        ("project/trace/master", PathKind.VOLATILE),
    ],
)
def test_paths_are_classified(path: str, kind: PathKind) -> None:
    assert classify_path(path) is kind


def test_by_hash_names_carry_their_digest() -> None:
    assert by_hash_sha256(f"dists/b/main/binary-amd64/by-hash/SHA256/{SHA}") == SHA
    assert by_hash_sha256(f"dists/b/main/binary-amd64/by-hash/MD5Sum/{'a' * 32}") is None
    assert by_hash_sha256("dists/b/main/binary-amd64/by-hash/SHA256/short") is None


def test_packages_indices_are_recognised() -> None:
    assert is_packages_index("dists/b/main/binary-amd64/Packages.gz")
    assert is_packages_index(f"dists/b/main/binary-amd64/by-hash/SHA256/{SHA}")
    assert is_packages_index("dists/b/main/debian-installer/binary-amd64/Packages.xz")
    assert not is_packages_index("dists/b/InRelease")
    assert not is_packages_index(f"dists/b/main/i18n/by-hash/SHA256/{SHA}")


def test_content_types_never_claim_an_encoding() -> None:
    assert content_type_for("dists/b/main/binary-amd64/Packages.gz") == "application/gzip"
    assert content_type_for("pool/main/h/hello/hello_1_amd64.deb").startswith("application/vnd")
    assert content_type_for("dists/b/InRelease") == "application/octet-stream"


def test_apt_quoting_is_decoded_once_and_re_encoded_upstream() -> None:
    path = parse_archive_path("pool/main/t/tool%2b%2b/tool%2b%2b_1.0%7erc1%2bdfsg-1_amd64.deb")
    assert path == "pool/main/t/tool++/tool++_1.0~rc1+dfsg-1_amd64.deb"
    url = upstream_url("http://mirror.example.org/debian", path)
    assert url == f"http://mirror.example.org/debian/{path}"


@given(st.text(max_size=80))
def test_no_request_path_escapes_the_archive(raw: str) -> None:
    try:
        path = parse_archive_path(raw)
    except InvalidArchivePath:
        return
    segments = path.split("/")
    assert all(segment not in ("", ".", "..") for segment in segments)
    assert not any(c in path for c in "\\\0%?#") and not path.startswith("/")


@given(st.lists(st.sampled_from(["..", ".", "%2e%2e", "%2E.", "%2f", "%5c", "%00", "a", "b"])))
def test_dot_segments_in_any_encoding_are_refused(parts: list[str]) -> None:
    raw = "/".join(parts)
    try:
        path = parse_archive_path(raw)
    except InvalidArchivePath:
        return
    assert ".." not in path.split("/") and "." not in path.split("/")


# --- what a fresh client fetches (freeze's completeness rule) -------------------------


@pytest.mark.parametrize(
    ("path", "shows"),
    [
        ("pool/main/h/hello/hello_2.10-3_amd64.deb", ("amd64", False)),
        ("pool/main/n/netcfg/netcfg_1.0_arm64.udeb", ("arm64", True)),
        ("pool/main/g/greet-data/greet-data_2.10-3_all.deb", None),
        ("dists/bookworm/main/binary-i386/Packages.xz", ("i386", False)),
        ("dists/bookworm/main/binary-all/Packages.xz", None),
        ("dists/bookworm/main/debian-installer/binary-amd64/Packages.xz", ("amd64", True)),
        ("dists/bookworm/main/installer-amd64/current/images/SHA256SUMS", ("amd64", True)),
        ("dists/bookworm/InRelease", None),
        ("dists/bookworm/main/i18n/Translation-en.bz2", None),
    ],
)
def test_the_architecture_a_fetched_path_shows(path: str, shows: tuple | None) -> None:
    assert host_architecture(path) == shows


def debian_release(components: str, names: list[str]) -> ReleaseInfo:
    entries = {name: ReleaseEntry(name, SHA, 1) for name in names}
    return ReleaseInfo(None, None, None, None, entries, tuple(components.split()), ())


def test_a_fresh_update_needs_every_component_binary_all_and_translation_en() -> None:
    names = [
        f"{component}/{index}"
        for component in ("main", "contrib", "updates/main")
        for index in (
            "binary-amd64/Packages",
            "binary-amd64/Packages.xz",
            "binary-amd64/Packages.gz",
            "binary-arm64/Packages.xz",
            "binary-all/Packages.xz",
            "binary-amd64/Release",
            "debian-installer/binary-amd64/Packages.xz",
            "debian-installer/binary-arm64/Packages.xz",
            "i18n/Translation-en",
            "i18n/Translation-en.bz2",
            "i18n/Translation-de.bz2",
            "Contents-amd64.gz",
            "dep11/Components-amd64.yml.xz",
            "binary-amd64/Packages.diff/Index",
        )
    ]
    info = debian_release("main updates/main", names)
    wanted = fresh_update_indices(info, {"amd64"}, set())
    assert sorted(wanted) == [
        f"{component}/{index}"
        for component in ("main", "updates/main")
        for index in ("binary-all/Packages", "binary-amd64/Packages", "i18n/Translation-en")
    ]
    assert [e.name for e in wanted["main/binary-amd64/Packages"]] == [
        "main/binary-amd64/Packages",
        "main/binary-amd64/Packages.xz",
        "main/binary-amd64/Packages.gz",
    ]
    with_installer = fresh_update_indices(info, {"amd64"}, {"amd64"})
    assert set(with_installer) - set(wanted) == {
        "main/debian-installer/binary-amd64/Packages",
        "updates/main/debian-installer/binary-amd64/Packages",
    }


def test_the_security_archive_and_debian_suites_as_their_releases_say() -> None:
    names = [
        "main/binary-amd64/Packages.xz",
        "main/binary-all/Packages.xz",
        "main/i18n/Translation-en.xz",
    ]
    entries = {name: ReleaseEntry(name, SHA, 1) for name in names}
    # The security archive: "Components: updates/main ...", no "all" in Architectures.
    security = ReleaseInfo(
        None, None, None, None, entries, ("updates/main", "updates/contrib"), ("amd64", "i386")
    )
    assert sorted(fresh_update_indices(security, {"amd64"}, set())) == [
        "main/binary-amd64/Packages",
        "main/i18n/Translation-en",
    ]
    # Debian's suites repeat arch-all packages in binary-<arch>; apt skips binary-all.
    bookworm = ReleaseInfo(None, None, None, None, entries, ("main",), ("all", "amd64"), True, True)
    assert "main/binary-all/Packages" not in fresh_update_indices(bookworm, {"amd64"}, set())
    test_archive = ReleaseInfo(None, None, None, None, entries, ("main",), ("amd64", "all"))
    assert "main/binary-all/Packages" in fresh_update_indices(test_archive, {"amd64"}, set())
