"""The one hierarchy of errors that reach users: each carries a cause and a remedy.

Each class is named for what went wrong in the domain, never for an HTTP status:
the server maps classes to statuses in one table (`server/errors.py`) and answers
with a plain-text body; the CLI prints them as one line and exits 1. Anything that
is not a `DebcacheError` is a bug: logged with its traceback, answered with 500.

Causes and remedies are written in lower case, as they read mid-sentence; the
printed form starts each sentence with a capital unless it starts with a name
(a file, a path, an upstream, a command): names are never changed. A message
that starts with a name other than a program's should make it recognisable as
one: `NAME: ...`, `NAME/PATH ...` or quoted.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the data the freeze errors carry; those modules import this one
    from .freeze import Problem
    from .recording import FailedFetch

# The first word of a sentence that may be capitalised: lower-case letters only, ending
# the sentence or followed by a space or a comma. "bad.toml:", "debian/pool/...",
# "xen-4.19", "'http://'" and "1a2b3c4d" are names and stay as they are.
_ORDINARY_WORD = re.compile(r"[a-z]+(?=$|[ ,;])")
# An id ("deadbeef") can be all letters. Causes start with a word that says what the id
# is ("manifest 1a2b..."), and this is the safety net: 8 or more of a-f is an id, not a
# word; shorter ones are words ("added", "faced").
_HEX_ID = re.compile(r"[a-f]{8,}")
# How the problem of a udeb that `freeze --installer complete` could not add begins: its
# header and remedy differ from those of other files freeze could not complete.
INSTALLER_COMPLETE_NEEDS = "--installer complete needs it"
# Programs whose names are lower case by nature ("debcache does not tunnel connections").
PROGRAM_NAMES = frozenset({"apt", "debcache", "debootstrap", "dpkg", "gpg", "gpgv", "nginx"})


class DebcacheError(Exception):
    """A failure the user can act on: `cause` says what happened, `remedy` what to do."""

    def __init__(self, cause: str, remedy: str = "") -> None:
        super().__init__(cause)
        self.cause = cause.rstrip(".")
        self.remedy = remedy.rstrip(".")

    def __str__(self) -> str:
        sentences = [sentence_case(s) for s in (self.cause, self.remedy) if s]
        return ". ".join(sentences) + "."


def sentence_case(text: str) -> str:
    """`text` with a capital first letter, unless it starts with a name (kept as written)."""
    word = _ORDINARY_WORD.match(text)
    if word is None or word.group() in PROGRAM_NAMES or _HEX_ID.fullmatch(word.group()):
        return text
    return text[:1].upper() + text[1:]


def recordings_named(names: list[str]) -> str:
    """`recording a` or `recordings a, b`: a message never starts with a bare name."""
    return f"recording{'s' if len(names) > 1 else ''} {', '.join(names)}"


# --- the configuration and the command line ----------------------------------------


class ConfigError(DebcacheError):
    """The configuration file, a command-line option or the data dir is wrong."""


class SigningError(DebcacheError):
    """gpg failed to make or use debcache's own signing key."""


# --- requests that name nothing valid --------------------------------------------


class InvalidArchivePath(DebcacheError):
    """A path that is not a plain archive path: too long, empty, '.', '..', odd characters."""


class InvalidName(DebcacheError):
    """A recording, branch or upstream name that breaks the naming rules."""


class InvalidCredentials(DebcacheError):
    """Proxy credentials that are not Basic credentials (they name a recording)."""


class InvalidManifestId(DebcacheError):
    """A manifest id in a URL that is not all 64 hex digits."""


class InvalidOption(DebcacheError):
    """An operation's option with a value it does not take."""


class InvalidApiRequest(DebcacheError):
    """An API request without the body or query parameters it needs."""


class InvalidLockfile(DebcacheError):
    """A lockfile that is not JSON, not debcache's format, or has an unsafe entry."""


class UnsupportedMethod(DebcacheError):
    """A proxy request debcache does not serve: CONNECT, or a method other than GET/HEAD."""


# --- names that name nothing -----------------------------------------------------


class UnknownPage(DebcacheError):
    """A URL below debcache's own prefixes that is none of its pages."""


class UnknownUpstream(DebcacheError):
    """No upstream of that name: in the configuration, or among a manifest's files."""


class UnknownRecording(DebcacheError):
    """No recording of that name."""


class UnknownBranch(DebcacheError):
    """No branch of that name."""


class UnknownManifest(DebcacheError):
    """No manifest with that id or id prefix (or the text is not an id at all)."""


