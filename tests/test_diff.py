"""User story: `debcache diff` says what a point release changed, installer included.

A lab boots d-i from a pin; a point release that bumps the installer (new kernel
ABI, a new ``installer-amd64/<version>`` directory behind ``current``) is what
breaks its installs. Two recordings of the same netboot + install, one on each
side of ``point_release``, are frozen; diff must name the packages, the udebs, the
installer images with the version behind ``current``, and exit 1 with
``--exit-code`` whenever the file sets differ.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from archive_fixture import Archive, point_release
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import freeze_json, run

from debcache.diff import installer_versions
from debcache.manifest import Entry, Manifest
from debcache.store import FileStore

INSTALLER = "dists/bookworm/main/installer-amd64"
IMAGES = (
    "SHA256SUMS",
    "netboot/debian-installer/amd64/initrd.gz",
    "netboot/debian-installer/amd64/linux",
)


def netboot_paths(archive: Archive) -> list[str]:
    """What a netboot install fetches: images, the Release, udebs, then a .deb."""
    return [
        "dists/bookworm/InRelease",
        *(archive.installer_path("bookworm", name) for name in IMAGES),
        "dists/bookworm/main/debian-installer/binary-amd64/Packages.xz",
        archive.pool_path(archive.installer("bookworm").kernel_udeb().name),
        archive.pool_path("netcfg-test"),
        "dists/bookworm/main/binary-amd64/Packages.xz",
        archive.pool_path("hello"),
    ]


def record(server: DebcacheServer, recording: str, paths: list[str]) -> None:
    rows_before = len(server.fetches(recording))
    for path in paths:
        assert get(server.url, f"/record/{recording}/debian/{path}").status == 200, path
    server.wait_for_fetches(rows_before + len(paths), recording=recording)


def record_and_freeze(server: DebcacheServer, archive: Archive, recording: str) -> tuple[str, dict]:
    """Record a netboot install; (manifest id, {image name: sha256}) of what it got."""
    record(server, recording, netboot_paths(archive))
    images = {name: archive.sha256(archive.installer_path("bookworm", name)) for name in IMAGES}
    return freeze_json(server, recording)["id"], images


def release_date(archive: Archive) -> str:
    text = archive.read("dists/bookworm/Release").decode()
    return re.search(r"^Date: (.*)$", text, re.MULTILINE).group(1)


def test_diff_names_the_installer_and_udebs_a_point_release_changed(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    before, old_images = record_and_freeze(own_debcache, own_archive, "netboot-1")
    old_date = release_date(own_archive)
    point_release(own_archive)
    after, new_images = record_and_freeze(own_debcache, own_archive, "netboot-2")
    new_date = release_date(own_archive)

    text = run(own_debcache, "diff", before[:12], after[:12])
    assert text.exit_code == 0, text.output
    old, new = ({n: s[:12] for n, s in i.items()} for i in (old_images, new_images))
    assert text.output == (
        f"--- manifest {before[:12]}\n"
        f"+++ manifest {after[:12]}\n"
        "\n"
        "debian bookworm\n"
        f"  Release date  {old_date} → {new_date}\n"
        "  packages\n"
        "    changed  hello  amd64  2.10-3 → 2.10-3+deb12u1\n"
        "  udebs\n"
        "    added    kernel-image-6.1.0-10-amd64-di  amd64  6.1.38-2\n"
        "    removed  kernel-image-6.1.0-9-amd64-di   amd64  6.1.38-1\n"
        "  installer main/installer-amd64, current: 20230607+deb12u1 → 20230607+deb12u2\n"
        "    changed  current/images/SHA256SUMS"
        f"                                {old['SHA256SUMS']} → {new['SHA256SUMS']}\n"
        "    changed  current/images/netboot/debian-installer/amd64/initrd.gz  "
        f"{old[IMAGES[1]]} → {new[IMAGES[1]]}\n"
        "    changed  current/images/netboot/debian-installer/amd64/linux      "
        f"{old[IMAGES[2]]} → {new[IMAGES[2]]}\n"
        "  index files   7 changed, 6 added, 6 removed (they follow from the changes above)\n"
    )

    document = json.loads(run(own_debcache, "diff", before[:12], after[:12], "--json").output)
    assert document["differs"] is True and document["other_files"] == []
    (suite,) = document["suites"]
    assert suite["changed"] == [
        {"package": "hello", "architecture": "amd64", "old": "2.10-3", "new": "2.10-3+deb12u1"}
    ]
    assert suite["udebs"] == {
        "added": [
            {
                "package": "kernel-image-6.1.0-10-amd64-di",
                "architecture": "amd64",
                "version": "6.1.38-2",
            }
        ],
        "removed": [
            {
                "package": "kernel-image-6.1.0-9-amd64-di",
                "architecture": "amd64",
                "version": "6.1.38-1",
            }
        ],
        "changed": [],
    }
    (installer,) = suite["installer"]
    assert installer["directory"] == "main/installer-amd64"
    assert installer["current"] == {"a": "20230607+deb12u1", "b": "20230607+deb12u2"}
    assert installer["images"] == [
        {"path": f"{INSTALLER}/current/images/{name}", "a": old_images[name], "b": new_images[name]}
        for name in IMAGES
    ]
    # The recorded indices, and the variants freeze completed for fresh hosts.
    index_files = {f["path"] for f in suite["index_files"]}
    assert index_files >= {
        "dists/bookworm/InRelease",
        "dists/bookworm/main/debian-installer/binary-amd64/Packages.xz",
        "dists/bookworm/main/binary-amd64/Packages.xz",
    }
    assert len(index_files) == 7 + 6 + 6
    assert all(
        path.startswith("dists/bookworm/main/")
        for path in index_files - {"dists/bookworm/InRelease"}
    )

    assert run(own_debcache, "diff", before[:12], after[:12], "--exit-code").exit_code == 1
    assert run(own_debcache, "diff", before[:12], before[:12], "--exit-code").exit_code == 0
    # The API answers the same document.
    api = get(own_debcache.url, f"/_/api/diff?a={before[:12]}&b={after[:12]}")
    assert api.status == 200 and json.loads(api.body)["suites"] == document["suites"]


def test_diff_exits_1_when_only_images_differ(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    # Same Release, same packages: one recording also fetched the initrd.
    paths = ["dists/bookworm/InRelease", own_archive.installer_path("bookworm", IMAGES[2])]
    record(own_debcache, "kernel-only", paths)
    record(own_debcache, "with-initrd", [*paths, own_archive.installer_path("bookworm", IMAGES[1])])
    kernel_only = freeze_json(own_debcache, "kernel-only")["id"]
    with_initrd = freeze_json(own_debcache, "with-initrd")["id"]

    result = run(own_debcache, "diff", kernel_only[:12], with_initrd[:12], "--exit-code")
    assert result.exit_code == 1, result.output
    initrd = own_archive.sha256(own_archive.installer_path("bookworm", IMAGES[1]))
    assert result.output == (
        f"--- manifest {kernel_only[:12]}\n"
        f"+++ manifest {with_initrd[:12]}\n"
        "\n"
        "debian bookworm\n"
        "  installer main/installer-amd64, current: 20230607+deb12u1\n"
        f"    added    current/images/netboot/debian-installer/amd64/initrd.gz  {initrd[:12]}\n"
    )


def test_diff_lists_other_files_of_a_recording(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    # A recording (diffed as it would freeze, unverified files included) fetched a
    # file that is no index, pool file or image: diff names it.
    own_archive.path("README.mirror").write_text("served by the test mirror\n")
    record(own_debcache, "plain", ["dists/bookworm/InRelease"])
    plain = freeze_json(own_debcache, "plain")["id"]
    record(own_debcache, "readme", ["dists/bookworm/InRelease", "README.mirror"])

    result = run(own_debcache, "diff", plain[:12], "readme", "--exit-code")
    assert result.exit_code == 1, result.output
    readme = own_archive.sha256("README.mirror")
    assert result.output == (
        f"--- manifest {plain[:12]}\n"
        "+++ recording readme (as it would freeze)\n"
        "\n"
        "other files\n"
        f"  added    debian/README.mirror  {readme[:12]}\n"
    )
    document = json.loads(run(own_debcache, "diff", plain[:12], "readme", "--json").output)
    assert document["suites"] == []
    assert document["other_files"] == [
        {"upstream": "debian", "path": "README.mirror", "a": None, "b": readme}
    ]
    same = run(own_debcache, "diff", plain[:12], "plain", "--exit-code")
    assert same.exit_code == 0 and same.output.endswith("\nNo file differs.\n")


def test_the_version_behind_current_comes_from_the_release_or_the_manifest(
    tmp_path: Path,
) -> None:
    # Unit test of the lookup alone: `current` is the dated directory with its SHA256SUMS.
    store = FileStore(tmp_path).create_directories()
    sums = "d" * 64
    installer = "dists/bookworm/main/installer-amd64"

    def manifest(*entries: Entry) -> Manifest:
        return Manifest("0" * 64, None, 0.0, [], list(entries))

    current = Entry("debian", f"{installer}/current/images/SHA256SUMS", sums, 10)
    release = (
        "Date: Sat, 07 Oct 2023 09:12:44 UTC\nSHA256:\n"
        f" {'e' * 64} 10 main/installer-amd64/20230607+deb12u1/images/SHA256SUMS\n"
        f" {sums} 10 main/installer-amd64/20230607+deb12u2/images/SHA256SUMS\n"
        f" {sums} 10 main/installer-amd64/current/images/SHA256SUMS\n"
    ).encode()
    release_sha, _ = store.put(release)
    listed = manifest(current, Entry("debian", "dists/bookworm/Release", release_sha, 1))
    key = ("debian", installer)
    assert installer_versions(listed, store) == {key: "20230607+deb12u2"}
    # The Release evicted: a dated SHA256SUMS the manifest holds itself still tells.
    dated = Entry("debian", f"{installer}/20230607+deb12u2/images/SHA256SUMS", sums, 10)
    assert installer_versions(manifest(current, dated), store) == {key: "20230607+deb12u2"}
    assert installer_versions(manifest(current), store) == {}
