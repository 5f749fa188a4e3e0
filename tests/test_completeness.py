"""User story: a pin serves every fresh install of its set, not only the one recorded.

A lab host whose apt lists are already current records an install: the mirror
sends no Last-Modified, so apt gets InRelease whole, sees the same hashes and
fetches no Packages at all. Frozen and promoted, that pin must still let a
*fresh* host `apt-get update` and install with the mirror gone, whatever its
By-Hash and compression settings. And `freeze --installer complete` holds every
udeb the frozen debian-installer index lists, for hosts with other hardware.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import (
    Archive,
    PackageSpec,
    build_security_archive,
    build_test_archive,
    point_release,
)
from debcache_server import DebcacheServer, make_config, write_config_file
from fake_mirror import FakeMirror, Fault
from http_client import get, request
from workflow import (
    freeze_json,
    keyed_debcache_for,
    manifest_json,
    record_install,
    run,
    wait_for_install_rows,
)

from debcache import db as queries
from debcache.config import Upstream
from debcache.manifest import load_manifest
from debcache.upstream import PARALLEL_DOWNLOADS

SUITES = ("bookworm", "bookworm-updates")
PACKAGES = ("hello", "tool++", "greet-tzdata")
# A host that reads descriptions: apt then fetches i18n/Translation-en too.
WITH_TRANSLATIONS = {"Acquire::Languages": "en"}


@pytest.fixture
def lab_archive(tmp_path: Path) -> Archive:
    """Both suites with Translation-en, as Debian publishes them."""
    archive = build_test_archive(tmp_path / "www")
    for suite in SUITES:
        archive.publish_suite(suite, archive.packages(suite), codename=suite, translations=True)
    return archive


@pytest.fixture
def real_mirror(lab_archive: Archive):
    """Like the real mirrors: no Last-Modified, no ETag, so no 304 ever."""
    with FakeMirror(lab_archive.root, validators=False) as server:
        yield server


@pytest.fixture
def lab_debcache(tmp_path: Path, real_mirror: FakeMirror, lab_archive: Archive):
    server = keyed_debcache_for(tmp_path, real_mirror, lab_archive)
    yield server
    server.stop()


def sources(archive: Archive, base: str) -> list[str]:
    return [f"deb [signed-by={archive.key.keyring}] {base} {suite} main" for suite in SUITES]


def run_through(
    server: DebcacheServer, mirror: FakeMirror, apt: AptRoot, recording: str | None, *packages: str
) -> None:
    """apt-get update (+ download) with debcache as proxy, as `recording` (None: not recorded)."""
    before, had = len(mirror.requests), set(apt.downloaded())
    rows_before = len(server.fetches(recording)) if recording else 0
    user = f"{recording}@" if recording else ""
    proxy = f"http://{user}127.0.0.1:{server.port}/"
    update = apt.update(proxy=proxy, options=WITH_TRANSLATIONS)
    assert update.returncode == 0, update.stdout + update.stderr
    if packages:
        result = apt.download(*packages, proxy=proxy, options=WITH_TRANSLATIONS)
        assert result.returncode == 0, result.stdout + result.stderr
    if recording:
        expected = rows_before + len(mirror.requests) - before
        wait_for_install_rows(server, recording, expected, apt, had)


def warm_host(
    server: DebcacheServer, mirror: FakeMirror, archive: Archive, tmp_path: Path
) -> AptRoot:
    """A host that updated earlier (not recorded): its lists are current."""
    apt = AptRoot(tmp_path / "warm-host")
    apt.write_sources(sources(archive, f"{mirror.url}/debian"))
    run_through(server, mirror, apt, None)
    return apt


def update_and_install_fresh(
    server: DebcacheServer,
    archive: Archive,
    directory: Path,
    branch: str,
    options: dict[str, str],
    *packages: str,
) -> tuple[dict[str, bytes], set[str]]:
    """A fresh apt state: update from the pin (every answer a 200), then download packages;
    (the .debs, the paths the pin served)."""
    apt = AptRoot(directory)
    apt.write_sources(sources(archive, f"{server.url}/pin/{branch}/debian"))
    rows_before = len(server.fetches())
    update = apt.update(options={**WITH_TRANSLATIONS, **options})
    assert update.returncode == 0, update.stdout + update.stderr
    assert "Ign:" not in update.stdout and "Err:" not in update.stdout, update.stdout
    output = update.stdout
    if packages:
        result = apt.download(*packages, options={**WITH_TRANSLATIONS, **options})
        assert result.returncode == 0, result.stdout + result.stderr
        output += result.stdout
    # apt prints one "Get:" per file it received; their log rows are committed in groups.
    served = output.count("\nGet:") + output.startswith("Get:")
    pinned = server.wait_for_fetches(rows_before + served)[rows_before:]
    pinned = [r for r in pinned if r["source"] == "pinned"]
    assert len(pinned) == served
    assert pinned and all(r["status"] == 200 for r in pinned), [
        (r["path"], r["status"]) for r in pinned if r["status"] != 200
    ]
    return apt.downloaded(), {r["path"] for r in pinned}


def by_hash_of(archive: Archive, path: str) -> str:
    return f"{path.rpartition('/')[0]}/by-hash/SHA256/{archive.sha256(path)}"


FRESH_HOSTS = {
    "by-hash, xz first": {"Acquire::By-Hash": "yes", "Acquire::CompressionTypes::Order::": "xz"},
    "by-hash, gz first": {"Acquire::By-Hash": "yes", "Acquire::CompressionTypes::Order::": "gz"},
    "plain, xz first": {"Acquire::By-Hash": "no", "Acquire::CompressionTypes::Order::": "xz"},
    "plain, gz first": {"Acquire::By-Hash": "no", "Acquire::CompressionTypes::Order::": "gz"},
}


def test_a_host_with_current_lists_records_a_pin_every_fresh_host_can_update_from(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "warm-run", *PACKAGES)
    recorded = {r["path"] for r in lab_debcache.fetches("warm-run")}
    # The reproduction: apt saw unchanged InRelease files and fetched no index.
    assert {p for p in recorded if p.startswith("dists/")} == {
        f"dists/{suite}/InRelease" for suite in SUITES
    }
    installed = host.downloaded()

    frozen = freeze_json(lab_debcache, "warm-run", "--promote", "lab")
    assert frozen["unverified"] == [] and frozen["completed"] > 0
    manifest = manifest_json(lab_debcache, frozen["id"])
    paths = {e["path"] for e in manifest["entries"]}
    assert set(manifest["completed"]) == {f"debian/{p}" for p in paths - recorded}
    for suite in SUITES:
        for index in ("binary-amd64/Packages", "binary-all/Packages", "i18n/Translation-en"):
            assert any(p.startswith(f"dists/{suite}/main/{index}") for p in paths), (suite, index)
        # Each compression the mirror has, by name and by hash; not the uncompressed
        # Translation-en the Release lists but the mirror lacks.
        for name in ("Packages", "Packages.gz", "Packages.xz"):
            path = f"dists/{suite}/main/binary-amd64/{name}"
            assert path in paths
            assert f"dists/{suite}/main/binary-amd64/by-hash/SHA256/{lab_archive.sha256(path)}" in (
                paths
            )
        assert f"dists/{suite}/main/i18n/Translation-en" not in paths
    for entry in manifest["entries"]:
        assert entry["sha256"] == lab_archive.sha256(entry["path"]), entry["path"]
    exported = json.loads(run(lab_debcache, "manifests", "export", frozen["id"][:12]).output)
    assert exported["completed"] == manifest["completed"]
    shown = run(lab_debcache, "manifests", "show", frozen["id"][:12])
    assert f"completed {frozen['completed']} file(s)" in shown.output
    assert "dists/bookworm-updates/main/binary-amd64/Packages.xz" in shown.output

    real_mirror.stop()
    for number, (name, options) in enumerate(FRESH_HOSTS.items()):
        fresh, served = update_and_install_fresh(
            lab_debcache, lab_archive, tmp_path / f"fresh-{number}", "lab", options, *PACKAGES
        )
        assert fresh == installed, name
        # Each host asked for what its settings say, and got it.
        suffix = ".gz" if "gz" in name else ".xz"
        for suite in SUITES:
            packages = f"dists/{suite}/main/binary-amd64/Packages{suffix}"
            wanted = packages
            if options["Acquire::By-Hash"] == "yes":
                wanted = by_hash_of(lab_archive, packages)
            assert wanted in served, (name, sorted(served))
            assert any("/i18n/" in p and p.startswith(f"dists/{suite}/") for p in served), name


def test_a_bare_update_on_a_host_with_current_lists_freezes_to_a_complete_pin(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "bare")
    assert {r["path"] for r in lab_debcache.fetches("bare")} == {
        f"dists/{suite}/InRelease" for suite in SUITES
    }
    frozen = freeze_json(lab_debcache, "bare", "--promote", "lab")
    # No pool file says which architecture the host has: every one the Release lists.
    assert frozen["files"] > 3 and frozen["unverified"] == []
    real_mirror.stop()
    update_and_install_fresh(lab_debcache, lab_archive, tmp_path / "fresh", "lab", {})
    # It pins the indices only: installing needs a recording that installed.
    install = AptRoot(tmp_path / "fresh").download("hello")
    assert install.returncode != 0 and "404" in install.stdout + install.stderr


def test_an_index_that_can_be_neither_found_nor_fetched_fails_the_freeze(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "warm-run", "hello")
    # The warm-up fetched only the .xz of bookworm-updates: the .gz must come from the mirror.
    gz = "dists/bookworm-updates/main/binary-amd64/Packages.gz"
    by_hash = f"dists/bookworm-updates/main/binary-amd64/by-hash/SHA256/{lab_archive.sha256(gz)}"
    for path in (gz, by_hash):
        real_mirror.set_fault(f"/debian/{path}", Fault.status(503))
    result = run(lab_debcache, "freeze", "warm-run")
    assert result.exit_code == 1
    # Nothing recorded failed: the header says what did, and what to do.
    assert result.output.startswith(
        "Error: 1 file(s) a fresh install needs could not be completed: neither cached nor "
        "fetched from the upstream. Make the upstream reachable (or fix its urls) and freeze "
        "again, or pass --allow-unverified to freeze without them"
    ), result.output
    assert f"debian/{gz}: a fresh apt-get update needs it" in result.output
    assert "HTTP 503" in result.output and "Traceback" not in result.output
    # Left out, so not "unverified" (what the manifest holds unverified): a warning.
    allowed = freeze_json(lab_debcache, "warm-run", "--allow-unverified")
    assert allowed["unverified"] == []
    assert any(gz in w and w.endswith("not in the manifest") for w in allowed["warnings"])
    for path in (gz, by_hash):
        real_mirror.clear_fault(f"/debian/{path}")
    assert freeze_json(lab_debcache, "warm-run")["unverified"] == []


def install_from(
    server: DebcacheServer, archive: Archive, directory: Path, branch: str, options: dict
) -> dict[str, bytes]:
    """A fresh apt state that updates from the pin (falling back where it must) and
    downloads PACKAGES; the .debs."""
    apt = AptRoot(directory)
    apt.write_sources(sources(archive, f"{server.url}/pin/{branch}/debian"))
    update = apt.update(options={**WITH_TRANSLATIONS, **options})
    assert update.returncode == 0 and "W:" not in update.stderr, update.stdout + update.stderr
    result = apt.download(*PACKAGES, options={**WITH_TRANSLATIONS, **options})
    assert result.returncode == 0, result.stdout + result.stderr
    return apt.downloaded()


def test_with_the_upstream_unreachable_freeze_completes_what_the_cache_has_and_says_so(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    # A fresh host: it fetched one compression of each index, by hash.
    host = AptRoot(tmp_path / "fresh-host")
    host.write_sources(sources(lab_archive, f"{real_mirror.url}/debian"))
    run_through(lab_debcache, real_mirror, host, "fresh-run", *PACKAGES)
    real_mirror.stop()  # a mirror blip during the nightly freeze

    frozen = freeze_json(lab_debcache, "fresh-run", "--promote", "lab")
    assert frozen["unverified"] == []
    index = "debian/dists/bookworm/main/binary-amd64/Packages"
    (warning,) = [w for w in frozen["warnings"] if w.startswith(f"{index}: ")]
    assert "Packages.gz" in warning and "not completed, the upstream is unreachable" in warning
    assert "Cannot connect" in warning and "apt falls back to the Packages.xz" in warning
    # Every fresh host still updates and installs: apt falls back to what the pin holds.
    for number, options in enumerate(FRESH_HOSTS.values()):
        fresh = install_from(
            lab_debcache, lab_archive, tmp_path / f"fresh-{number}", "lab", options
        )
        assert fresh == host.downloaded()


def test_a_recording_frozen_before_freezes_again_with_the_upstream_unreachable(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "warm-run", "hello")
    first = freeze_json(lab_debcache, "warm-run")
    real_mirror.stop()
    # The uncompressed Translation-en the Release lists is on no mirror, so never cached;
    # the first freeze's 404 for it is remembered, so nothing is missing.
    again = freeze_json(lab_debcache, "warm-run")
    assert (again["id"], again["unverified"], again["warnings"]) == (first["id"], [], [])


def upstream_requests(server: DebcacheServer, upstream: str) -> float:
    """What `/_/metrics` counts of requests to `upstream`, whatever they answered."""
    metrics = get(server.url, "/_/metrics").body.decode()
    prefix = "debcache_upstream_requests_total{"
    return sum(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith(prefix) and f'upstream="{upstream}"' in line
    )


def test_the_apis_freeze_downloads_through_the_servers_upstream_client(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    # Completing fetches every index the warm host did not: each request goes through
    # the server's UpstreamClient (its timeout, failover order and penalty), so
    # /_/metrics counts it like a live miss.
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "warm-run", "hello")
    counted, sent = upstream_requests(lab_debcache, "debian"), len(real_mirror.requests)
    body = json.dumps({"recordings": ["warm-run"]}).encode()
    headers = {"Content-Type": "application/json"}
    reply = request(lab_debcache.url, "/_/api/freeze", "POST", headers, timeout=60, body=body)
    assert reply.status == 200, reply.body
    assert json.loads(reply.body)["completed"] > 0
    completing = len(real_mirror.requests) - sent
    assert completing > 0
    assert upstream_requests(lab_debcache, "debian") - counted == completing


def test_the_commands_freeze_tries_a_failing_base_url_last_for_its_later_downloads(
    tmp_path: Path,
) -> None:
    # The first base URL answers 503 for every file. Through UpstreamClient a failed
    # URL goes to the back of the queue: once the first downloads saw it fail, the
    # later ones of the same freeze go to the second URL first. (Before, every
    # download asked the failing URL again.) This archive's Releases list only files
    # the mirror has: a 404 would show the failing URL working again.
    archive = build_test_archive(tmp_path / "www")
    # A third suite: more downloads than run at once, so some start after the first
    # ones saw the failing URL fail.
    archive.publish_suite("bookworm-backports", archive.packages("bookworm")[:1])
    with (
        FakeMirror(archive.root, validators=False) as good,
        FakeMirror(archive.root) as failing,
    ):
        for file in archive.root.rglob("*"):
            if file.is_file():
                failing.set_fault(f"/{file.relative_to(archive.root)}", Fault.status(503))
        urls = [f"{failing.url}/debian", f"{good.url}/debian"]
        config = make_config(tmp_path / "data", {"debian": urls}, keyring=archive.key.keyring)
        server = DebcacheServer(config)
        server.config_file = write_config_file(config, tmp_path / "debcache.toml")
        with server:
            host = AptRoot(tmp_path / "warm-host")
            host.write_sources(
                [
                    f"deb [signed-by={archive.key.keyring}] {good.url}/debian {suite} main"
                    for suite in (*SUITES, "bookworm-backports")
                ]
            )
            run_through(server, good, host, None)  # lists current: the recording gets none
            run_through(server, good, host, "warm-run", "hello")
            asked, sent = len(failing.requests), len(good.requests)
            frozen = freeze_json(server, "warm-run")
            assert frozen["completed"] > 0 and frozen["unverified"] == []
            assert len(good.requests) - sent > PARALLEL_DOWNLOADS
            assert len(failing.requests) - asked <= PARALLEL_DOWNLOADS


def test_with_the_upstream_unreachable_an_index_with_no_variant_cached_fails_the_freeze(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    # Lists made straight from the mirror: debcache caches nothing but what is recorded.
    host = AptRoot(tmp_path / "direct")
    host.write_sources(sources(lab_archive, f"{real_mirror.url}/debian"))
    assert host.update(options=WITH_TRANSLATIONS).returncode == 0
    run_through(lab_debcache, real_mirror, host, "bare")
    real_mirror.stop()
    result = run(lab_debcache, "freeze", "bare")
    assert result.exit_code == 1
    header = result.output.splitlines()[0]
    assert "file(s) a fresh install needs could not be completed" in header, header
    assert "recorded file(s)" not in header and "Make the upstream reachable" in header
    packages = "debian/dists/bookworm/main/binary-amd64/Packages.xz"
    assert (
        f"{packages}: a fresh apt-get update needs it; not cached, and the upstream is "
        "unreachable" in result.output
    )
    assert "answered 404" not in result.output and "Traceback" not in result.output


def test_diff_of_a_recording_never_downloads(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "warm-run", "hello")
    asked = len(real_mirror.requests)
    reply = get(lab_debcache.url, "/_/api/diff?a=warm-run&b=warm-run")
    assert reply.status == 200, reply.body
    assert run(lab_debcache, "diff", "warm-run", "warm-run").exit_code == 0
    assert len(real_mirror.requests) == asked, real_mirror.requests[asked:]


def test_after_a_point_release_freeze_completes_from_the_by_hash_names_the_mirror_kept(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "warm-run", "hello")
    gz = "dists/bookworm/main/binary-amd64/Packages.gz"
    old_gz = by_hash_of(lab_archive, gz)
    point_release(lab_archive)
    assert by_hash_of(lab_archive, gz) != old_gz  # the plain name has new content now

    frozen = freeze_json(lab_debcache, "warm-run", "--promote", "lab")
    assert frozen["unverified"] == []
    assert real_mirror.count(f"/debian/{old_gz}") == 1 and real_mirror.count(f"/debian/{gz}") == 0
    real_mirror.stop()
    gz_first = FRESH_HOSTS["plain, gz first"]
    fresh, _ = update_and_install_fresh(
        lab_debcache, lab_archive, tmp_path / "fresh", "lab", gz_first, "hello"
    )
    assert fresh == host.downloaded()


def delete_indices(archive: Archive, suite: str, component: str) -> None:
    """Remove a component's indices from the mirror (by-hash too), as a partial mirror has it."""
    for path in archive.files():
        if path.startswith(f"dists/{suite}/{component}/") and "/installer-" not in path:
            archive.path(path).unlink()


