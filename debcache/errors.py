"""The one hierarchy of errors that reach users: each carries a cause and a remedy.

The CLI prints them as one line and exits non-zero; the server's error
middleware answers them with `status` and a plain-text body. Anything that is
not a `DebcacheError` is a bug: logged with its traceback, answered with 500.
"""


class DebcacheError(Exception):
    """A failure the user can act on: `cause` says what happened, `remedy` what to do."""

    status = 500

    def __init__(self, cause: str, remedy: str = "") -> None:
        super().__init__(cause)
        self.cause = cause.rstrip(".")
        self.remedy = remedy.rstrip(".")

    def __str__(self) -> str:
        sentences = [s[:1].upper() + s[1:] for s in (self.cause, self.remedy) if s]
        return ". ".join(sentences) + "."


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
