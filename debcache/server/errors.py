"""The HTTP status of each domain error: the one table where a failure becomes a status.

Domain code raises `DebcacheError` subclasses named for what went wrong; only the
server knows HTTP, so the status of each is chosen here, found along the class's
MRO (a subclass answers as its closest listed ancestor).
"""

from .. import errors

HTTP_STATUS: dict[type[errors.DebcacheError], int] = {
    errors.DebcacheError: 500,
    # The configuration and the command line: a request can't fix them.
    errors.ConfigError: 500,
    errors.SigningError: 500,
    errors.WorkerCrashLoop: 500,
    # Requests that name nothing valid.
    errors.InvalidArchivePath: 400,
    errors.InvalidName: 400,
    errors.InvalidCredentials: 400,
    errors.InvalidManifestId: 400,
    errors.InvalidOption: 400,
    errors.InvalidApiRequest: 400,
    errors.InvalidLockfile: 400,
    errors.UnsupportedMethod: 405,
    # Names that name nothing. A malformed id prefix is "no such manifest" too (404),
    # as the CLI and API have always answered it.
    errors.UnknownPage: 404,
    errors.UnknownUpstream: 404,
    errors.UnknownRecording: 404,
    errors.UnknownBranch: 404,
    errors.UnknownManifest: 404,
    errors.AmbiguousManifestId: 404,
    errors.UnknownDiffSide: 404,
    errors.NoEarlierManifest: 404,
    errors.NotInManifest: 404,
    # A missing keyring leaves the re-signed Release unavailable, as if not there.
    errors.MissingKeyring: 404,
    # Refusals.
    errors.ForbiddenProxyHost: 403,
    errors.ApiNotAllowed: 403,
    errors.UnverifiableRelease: 403,
    # The state conflicts with the operation: fix the data, then retry.
    errors.BlobsMissing: 409,
    errors.FreezeRefused: 409,
    errors.UnverifiableFiles: 409,
    errors.FailedFetches: 409,
    # Upstreams and the database.
    errors.UpstreamUnavailable: 502,
    errors.UpstreamTimeout: 504,
    errors.CorruptDownload: 502,
    errors.ImportFailed: 502,
    errors.DatabaseUnavailable: 503,
    errors.StoreUnavailable: 503,
    errors.FetcherUnavailable: 503,
    # A blob a manifest holds but the store lost: `debcache verify` repairs it.
    errors.BlobGone: 503,
    errors.CorruptBlob: 503,
    errors.UnreadableIndex: 502,
}


def http_status(error: errors.DebcacheError) -> int:
    """The status that answers `error`: its class's, or its closest listed ancestor's."""
    return next(HTTP_STATUS[cls] for cls in type(error).__mro__ if cls in HTTP_STATUS)
