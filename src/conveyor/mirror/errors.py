"""Mirror errors: what went wrong, in words a person can act on."""

from __future__ import annotations


class MirrorError(Exception):
    """Base class of mirror errors; ``attempts`` says how many tries a transfer had."""

    attempts = 0


class DefinitionError(MirrorError, ValueError):
    """A mirror definition (native or BioMAJ ``.properties``) is invalid; the message says why."""


class ListingFormatError(MirrorError):
    """A listing line or page is not in any format we know."""


class SourceError(MirrorError):
    """A remote operation failed.

    ``permanent`` errors (404, 550, bad credentials) are not retried. ``throttled`` ones (FTP
    421, HTTP 429 and 503) make the mirror open fewer connections to that host, waiting
    ``retry_after`` seconds when the server said how long.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        throttled: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.throttled = throttled
        self.retry_after = retry_after


def stalled(where: str, seconds: float) -> SourceError:
    """A transfer that moved no byte for ``seconds`` (the low-speed timeout): retried."""
    return SourceError(f"{where}: {stall_words(seconds)}")


def stall_words(seconds: float) -> str:
    """How every source says that nothing arrived for ``seconds``."""
    return f"stalled, no data for {seconds:g} s"


def connection_cut(where: str, cause: object) -> SourceError:
    """A connection that ended before the transfer did, with what the system said: retried."""
    return SourceError(f"{where}: connection cut ({cause})")


def unwritable(error: OSError) -> str:
    """Why a downloaded file could not be written to this machine's disk (a full disk, a
    folder that cannot be made): a source words its network errors as SourceError, so an
    OSError reaching the transfer's caller is the local disk's."""
    return f"could not be written here: {error}"
