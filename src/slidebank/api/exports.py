"""Patch uses: training data leaving the node as files, or read for training, is declared here first.

An export (`slidebank patches export`, or any SDK user writing patches out) or a training read (a
federated node's round) names its slides and parameters; the node checks that the caller may read
every slide and holds a live grant for every controlled dataset among them (reading rights alone,
a steward's or an administrator's, are not a documented purpose), and records one
`patches.export` or `patches.train` entry per dataset with the grant. The pixels themselves are
then read, and audited, as any other frames.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from slidebank.access.principal import Principal
from slidebank.api.schemas import TypedDict, errors, wire
from slidebank.api.security import Gatekeeper, principal_dependency
from slidebank.catalog.identifiers import SLIDE_ID_REGEX

MAX_EXPORT_SLIDES = 100_000
MAX_EXPORT_BYTES = 8 * 1024 * 1024  # room for MAX_EXPORT_SLIDES ids of up to 64 characters and the parameters


class NewExport(BaseModel):
    slides: list[Annotated[str, Field(pattern=SLIDE_ID_REGEX)]] = Field(min_length=1, max_length=MAX_EXPORT_SLIDES)
    parameters: dict[str, Any] = Field(default_factory=dict)
    use: Literal["export", "training"] = "export"


@wire
class ExportStarted(TypedDict):
    """An export the node has recorded: its id and the grant covering each dataset (null: open data)."""

    export_id: str
    grants: dict[str, str | None]


def export_routes(gatekeeper: Gatekeeper) -> APIRouter:
    router = APIRouter(tags=["processing"])
    current = principal_dependency(gatekeeper)

    @router.post("/api/patch-exports", status_code=201, response_model=ExportStarted, max_body_size=MAX_EXPORT_BYTES,
                 responses=errors(400, 401, 403, 404, 413),
                 summary="Declare a patch export or training read (checked and audited)")
    def start_export(body: NewExport, caller: Principal = Depends(current)) -> ExportStarted:
        datasets = Counter(gatekeeper.slide_dataset(caller, slide) for slide in dict.fromkeys(body.slides))
        ungranted = sorted(d for d in datasets if not gatekeeper.is_open(d) and d not in caller.grants)
        if ungranted:
            verb = "exporting from" if body.use == "export" else "training on"
            raise HTTPException(403, f"{verb} {', '.join(ungranted)} needs a grant: request access "
                                     "for a purpose the dataset's committee approves")
        export_id = str(uuid.uuid4())
        gatekeeper.record_patch_use(caller, dict(datasets), body.use, export_id=export_id, parameters=body.parameters)
        return ExportStarted(export_id=export_id, grants={d: caller.grants.get(d) for d in sorted(datasets)})

    return router
