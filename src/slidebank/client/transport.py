"""HTTP to one node: pooled connections, retries with back-off, answers turned into typed errors.

Remote nodes are reached with urllib3 (requests' engine: a patch read is one small request, and
urllib3 costs a third of httpx's time per request); a node folder on this machine with an httpx
client bound to its app in-process. Transient failures (connection errors, timeouts, 429, 502–504)
are retried with exponential back-off (the server's Retry-After when it gives one); a request that
changes something is retried only when it certainly never reached the server.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from slidebank.client.errors import (
    BadRequest,
    NoAccess,
    NotFound,
    ServerError,
    ServerUnreachable,
    SlidebankError,
    TokenRejected,
)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
ERRORS: dict[int, type[SlidebankError]] = {400: BadRequest, 401: TokenRejected, 403: NoAccess, 404: NotFound,
                                           413: BadRequest, 422: BadRequest}


class _NotSent(Exception):
    """The request never reached the server (no connection): safe to send again, whatever it does."""


class _NoAnswer(Exception):
    """The request may have reached the server, but no answer came (timeout, reset)."""


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, whatever client fetched it."""

    method: str
    path: str
    status: int
    headers: Mapping[str, str]  # case-insensitive
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


Send = Callable[[str, str, dict[str, str], bytes | None], Answer]  # method, path?query, headers, body


def urllib3_sender(url: str, timeout: float, connections: int) -> tuple[Send, Callable[[], None]]:
    parts = urlsplit(url)
    pool = urllib3.PoolManager(num_pools=4, maxsize=connections, block=False,
                               timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout), retries=False)
    prefix = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    def send(method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        try:
            response = pool.request(method, prefix + target, headers=headers, body=body, preload_content=True)
        except (NewConnectionError, ConnectTimeoutError) as error:
            raise _NotSent(str(error)) from error
        except HTTPError as error:
            raise _NoAnswer(f"{type(error).__name__} {error}") from error
        return Answer(method, target.split("?")[0], response.status, response.headers, response.data)

    return send, pool.clear


def httpx_sender(http: httpx.Client) -> tuple[Send, Callable[[], None]]:
    def send(method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        try:
            response = http.request(method, target, headers=headers, content=body)
        except httpx.ConnectError as error:
            raise _NotSent(str(error)) from error
        except httpx.TransportError as error:
            raise _NoAnswer(f"{type(error).__name__} {error}") from error
        return Answer(method, target.split("?")[0], response.status_code, response.headers, response.content)

    return send, http.close


class Transport:
    """One node's HTTP API (`http`: an httpx client to use instead, e.g. one bound to an in-process app)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 4,
                 backoff_s: float = 0.25, connections: int = 16, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._send, self._close = httpx_sender(http) if http is not None else urllib3_sender(url, timeout, connections)

    def close(self) -> None:
        self._close()

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    def post_json(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json_body=body).json()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json_body: Any = None) -> Answer:
        """The answer to a request, after retries; a typed SlidebankError for anything but 2xx.
        Query values may be lists (repeated keys); commas stay as they are."""
        target = f"{path}?{urlencode(params, doseq=True, safe=',')}" if params else path
        headers = dict(self._headers)
        body = None
        if json_body is not None or method == "POST":
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                answer = self._send(method, target, headers, body)
            except _NotSent as error:
                if last:
                    raise ServerUnreachable(f"cannot reach {self.url}: {error}") from error
            except _NoAnswer as error:
                if last or not idempotent:
                    raise ServerUnreachable(f"no answer from {self.url} for {method} {path}: {error}") from error
            else:
                if 200 <= answer.status < 300:
                    return answer
                if answer.status not in RETRY_STATUSES or last or (not idempotent and answer.status != 429):
                    raise error_for(answer)
                retry_after = answer.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    time.sleep(min(float(retry_after), 60.0))
                    continue
            time.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")  # the last attempt returns or raises


def error_for(answer: Answer) -> SlidebankError:
    """The typed error of a failed answer, with the node's own words."""
    try:
        detail = answer.json().get("detail", answer.content.decode(errors="replace"))
    except (ValueError, AttributeError):
        detail = answer.content.decode(errors="replace")
    if isinstance(detail, list):  # validation issues: where and what
        detail = "; ".join(f"{'.'.join(str(p) for p in issue.get('loc', []))}: {issue.get('msg')}" for issue in detail)
    status = answer.status
    kind = ERRORS.get(status, ServerError if status >= 500 else SlidebankError)
    hint = {401: " (check the token: it may have expired or been revoked)",
            404: " (or you may not read it: ask for access to its dataset)"}.get(status, "")
    return kind(f"{answer.method} {answer.path}: {status} {detail}{hint}", status)


def multipart_parts(answer: Answer) -> list[bytes]:
    """The bodies of a multipart/related answer, in order (frames from `/frames` or DICOMweb);
    ServerError for anything malformed."""
    try:
        return _multipart_parts(answer)
    except (ValueError, IndexError) as error:  # bytes.index: a boundary or header end missing
        raise ServerError(f"malformed multipart answer to {answer.method} {answer.path}: {error}") from error


def _multipart_parts(answer: Answer) -> list[bytes]:
    content_type = answer.headers.get("Content-Type", "")
    kind, _, parameters = content_type.partition(";")
    values = dict(item.strip().partition("=")[::2] for item in parameters.split(";") if "=" in item)
    boundary = values.get("boundary", "").strip('"')
    if not kind.strip().lower().startswith("multipart/") or not boundary:
        raise ServerError(f"expected a multipart answer, got {kind or 'no content type'}")
    body = answer.content
    delimiter = b"--" + boundary.encode()
    parts: list[bytes] = []
    position = body.find(delimiter)
    if position < 0:
        raise ServerError("multipart answer without its boundary")
    position += len(delimiter)
    while not body.startswith(b"--", position):
        start = body.index(b"\r\n", position) + 2
        end_of_headers = body.index(b"\r\n\r\n", start - 2)
        lines = body[start:end_of_headers].decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines if line)}
        content_start = end_of_headers + 4
        length = headers.get("content-length")
        if length is not None and length.isdigit():  # no need to scan the frame for the boundary
            content_end = content_start + int(length)
            if not body.startswith(b"\r\n" + delimiter, content_end):
                raise ServerError("malformed multipart answer: a part is not the length it says")
        else:
            content_end = body.index(b"\r\n" + delimiter, content_start)
        parts.append(body[content_start:content_end])
        position = content_end + 2 + len(delimiter)
    return parts
