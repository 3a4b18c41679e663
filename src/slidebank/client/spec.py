"""How to connect to a node again from another process: a client itself cannot be pickled (open
connections, threads), so DataLoader workers and other processes connect anew from this."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slidebank.client.client import Client


@dataclass(frozen=True)
class ClientSpec:
    url: str | None = None
    token: str | None = None
    home: str | None = None  # a local node instead of a URL
    options: dict[str, Any] = field(default_factory=dict)

    def connect(self) -> Client:
        from slidebank.client.client import Client

        if self.home is not None:
            return Client.local(Path(self.home), token=self.token, **self.options)
        assert self.url is not None, "a ClientSpec names a URL or a node folder"
        return Client(self.url, self.token, **self.options)