def test_a_component_the_mirror_does_not_carry_is_left_out(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    lab_archive.publish_suite(
        "bookworm-updates",
        lab_archive.packages("bookworm-updates"),
        codename="bookworm-updates",
        components=("main", "contrib"),
        translations=True,
    )
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "warm-run", "greet-tzdata")
    delete_indices(lab_archive, "bookworm-updates", "contrib")
    frozen = freeze_json(lab_debcache, "warm-run", "--promote", "lab")
    paths = {e["path"] for e in manifest_json(lab_debcache, frozen["id"])["entries"]}
    assert not any(p.startswith("dists/bookworm-updates/contrib/") for p in paths)
    assert "dists/bookworm-updates/main/binary-amd64/Packages.gz" in paths
    real_mirror.stop()
    fresh, _ = update_and_install_fresh(
        lab_debcache, lab_archive, tmp_path / "fresh", "lab", {}, "greet-tzdata"
    )
    assert fresh == host.downloaded()


def test_identical_indices_of_two_components_are_completed_from_either_name(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    # contrib and non-free list no package: their indices have the same bytes.
    lab_archive.publish_suite(
        "bookworm-updates",
        lab_archive.packages("bookworm-updates"),
        codename="bookworm-updates",
        components=("main", "contrib", "non-free"),
        translations=True,
    )
    contrib = "dists/bookworm-updates/contrib/binary-amd64/Packages.xz"
    non_free = "dists/bookworm-updates/non-free/binary-amd64/Packages.xz"
    assert lab_archive.sha256(contrib) == lab_archive.sha256(non_free)
    host = warm_host(lab_debcache, real_mirror, lab_archive, tmp_path)
    run_through(lab_debcache, real_mirror, host, "warm-run", "greet-tzdata")
    delete_indices(lab_archive, "bookworm-updates", "non-free")  # only contrib's names answer
    frozen = freeze_json(lab_debcache, "warm-run")
    paths = {e["path"] for e in manifest_json(lab_debcache, frozen["id"])["entries"]}
    assert contrib in paths and by_hash_of(lab_archive, contrib) in paths


def test_a_suite_whose_indices_the_upstream_has_none_of_fails_the_freeze(
    lab_debcache: DebcacheServer, real_mirror: FakeMirror, lab_archive: Archive, tmp_path: Path
) -> None:
    # Lists made straight from the mirror: debcache caches nothing but what is recorded.
    host = AptRoot(tmp_path / "direct")
    host.write_sources(sources(lab_archive, f"{real_mirror.url}/debian"))
    assert host.update(options=WITH_TRANSLATIONS).returncode == 0
    run_through(lab_debcache, real_mirror, host, "bare")
    delete_indices(lab_archive, "bookworm-updates", "main")
    result = run(lab_debcache, "freeze", "bare")
    assert result.exit_code == 1, result.output
    assert "debian/dists/bookworm-updates/: a fresh apt-get update needs its indices" in (
        result.output
    )
    assert "[upstreams.debian] urls" in result.output and "bookworm/main" not in result.output


def test_the_security_archive_is_completed_like_any_upstream(
    lab_archive: Archive, tmp_path: Path
) -> None:
    security = build_security_archive(lab_archive.root)
    keyring = security.key.keyring
    with FakeMirror(lab_archive.root, validators=False) as mirror:
        config = make_config(
            tmp_path / "data", {"debian": [f"{mirror.url}/debian"]}, keyring=lab_archive.key.keyring
        )
        config.upstreams["debian-security"] = Upstream(
            "debian-security",
            (f"{mirror.url}/debian-security",),
            keyring=keyring,
            proxy_hosts=config.upstreams["debian"].proxy_hosts,
        )
        config = dataclasses.replace(config, upstreams=dict(config.upstreams))
        server = DebcacheServer(config)
        server.config_file = write_config_file(config, tmp_path / "debcache.toml")
        with server:
            security_line = f"deb [signed-by={keyring}] {{}}/debian-security bookworm-security main"
            host = AptRoot(tmp_path / "warm-host")
            host.write_sources([*sources(lab_archive, f"{mirror.url}/debian"),
                                security_line.format(mirror.url)])  # fmt: skip
            run_through(server, mirror, host, None)
            run_through(server, mirror, host, "warm-run", "greet-sandbox")
            recorded = {
                r["path"] for r in server.fetches("warm-run") if r["path"].startswith("dists/")
            }
            assert recorded == {"dists/bookworm-security/InRelease"} | {
                f"dists/{suite}/InRelease" for suite in SUITES
            }
            frozen = freeze_json(server, "warm-run", "--promote", "lab")
            assert frozen["unverified"] == []
            mirror.stop()
            fresh = AptRoot(tmp_path / "fresh")
            pin = f"{server.url}/pin/lab"
            fresh.write_sources([*sources(lab_archive, f"{pin}/debian"), security_line.format(pin)])
            update = fresh.update(options=WITH_TRANSLATIONS)
            assert update.returncode == 0 and "Ign:" not in update.stdout, update.stdout
            assert fresh.download("greet-sandbox").returncode == 0
            assert fresh.downloaded() == host.downloaded()


# --- --installer complete -------------------------------------------------------------


def record_debian_installer(server: DebcacheServer, archive: Archive, recording: str) -> list[str]:
    """What d-i fetches for its chosen suite (the probes aside): Release, Release.gpg, the
    debian-installer index, a udeb; the netboot images its boot loader fetched; and the
    updates suite's InRelease (apt-setup runs apt)."""
    suite = "dists/bookworm"
    paths = [
        "dists/bookworm-updates/InRelease",
        f"{suite}/Release",
        f"{suite}/Release.gpg",
        f"{suite}/main/debian-installer/binary-amd64/Packages.xz",
        archive.pool_path("netcfg-test"),
        archive.installer_path("bookworm", "netboot/debian-installer/amd64/linux"),
        archive.installer_path("bookworm", "netboot/debian-installer/amd64/initrd.gz"),
    ]
    for path in paths:
        assert get(server.url, f"/record/{recording}/debian/{path}").status == 200, path
    server.wait_for_fetches(len(paths), recording=recording)
    return paths


def test_installer_complete_holds_every_udeb_of_the_frozen_installer_index(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    recorded = record_debian_installer(own_debcache, own_archive, "di1")
    kernel_udeb = own_archive.pool_path(own_archive.installer("bookworm").kernel_udeb().name)
    udebs = {p.pool_path() for p in own_archive.packages("bookworm") if p.kind == "udeb"}
    assert kernel_udeb in udebs and len(udebs) >= 2

    as_recorded = freeze_json(own_debcache, "di1")
    paths = {e["path"] for e in manifest_json(own_debcache, as_recorded["id"])["entries"]}
    assert set(recorded) <= paths and kernel_udeb not in paths
    # A d-i of the same architecture that prefers another compression finds its index too;
    # d-i reads no other suite's installer index, apt the updates suite's Packages.
    assert "dists/bookworm/main/debian-installer/binary-amd64/Packages.gz" in paths
    assert "dists/bookworm-updates/main/binary-amd64/Packages.xz" in paths
    assert not any(p.startswith("dists/bookworm-updates/main/debian-installer/") for p in paths)

    # Never fetched by anyone: freeze fetches it, unless the mirror fails.
    kernel_url = f"/debian/{kernel_udeb}"
    assert own_mirror.count(kernel_url) == 0
    own_mirror.set_fault(kernel_url, Fault.status(500))
    failed = run(own_debcache, "freeze", "di1", "--installer", "complete")
    assert failed.exit_code == 1 and f"debian/{kernel_udeb}: --installer complete" in failed.output
    own_mirror.clear_fault(kernel_url)

    complete = freeze_json(own_debcache, "di1", "--installer", "complete")
    manifest = manifest_json(own_debcache, complete["id"])
    entries = {e["path"]: e for e in manifest["entries"]}
    assert udebs <= set(entries)
    assert all(p.endswith(".udeb") for p in entries if p.startswith("pool/"))
    assert entries[kernel_udeb]["sha256"] == own_archive.sha256(kernel_udeb)
    assert entries[kernel_udeb]["package"] == own_archive.installer("bookworm").kernel_udeb().name
    assert f"debian/{kernel_udeb}" in manifest["completed"]
    assert own_mirror.count(kernel_url) == 2
    # The images stay as recorded: no other installer file came along.
    images = {p for p in entries if "/installer-amd64/" in p}
    sums = own_archive.installer_path("bookworm", "SHA256SUMS")
    assert images == {p for p in recorded if "/installer-amd64/" in p} | {sums}

    # The pin serves the udeb the recorded host never fetched.
    assert run(own_debcache, "promote", "di", complete["id"][:12]).exit_code == 0
    own_mirror.stop()
    reply = get(own_debcache.url, f"/pin/di/debian/{kernel_udeb}")
    assert reply.status == 200 and reply.body == own_archive.read(kernel_udeb)


def test_installer_complete_names_udebs_the_upstream_lacks_as_not_recorded(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror
) -> None:
    # A mirror without some udebs: they were never recorded, so "record again" is no remedy.
    record_debian_installer(own_debcache, own_archive, "di-gone")
    kernel_udeb = own_archive.pool_path(own_archive.installer("bookworm").kernel_udeb().name)
    own_mirror.set_fault(f"/debian/{kernel_udeb}", Fault.status(404))
    failed = run(own_debcache, "freeze", "di-gone", "--installer", "complete")
    assert failed.exit_code == 1
    assert failed.output.splitlines()[0] == (
        "Error: 1 udeb(s) --installer complete adds could not be completed: neither cached "
        "nor fetched from the upstream. Freeze without --installer complete (a branch with "
        'fill = "verified" fetches a missing udeb when first asked for), or pass '
        "--allow-unverified to freeze without them (named as warnings)."
    )
    assert f"  debian/{kernel_udeb}: --installer complete needs it" in failed.output


def test_a_recorded_arch_all_udeb_completes_its_suites_installer_index(
    own_debcache: DebcacheServer, own_archive: Archive
) -> None:
    rescue = PackageSpec(
        "rescue-check", "1.0", kind="udeb", architecture="all", section="debian-installer"
    )
    own_archive.publish_suite(
        "bookworm", [*own_archive.packages("bookworm"), rescue], codename="bookworm"
    )
    # apt-setup's InRelease and one arch-all udeb: no index or image shows an architecture.
    paths = ["dists/bookworm/InRelease", own_archive.pool_path("rescue-check")]
    for path in paths:
        assert get(own_debcache.url, f"/record/di-all/debian/{path}").status == 200, path
    own_debcache.wait_for_fetches(len(paths), recording="di-all")

    frozen = freeze_json(own_debcache, "di-all")
    entries = {e["path"] for e in manifest_json(own_debcache, frozen["id"])["entries"]}
    assert set(paths) <= entries
    assert "dists/bookworm/main/debian-installer/binary-amd64/Packages.xz" in entries
    complete = freeze_json(own_debcache, "di-all", "--installer", "complete")
    entries = {e["path"] for e in manifest_json(own_debcache, complete["id"])["entries"]}
    assert own_archive.pool_path("netcfg-test") in entries


def test_the_api_freezes_with_the_installer_complete(
    own_debcache: DebcacheServer, own_archive: Archive, own_mirror: FakeMirror, tmp_path: Path
) -> None:
    record_debian_installer(own_debcache, own_archive, "di2")
    body = json.dumps({"recordings": ["di2"], "installer": "complete"}).encode()
    headers = {"Content-Type": "application/json"}
    reply = request(own_debcache.url, "/_/api/freeze", "POST", headers, timeout=60, body=body)
    assert reply.status == 200, reply.body
    made = json.loads(reply.body)
    kernel_udeb = own_archive.pool_path(own_archive.installer("bookworm").kernel_udeb().name)
    paths = {e["path"] for e in manifest_json(own_debcache, made["id"])["entries"]}
    assert kernel_udeb in paths

    record_install(own_debcache, AptRoot(tmp_path / "apt"), own_archive, own_mirror, "apt-only")
    body = json.dumps({"recordings": ["apt-only"], "installer": "complete"}).encode()
    reply = request(own_debcache.url, "/_/api/freeze", "POST", headers, timeout=60, body=body)
    assert reply.status == 409 and b"used no debian-installer" in reply.body

    bad = json.dumps({"recordings": ["di2"], "installer": "everything"}).encode()
    reply = request(own_debcache.url, "/_/api/freeze", "POST", headers, timeout=60, body=bad)
    assert reply.status == 400 and b"recorded or complete" in reply.body


# --- the manifests table of an older database --------------------------------------


def test_a_database_made_before_completed_files_were_kept_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "debcache.db"
    old = queries.connect(path)
    old.conn.executescript(
        queries.SCHEMA.replace("unverified TEXT NOT NULL,", "unverified TEXT NOT NULL")
        .replace("    completed TEXT NOT NULL DEFAULT '[]',", "")
        .replace("    warnings TEXT NOT NULL DEFAULT '[]'", "")
    )
    assert not {"completed", "warnings"} & set(old["manifests"].columns_dict)
    old.conn.execute(
        "INSERT INTO manifests VALUES "
        "('ab' || hex(zeroblob(31)), NULL, 1.0, '[]', 0, 0, '{}', '[]')"
    )
    old.conn.commit()
    old.conn.close()
    queries.create_schema(path)
    queries.create_schema(path)  # twice: a second process starting finds it done
    database = queries.connect(path)
    (row,) = queries.manifest_rows(database)
    assert load_manifest(database, row["id"]).completed == []
    assert load_manifest(database, row["id"]).warnings == []
