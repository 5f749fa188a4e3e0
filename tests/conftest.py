"""Shared fixtures: the signed test archive, the fake mirror serving it, debcache itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from apt import AptRoot
from archive_fixture import Archive, build_test_archive
from debcache_server import DebcacheServer, make_config
from fake_mirror import FakeMirror
from hypothesis import settings
from workflow import keyed_debcache_for

# The same examples on every run: a property test that fails must fail every time (and
# be fixed with the example pinned), never now and then. `--hypothesis-seed` or
# `HYPOTHESIS_PROFILE=explore` searches afresh when hunting for bugs.
# No deadline: a loaded machine must not fail an example that is merely slow.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

REQUIRED_TOOLS = ("apt-get", "dpkg-deb", "gpg", "gpgv", "wget", "debootstrap", "chromium")

# The tester's own $DEBCACHE_DATA_DIR or $DEBCACHE_CONFIG must not redirect the tests' commands.
for variable in ("DEBCACHE_CONFIG", "DEBCACHE_DATA_DIR"):
    os.environ.pop(variable, None)


def pytest_sessionstart(session: pytest.Session) -> None:
    # A missing system tool is a failure of the whole run, never a skip.
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # debootstrap lives in sbin
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool, path=search) is None]
    if missing:
        raise pytest.UsageError(
            f"missing system tools: {', '.join(missing)}; install them with "
            "`bash .ci/install-deps` (bash .ci/run does)"
        )


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """The signed archive (suites bookworm, bookworm-updates); tests must not modify it."""
    return build_test_archive(tmp_path_factory.mktemp("www"))


@pytest.fixture
def mirror(archive: Archive):
    """The archive served on 127.0.0.1, with request counting and faults."""
    with FakeMirror(archive.root) as server:
        yield server


@pytest.fixture
def debcache(tmp_path: Path, mirror: FakeMirror):
    """debcache with one upstream, `debian`, pointing at the fake mirror.

    coalesce_window=0: every request for a volatile file is revalidated upstream, so
    tests see each revalidation whatever the timing.
    """
    config = make_config(
        tmp_path / "data", {"debian": [f"{mirror.url}/debian"]}, timeout=5, coalesce_window=0
    )
    with DebcacheServer(config) as server:
        yield server


@pytest.fixture
def keyed_debcache(tmp_path: Path, mirror: FakeMirror, archive: Archive):
    """debcache whose `debian` upstream trusts the archive's key (so freeze verifies),
    with a config file for the command line in `.config_file`."""
    server = keyed_debcache_for(tmp_path, mirror, archive)
    yield server
    server.stop()


@pytest.fixture
def own_archive(tmp_path: Path) -> Archive:
    """An archive this test may change (point releases, republished suites)."""
    return build_test_archive(tmp_path / "www")


@pytest.fixture
def own_mirror(own_archive: Archive):
    with FakeMirror(own_archive.root) as server:
        yield server


@pytest.fixture
def own_debcache(tmp_path: Path, own_mirror: FakeMirror, own_archive: Archive):
    """debcache trusting own_archive's key, so that freeze can verify."""
    server = keyed_debcache_for(tmp_path, own_mirror, own_archive)
    yield server
    server.stop()


@pytest.fixture
def apt(tmp_path: Path) -> AptRoot:
    """An isolated apt state directory."""
    return AptRoot(tmp_path / "apt")
