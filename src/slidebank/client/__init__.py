"""The Slidebank SDK: search, read and process a node's slides from Python, under your grants.

`Client(url, token)` talks to a node over HTTP; `Client.local(home, user=...)` to a node folder on
this machine. `Client.open(slide_id)` gives a `RemoteSlide` with OpenSlide's API whose pixels are
exactly the stored ones. Errors are typed (`NotFound`, `NoAccess`, `TokenRejected`,
`ServerUnreachable`, …), all `SlidebankError`s.
"""

from slidebank.client.client import Client
from slidebank.client.errors import (
    BadRequest,
    NoAccess,
    NotFound,
    ServerError,
    ServerUnreachable,
    SlidebankError,
    TokenRejected,
)
from slidebank.client.slide import RemoteSlide
from slidebank.client.spec import ClientSpec

__all__ = ["BadRequest", "Client", "ClientSpec", "NoAccess", "NotFound", "RemoteSlide", "ServerError", "ServerUnreachable",
           "SlidebankError", "TokenRejected"]
