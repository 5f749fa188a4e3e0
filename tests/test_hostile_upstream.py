"""User story: a hostile mirror or peer can neither send debcache elsewhere nor fill its disk.

Redirects are followed only within the upstream's base URLs (or hosts named in
`redirect_hosts`), at most a few hops; anything else is a failed attempt: the next
base URL, then 502, never cached, and the off-site target never hears a request.
Every body stops at the size an index or lockfile gives (else `max_file_size`) and
at the upstream's `deadline`; a failed download leaves no partial file behind.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from archive_fixture import Archive
from click.testing import CliRunner
from debcache_server import DebcacheServer, make_config
from fake_mirror import FakeMirror, Fault
from http_client import get
from processes import wait_until
from test_command_line import cli_env

from debcache.cli import cli
from debcache.config import load_config
from debcache.errors import ConfigError
from debcache.lockfile import LOCKFILE_FORMAT
from debcache.manifest import Entry, manifest_id
from debcache.upstream import MAX_REDIRECTS

DEB = "pool/main/a/alpha/alpha_1.0_amd64.deb"
SECRET = b"the secret behind the firewall\n"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A web root with one pool file under /debian and a secret outside it."""
    root = tmp_path / "www"
    for path in (f"debian/{DEB}", "debian/pool/main/a/alpha/moved.deb"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"alpha " * 5000)
    (root / "secret").write_bytes(SECRET)
    (root / "debian" / "secret").write_bytes(SECRET)  # on the secret host, inside /debian
    return root


def serve(tmp_path: Path, *base_urls: str, **options) -> DebcacheServer:
    options.setdefault("timeout", 5)
    config = make_config(tmp_path / "data", {"debian": list(base_urls)}, **options)
    return DebcacheServer(config).start()


def nothing_left(server: DebcacheServer) -> None:
    """No blob and, once the download has given up, no partial file in <data>/tmp."""
    wait_until(lambda: not server.temp_files(), lambda: f"partials {server.temp_files()}", 20)
    assert server.blobs() == {}


# --- item 1: no request leaves the upstream -------------------------------------------


@pytest.mark.parametrize("where", ["other port", "outside the base path"])
def test_an_off_site_redirect_fails_over_and_then_502_and_the_target_hears_nothing(
    tmp_path: Path, files: Path, where: str
) -> None:
    with FakeMirror(files) as hostile, FakeMirror(files) as secret, FakeMirror(files) as good:
        target = f"{secret.url}/debian/secret" if where == "other port" else f"{hostile.url}/secret"
        hostile.set_fault(f"/debian/{DEB}", Fault.redirect(target))
        # Only the hostile mirror: the redirect is a failed attempt, so 502, nothing cached.
        cache = serve(tmp_path, f"{hostile.url}/debian")
        try:
            for _ in range(2):
                reply = get(cache.url, f"/debian/{DEB}")
                assert reply.status == 502 and SECRET not in reply.body
            assert hostile.count(f"/debian/{DEB}") == 2  # not cached: asked again
            assert hostile.count("/secret") == 0 and secret.requests == []
            assert cache.blobs() == {}
        finally:
            cache.stop()
        # With a good mirror after it: failover.
        cache = serve(tmp_path / "2", f"{hostile.url}/debian", f"{good.url}/debian")
        try:
            reply = get(cache.url, f"/debian/{DEB}")
            assert reply.status == 200 and reply.body == (files / "debian" / DEB).read_bytes()
            assert good.count(f"/debian/{DEB}") == 1
            assert hostile.count("/secret") == 0 and secret.requests == []
        finally:
            cache.stop()


def test_a_redirect_within_the_upstream_is_followed(tmp_path: Path, files: Path) -> None:
    with FakeMirror(files) as mirror:
        mirror.set_fault(
            f"/debian/{DEB}", Fault.redirect(f"{mirror.url}/debian/pool/main/a/alpha/moved.deb")
        )
        cache = serve(tmp_path, f"{mirror.url}/debian")
        try:
            reply = get(cache.url, f"/debian/{DEB}")
            assert reply.status == 200 and reply.body == (files / "debian" / DEB).read_bytes()
        finally:
            cache.stop()


