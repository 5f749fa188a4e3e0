"""User story: a newcomer follows the links of debcache's front page.

Each mirror root it links to (`/debian/`, `/pin/BRANCH/debian/`) says what it is and
the sources.list line that uses it, instead of "'' is not an archive path"; `/_/api`
without its slash leads to `/_/api/`.
"""

from __future__ import annotations

from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from http_client import get
from workflow import pin_a_recorded_inrelease


def test_the_live_mirror_root_says_how_to_use_it(
    debcache: DebcacheServer, mirror: FakeMirror
) -> None:
    reply = get(debcache.url, "/debian/")
    host = debcache.url.removeprefix("http://")
    assert (reply.status, reply.body.decode()) == (
        200,
        f"debcache: the live cache of upstream debian ({mirror.url}/debian).\n"
        "\n"
        "Use it in /etc/apt/sources.list (with the upstream's suites and components):\n"
        f"  deb http://{host}/debian SUITE main\n"
        "Or record an install under NAME, to freeze it later:\n"
        f"  deb http://{host}/record/NAME/debian SUITE main\n"
        "\n"
        f"Status: http://{host}/_/\n",
    )
    assert mirror.requests == []


def test_a_root_that_is_no_upstream_is_still_refused(debcache: DebcacheServer) -> None:
    reply = get(debcache.url, "/nosuch/")
    assert reply.status == 404 and "nosuch" in reply.body.decode()


def test_the_pinned_mirror_root_names_its_manifest_and_suites(
    keyed_debcache: DebcacheServer,
) -> None:
    manifest = pin_a_recorded_inrelease(keyed_debcache, "main")
    host = keyed_debcache.url.removeprefix("http://")
    front = get(keyed_debcache.url, "/").body.decode()
    assert f"  http://{host}/pin/main/debian/\n" in front
    reply = get(keyed_debcache.url, "/pin/main/debian/")
    assert (reply.status, reply.body.decode()) == (
        200,
        f"debcache: branch main of upstream debian, pinned to manifest {manifest}.\n"
        "Only the files frozen in that manifest are served here.\n"
        "\n"
        "Use it in /etc/apt/sources.list (with the components you froze):\n"
        f"  deb http://{host}/pin/main/debian bookworm main\n"
        "\n"
        f"Status: http://{host}/_/\n",
    )
    unknown = get(keyed_debcache.url, "/pin/nosuch/debian/")
    assert unknown.status == 404 and "No branch named 'nosuch'" in unknown.body.decode()


def test_the_api_index_without_its_slash_leads_to_it(debcache: DebcacheServer) -> None:
    for target, location in (("/_/api", "/_/api/"), ("/_", "/_/")):
        reply = get(debcache.url, target)
        assert (reply.status, reply.header("Location")) == (308, location)
