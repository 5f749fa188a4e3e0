"""Errors are domain classes in errors.py; the HTTP edge maps each to a status in one table.

Domain code names what went wrong (`UnknownBranch`, `InvalidArchivePath`); only
`debcache/server/errors.py` knows which HTTP status answers it, and every class
reads as one sentence of cause and one of remedy.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from debcache_server import DebcacheServer
from http_client import request

import debcache
from debcache import errors
from debcache.errors import DebcacheError
from debcache.freeze import Problem
from debcache.recording import FailedFetch
from debcache.server.errors import HTTP_STATUS, http_status


def all_error_classes() -> list[type[DebcacheError]]:
    """Every DebcacheError subclass that any debcache module defines."""
    for module in pkgutil.walk_packages(debcache.__path__, "debcache."):
        if not module.name.endswith(".__main__"):  # that one runs the CLI
            importlib.import_module(module.name)
    found, pending = [], [DebcacheError]
    while pending:
        subclasses = pending.pop().__subclasses__()
        found += subclasses
        pending += subclasses
    return sorted(set(found), key=lambda cls: cls.__name__)


# Classes that carry data build their own message from it.
SAMPLES = {
    errors.UnverifiableFiles: lambda: errors.UnverifiableFiles(
        [Problem("debian", "pool/main/h/hello/hello_2.10-3_amd64.deb", "no index lists it")]
    ),
    errors.FailedFetches: lambda: errors.FailedFetches(
        [FailedFetch("run-1", "debian", "dists/bookworm/InRelease", 503, True, None)]
    ),
}


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_lives_in_errors_py_with_a_status_in_the_table(
    cls: type[DebcacheError],
) -> None:
    assert cls.__module__ == "debcache.errors", f"move {cls.__name__} to debcache/errors.py"
    assert cls in HTTP_STATUS, f"add {cls.__name__} to HTTP_STATUS in debcache/server/errors.py"
    assert "status" not in vars(cls), "the HTTP status belongs in the table, not the class"
    error = SAMPLES.get(cls, lambda: cls("no such thing", "do this instead"))()
    assert http_status(error) == HTTP_STATUS[cls]
    sentence = str(error).splitlines()[0]
    assert error.cause and error.remedy and sentence.endswith(".")
    if cls not in SAMPLES:
        assert str(error) == "No such thing. Do this instead."


def test_a_subclass_the_table_does_not_list_answers_as_its_closest_ancestor() -> None:
    class LateUpstreamTimeout(errors.UpstreamTimeout):
        pass

    assert http_status(LateUpstreamTimeout("slow")) == HTTP_STATUS[errors.UpstreamTimeout]
    assert http_status(DebcacheError("odd")) == 500


def test_http_answers_take_their_status_from_the_table(debcache: DebcacheServer) -> None:
    answers = [
        ("GET", "/pin/nope/debian/dists/bookworm/InRelease", errors.UnknownBranch, "nope"),
        ("GET", "/debian/pool/a%00b.deb", errors.InvalidArchivePath, "not an archive path"),
        ("GET", "/ubuntu/dists/noble/InRelease", errors.UnknownUpstream, "'ubuntu'"),
        ("GET", "/manifest/1a2b/debian/x", errors.InvalidManifestId, "full manifest id"),
        ("GET", "/record/..%2fx/debian/x", errors.InvalidName, "recording name"),
        ("GET", "/_/nothing-here", errors.UnknownPage, "own pages"),
        ("CONNECT", "mirror.example.org:443", errors.UnsupportedMethod, "tunnel"),
        (
            "GET",
            "http://mirror.example.org/debian/dists/bookworm/InRelease",
            errors.ForbiddenProxyHost,
            "proxy_hosts",
        ),
    ]
    for method, target, cls, words in answers:
        reply = request(debcache.url, target, method=method)
        assert reply.status == HTTP_STATUS[cls], (target, reply)
        assert words.encode() in reply.body and reply.body.count(b"\n") == 1, (target, reply)