def test_a_redirect_loop_fails_after_the_hop_limit(tmp_path: Path, files: Path) -> None:
    with FakeMirror(files) as mirror:
        mirror.set_fault(f"/debian/{DEB}", Fault.redirect("/debian/y"))
        mirror.set_fault("/debian/y", Fault.redirect(f"/debian/{DEB}"))
        cache = serve(tmp_path, f"{mirror.url}/debian")
        try:
            assert get(cache.url, f"/debian/{DEB}").status == 502
            assert len(mirror.requests) == MAX_REDIRECTS + 1
            assert cache.blobs() == {}
        finally:
            cache.stop()


def test_redirect_hosts_allows_a_named_cdn(tmp_path: Path, files: Path) -> None:
    with FakeMirror(files) as mirror, FakeMirror(files) as cdn:
        mirror.set_fault(f"/debian/{DEB}", Fault.redirect(f"{cdn.url}/debian/secret"))
        cache = serve(tmp_path, f"{mirror.url}/debian", redirect_hosts=(f"127.0.0.1:{cdn.port}",))
        try:
            assert get(cache.url, f"/debian/{DEB}").body == SECRET
            assert cdn.count("/debian/secret") == 1
        finally:
            cache.stop()


# --- item 3: disk is bounded ----------------------------------------------------------


def test_an_endless_pool_file_stops_at_the_size_its_packages_index_lists(
    tmp_path: Path, archive: Archive
) -> None:
    deb = archive.pool_path("hello")
    with FakeMirror(archive.root) as mirror:
        cache = serve(tmp_path, f"{mirror.url}/debian", keyring=archive.key.keyring)
        try:
            assert get(cache.url, "/debian/dists/bookworm/InRelease").status == 200
            packages = "/debian/dists/bookworm/main/binary-amd64/Packages.gz"
            assert get(cache.url, packages).status == 200
            indices = len(cache.blobs())
            mirror.set_fault(f"/debian/{deb}", Fault.endless())
            reply = get(cache.url, f"/debian/{deb}")
            assert reply.broken or reply.status == 502
            wait_until(lambda: mirror.streams_running == 0, "the endless body still flows", 20)
            nothing_left_but(cache, kept=indices)
        finally:
            cache.stop()


def test_an_endless_by_hash_file_stops_at_the_size_its_verified_release_lists(
    tmp_path: Path, archive: Archive
) -> None:
    index = "dists/bookworm/main/binary-amd64/Packages.gz"
    sha256, size = archive.sha256(index), len(archive.read(index))
    by_hash = f"dists/bookworm/main/binary-amd64/by-hash/SHA256/{sha256}"
    with FakeMirror(archive.root) as mirror:
        # max_file_size only bounds how long the unfixed code would stream.
        cache = serve(
            tmp_path, f"{mirror.url}/debian", keyring=archive.key.keyring, max_file_size=20_000_000
        )
        try:
            assert get(cache.url, "/debian/dists/bookworm/InRelease").status == 200
            kept = len(cache.blobs())
            mirror.set_fault(f"/debian/{by_hash}", Fault.endless())
            reply = get(cache.url, f"/debian/{by_hash}")
            assert (reply.broken or reply.status == 502) and len(reply.body) <= size + 1
            wait_until(lambda: mirror.streams_running == 0, "the endless body still flows", 20)
            nothing_left_but(cache, kept=kept)
        finally:
            cache.stop()


def nothing_left_but(server: DebcacheServer, kept: int) -> None:
    """No partial in <data>/tmp once the download has given up; only `kept` blobs."""
    wait_until(lambda: not server.temp_files(), lambda: f"partials {server.temp_files()}", 20)
    assert len(server.blobs()) == kept


@pytest.mark.parametrize("claimed", [0, 5_000_000], ids=["no length", "lying length"])
def test_an_endless_file_of_unknown_size_stops_at_max_file_size(
    tmp_path: Path, files: Path, claimed: int
) -> None:
    with FakeMirror(files) as mirror:
        mirror.set_fault(f"/debian/{DEB}", Fault.endless(claimed))
        cache = serve(tmp_path, f"{mirror.url}/debian", max_file_size=1_000_000)
        try:
            reply = get(cache.url, f"/debian/{DEB}")
            assert reply.broken and len(reply.body) <= 1_000_000
            wait_until(lambda: mirror.streams_running == 0, "the endless body still flows", 20)
            nothing_left(cache)
        finally:
            cache.stop()


