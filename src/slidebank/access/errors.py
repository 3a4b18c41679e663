"""What access decisions answer when they say no."""


class AccessError(Exception):
    """A request the caller can fix (unknown user, bad role, wrong state): answered 400."""


class NotAllowed(AccessError):
    """The principal may not do this: answered 403 (or 404 where existence itself is private)."""


class NotFound(AccessError):
    """No such request, grant or token — or one the caller may not act on: both answer 404 with the
    same words, so an answer never reveals that something exists."""


class SlideNotFound(LookupError):
    """No such slide, or one the caller may not read: both answer 404, so neither reveals the other."""


class TooManyAttempts(AccessError):
    """Too many failed log-ins for an account or an address: answered 429 until the window passes."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed log-ins; try again in {retry_after} s")
        self.retry_after = retry_after
