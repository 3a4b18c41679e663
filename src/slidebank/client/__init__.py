"""The Slidebank SDK: search, read and process a node's slides from Python, under your grants.

`Client(url, token)` talks to a node over HTTP; `Client.local(home, user=...)` to a node folder on
this machine. `Client.open(slide_id)` gives a `RemoteSlide` with OpenSlide's API whose pixels are
exactly the stored ones. Errors are typed (`NotFound`, `NoAccess`, `TokenRejected`,
`ServerUnreachable`, …), all `SlidebankError`s.

```python
from slidebank.client import Client, NotFound

with Client("https://slidebank.example.org", token="sbk_…") as bank:
    page = bank.search(organ=["Breast"], where="qc.blur_fraction < 0.05")
    for summary in bank.slides(dataset="camelyon"):          # every slide you may read, paged
        with bank.open(summary["slide_id"]) as slide:          # OpenSlide's API
            patch = slide.read_region((10_000, 20_000), 0, (256, 256))
    job = bank.run("qc", slides=[summary["slide_id"]], wait=True)
```

Training data from the same client: `slidebank.patches`.
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