def test_a_slow_drip_fails_at_the_deadline_and_leaves_no_partial(
    tmp_path: Path, files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeMirror(files) as mirror:
        mirror.set_fault(f"/debian/{DEB}", Fault.slow(chunk=100, delay=0.2))
        cache = serve(tmp_path, f"{mirror.url}/debian", deadline=0.5)
        try:
            reply = get(cache.url, f"/debian/{DEB}")
            assert reply.broken
            nothing_left(cache)
            assert "took longer than its deadline of 0.5 s" in caplog.text
        finally:
            cache.stop()


def one_entry_lockfile(tmp_path: Path) -> tuple[Entry, str, Path, Path]:
    """A lockfile of one 3,095-byte .deb, its manifest id, and a config with a data dir."""
    entry = Entry("debian", "pool/main/p/pkg/pkg_1.0-1_amd64.deb", "ab" * 32, 3095)
    manifest = manifest_id([entry])
    lockfile = tmp_path / "lock.json"
    document = {"format": LOCKFILE_FORMAT, "id": manifest, "entries": [asdict(entry)]}
    lockfile.write_text(json.dumps(document))
    config = tmp_path / "debcache.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return entry, manifest, lockfile, config


def test_an_import_from_an_endless_peer_stops_at_the_entry_size(tmp_path: Path) -> None:
    entry, manifest, lockfile, config = one_entry_lockfile(tmp_path)
    with FakeMirror(tmp_path) as peer:
        peer.set_fault(f"/manifest/{manifest}/debian/{entry.path}", Fault.endless())
        result = CliRunner().invoke(
            cli,
            ["--config", str(config), "manifests", "import", str(lockfile), "--from", peer.url],
            env=cli_env(),
        )
        assert result.exit_code == 1
        assert "larger than 3095 bytes" in result.output
        wait_until(lambda: peer.streams_running == 0, "the endless body still flows", 20)
    assert list((tmp_path / "data" / "tmp").iterdir()) == []
    blobs = tmp_path / "data" / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))


def test_an_import_from_a_peer_follows_no_redirect_off_the_peer(tmp_path: Path) -> None:
    entry, manifest, lockfile, config = one_entry_lockfile(tmp_path)
    with FakeMirror(tmp_path) as peer, FakeMirror(tmp_path) as secret:
        peer.set_fault(
            f"/manifest/{manifest}/debian/{entry.path}", Fault.redirect(f"{secret.url}/x")
        )
        result = CliRunner().invoke(
            cli,
            ["--config", str(config), "manifests", "import", str(lockfile), "--from", peer.url],
            env=cli_env(),
        )
        assert result.exit_code == 1 and "refused" in result.output
        assert secret.requests == []


# --- the settings ---------------------------------------------------------------------


def test_redirect_hosts_max_file_size_and_deadline_are_read_and_checked(tmp_path: Path) -> None:
    head = '[upstreams.debian]\nurls = ["http://mirror.example.org/debian"]\n'
    path = tmp_path / "debcache.toml"
    path.write_text(head)
    default = load_config(path).upstreams["debian"]
    assert (default.redirect_hosts, default.max_file_size, default.deadline) == (
        (),
        4 * 10**9,
        3600,
    )
    path.write_text(
        head
        + 'redirect_hosts = ["CDN.example.org:8080"]\nmax_file_size = "512M"\ndeadline = "20m"\n'
    )
    upstream = load_config(path).upstreams["debian"]
    assert upstream.redirect_hosts == ("cdn.example.org:8080",)
    assert (upstream.max_file_size, upstream.deadline) == (512 * 10**6, 1200)
    for bad, key in [
        ('redirect_hosts = ["http://cdn"]', "redirect_hosts"),
        ('max_file_size = "lots"', "max_file_size"),
        ("max_file_size = 0", "max_file_size"),
        ('deadline = "soon"', "deadline"),
        ("deadline = 0", "deadline"),
    ]:
        path.write_text(head + bad + "\n")
        with pytest.raises(ConfigError, match=f"upstreams.debian.{key}"):
            load_config(path)
