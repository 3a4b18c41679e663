"""The API's wire formats, shared part: how answers are declared, the error answer, health.

Every JSON answer has a declared type here or beside this module (`schemas_catalog`,
`schemas_access`, `schemas_annotations`, `schemas_processing`); routes name it as their
`response_model`, so FastAPI validates each answer against the OpenAPI document it publishes, and
schemathesis's response-conformance check holds the running server to it. Services keep returning
plain records; routers pass them through.

Answers are TypedDicts validated by pydantic, not BaseModels: the same schema and the same checks,
but no object is built per item, which matters for answers of thousands of slides, features, audit
entries or tasks (a third of the cost of models, measured on a 5 000-feature viewport). Request
bodies are BaseModels (defaults, `model_dump(exclude_unset=True)`).

Answers forbid unknown keys (`@wire`): the document says `additionalProperties: false`, and a key a
service adds without declaring it here fails loudly (a 500 in the tests) instead of vanishing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.openapi.constants import REF_PREFIX
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

wire = with_config(ConfigDict(extra="forbid"))
"""Class decorator of every answer type: exactly the declared keys."""

Number = int | float
"""A JSON number kept as given: an integer stays an integer on the wire."""

Timestamp = Annotated[str, Field(description="ISO 8601 date and time, UTC")]


def fixed_array(length: int, *types: str, description: str) -> WithJsonSchema:
    """The document's schema of a tuple: `length` items of these JSON types.

    Pydantic writes tuples with `prefixItems` (JSON Schema 2020-12, valid OpenAPI 3.1), which
    schemathesis 4 rewrites to the draft-4 `items: [...]` and then rejects as an invalid response
    schema; validation still checks each position, the document says one item type for all.
    """
    items = {"type": types[0]} if len(types) == 1 else {"type": list(types)}
    return WithJsonSchema({"type": "array", "items": items, "minItems": length, "maxItems": length,
                           "description": description})


# --- errors ---------------------------------------------------------------------------------------


class ValidationIssue(BaseModel):
    """One thing wrong with a request: where (`["query", "limit"]`) and what."""

    loc: list[str | int]
    msg: str


class Error(BaseModel):
    """Every 4xx answer: `detail` says what to fix; a malformed request lists each issue."""

    detail: str | list[ValidationIssue]


_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "Malformed query or body, or a request the caller can fix"},
    401: {
        "description": "No valid API token, OIDC token or browser session",
        "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    },
    403: {"description": "Not allowed, or a browser change without the session's CSRF token"},
    404: {"description": "No such thing, or one the caller may not see (the same answer)"},
    406: {"description": "None of the representations the Accept header allows can be made"},
    409: {"description": "Conflicts with the current state"},
    413: {
        "description": "Request body too large",
        # The body limit answers before any route runs, in plain text when Content-Length tells it.
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    415: {"description": "The body is not of a media type the route takes"},
    429: {
        "description": "Too many failed log-ins",
        "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    },
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the 4xx codes a route can give, each documented as `Error`.

    Error answers are application/json whatever the route's own media type: FastAPI files a
    response `model` under the route's media type (e.g. application/geo+json), so the JSON entry
    is named here too.
    """
    json = {"application/json": {"schema": {"$ref": REF_PREFIX + Error.__name__}}}
    return {code: {"model": Error, **_ERRORS[code], "content": {**json, **_ERRORS[code].get("content", {})}}
            for code in codes}


# --- health ---------------------------------------------------------------------------------------


@wire
class Health(TypedDict):
    """The server answers (`GET /healthz`)."""

    status: Literal["ok"]
    version: str


__all__ = ["Error", "Health", "Number", "Timestamp", "TypedDict", "ValidationIssue", "errors", "fixed_array", "wire"]
