"""What can go wrong when talking to a node, as exceptions a script can catch one by one."""

from __future__ import annotations


class SlidebankError(Exception):
    """Anything the SDK raises; `status` is the HTTP status when the node answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(SlidebankError):
    """No such slide, dataset or job, or one you may not read: the node answers both alike (404)."""


class NoAccess(SlidebankError):
    """The node knows who you are and refuses this action (403), e.g. cancelling someone else's job."""


class TokenRejected(SlidebankError):
    """No valid credentials (401): the token is wrong, expired or revoked, or none was given."""


class BadRequest(SlidebankError):
    """The request was malformed (400), e.g. a search condition the node cannot parse."""


class ServerError(SlidebankError):
    """The node failed (5xx) and kept failing after the retries."""


class ServerUnreachable(SlidebankError):
    """No answer from the node (connection refused, timeout, reset) after the retries."""
