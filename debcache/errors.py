"""The one hierarchy of errors that reach users: each carries a cause and a remedy.

The CLI prints them as one line and exits non-zero; the server's error
middleware answers them with `status` and a plain-text body. Anything that is
not a `DebcacheError` is a bug: logged with its traceback, answered with 500.

Causes and remedies are written in lower case, as they read mid-sentence; the
printed form starts each sentence with a capital unless it starts with a name
(a file, a path, an upstream, a command): names are never changed. A message
that starts with a name other than a program's should make it recognisable as
one: `NAME: ...`, `NAME/PATH ...` or quoted.
"""

import re

# The first word of a sentence that may be capitalised: lower-case letters only, ending
# the sentence or followed by a space or a comma. "bad.toml:", "debian/pool/...",
# "xen-4.19", "'http://'" and "1a2b3c4d" are names and stay as they are.
_ORDINARY_WORD = re.compile(r"[a-z]+(?=$|[ ,;])")
# An id ("deadbeef") can be all letters. Causes start with a word that says what the id
# is ("manifest 1a2b..."), and this is the safety net: 8 or more of a-f is an id, not a
# word; shorter ones are words ("added", "faced").
_HEX_ID = re.compile(r"[a-f]{8,}")
# Programs whose names are lower case by nature ("debcache does not tunnel connections").
PROGRAM_NAMES = frozenset({"apt", "debcache", "debootstrap", "dpkg", "gpg", "gpgv", "nginx"})


class DebcacheError(Exception):
    """A failure the user can act on: `cause` says what happened, `remedy` what to do."""

    status = 500

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


class ConfigError(DebcacheError):
    """The configuration file or a command-line option is wrong."""


class BadRequest(DebcacheError):
    status = 400


class Forbidden(DebcacheError):
    status = 403


class NotFound(DebcacheError):
    status = 404


class MethodNotAllowed(DebcacheError):
    status = 405


class UpstreamUnavailable(DebcacheError):
    """Every base URL of an upstream failed (connect error, timeout or 5xx)."""

    status = 502


class UpstreamTimeout(UpstreamUnavailable):
    status = 504


class CorruptDownload(DebcacheError):
    """A body that did not match its Content-Length or the sha256 an index lists."""

    status = 502


class DatabaseUnavailable(DebcacheError):
    """The database cannot take writes: its writer thread has died."""

    status = 503


class StoreUnavailable(DebcacheError):
    """The cache could not write a file of its own (disk full, file size limit, I/O error)."""

    status = 503


class UnreadableIndex(DebcacheError):
    """An index file (Packages) that does not decompress or parse: a broken mirror."""

    status = 502