class AmbiguousManifestId(DebcacheError):
    """A manifest id prefix that more than one manifest starts with."""


class UnknownDiffSide(DebcacheError):
    """A side of a diff that is no manifest, branch or recording."""


class NoEarlierManifest(DebcacheError):
    """A rollback of a branch that never pointed at another manifest."""


class NotInManifest(DebcacheError):
    """A path that the pinned manifest does not hold."""


class BlobGone(DebcacheError):
    """A blob that left the store (gc, quarantine) between finding it and opening it."""


class CorruptBlob(BlobGone):
    """A stored blob whose size or hash is not its own: quarantined, never served."""


# --- refusals --------------------------------------------------------------------


class ForbiddenProxyHost(DebcacheError):
    """A forward-proxy request for a host that no upstream names."""


class ApiNotAllowed(DebcacheError):
    """A change through the API from a client that is neither local nor holds the token."""


class MissingKeyring(DebcacheError):
    """An upstream without a keyring, so its frozen Release cannot be checked for re-signing."""


class UnverifiableRelease(DebcacheError):
    """A frozen Release that does not verify, which debcache will not re-sign."""


class BlobsMissing(DebcacheError):
    """A manifest whose blobs are not all present and intact: it cannot be pinned."""


class FreezeRefused(DebcacheError):
    """The recordings cannot be frozen as they are (two Release states, nothing whole, ...)."""


class UnverifiableFiles(FreezeRefused):
    """Freeze found files it cannot verify; lists each with its reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        udebs = sum(
            p.completing and p.reason.startswith(INSTALLER_COMPLETE_NEEDS) for p in problems
        )
        completing = sum(p.completing for p in problems) - udebs
        recorded = len(problems) - completing - udebs
        what, remedies = [], []
        if recorded:
            what.append(f"{recorded} recorded file(s) could not be verified")
            remedies.append("fix the mirror or the keyring and record again")
        if udebs:  # no recording fetched them: the upstream lacks or withheld them
            what.append(
                f"{udebs} udeb(s) --installer complete adds could not be completed: neither "
                "cached nor fetched from the upstream"
            )
            remedies.append(
                'freeze without --installer complete (a branch with fill = "verified" '
                "fetches a missing udeb when first asked for)"
            )
        if completing:
            what.append(
                f"{completing} file(s) a fresh install needs could not be completed: neither "
                "cached nor fetched from the upstream"
            )
            remedies.append("make the upstream reachable (or fix its urls) and freeze again")
        allowed = {
            (True, False): "to include them marked unverified",
            (False, True): "to freeze without them (named as warnings)",
            (True, True): "to include the recorded ones marked unverified and freeze "
            "without the others",
        }[bool(recorded), bool(completing or udebs)]
        super().__init__(
            "; ".join(what), f"{', or '.join(remedies)}, or pass --allow-unverified {allowed}"
        )

    def __str__(self) -> str:
        # The sentence first, whole; then the files, one per line.
        return "\n".join([super().__str__(), *(f"  {p}" for p in self.problems)])


class FailedFetches(FreezeRefused):
    """freeze --strict: the recordings got errors a good install does not get."""

    def __init__(self, failures: list[FailedFetch]) -> None:
        self.failures = failures
        recordings = recordings_named(sorted({f.recording for f in failures}))
        super().__init__(
            f"{recordings} had {len(failures)} failed fetch(es), so it is not a known-good "
            f"install: {', '.join(str(f) for f in failures)}",
            "fix the mirror and record the install again, or freeze without --strict",
        )


# --- upstreams, downloads and the database ---------------------------------------


class UpstreamUnavailable(DebcacheError):
    """Every base URL of an upstream failed (connect error, timeout or 5xx)."""


class UpstreamTimeout(UpstreamUnavailable):
    """Every base URL of an upstream failed, each by timing out."""


class CorruptDownload(DebcacheError):
    """A body that did not match its Content-Length or the sha256 an index lists."""


class ImportFailed(DebcacheError):
    """Files of an imported manifest could not be fetched; nothing was imported."""


class DatabaseUnavailable(DebcacheError):
    """The database cannot take writes: its writer thread has died."""


class FetcherUnavailable(DebcacheError):
    """A worker process could not reach the fetcher process it relays misses to."""


class WorkerCrashLoop(DebcacheError):
    """A server process kept exiting right after it was restarted."""


class StoreUnavailable(DebcacheError):
    """The cache could not write a file of its own (disk full, file size limit, I/O error)."""


class UnreadableIndex(DebcacheError):
    """An index file (Packages) that does not decompress or parse: a broken mirror."""
