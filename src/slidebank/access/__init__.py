"""Governance: identities, roles, datasets under policies, access requests, grants, notices.

`principal` says who is asking, `identity` resolves credentials to principals, `governance` holds
the committees' decisions, `version` makes every change visible to every process at once.
"""

from slidebank.access.errors import AccessError, NotAllowed, SlideNotFound, TooManyAttempts
from slidebank.access.principal import OPERATOR, Principal

__all__ = ["OPERATOR", "AccessError", "NotAllowed", "Principal", "SlideNotFound", "TooManyAttempts"]
