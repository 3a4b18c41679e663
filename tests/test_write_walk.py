"""The route-by-role walk, for writes: every state-changing route of the OpenAPI document is tried by
every role against objects that belong to someone else (another user's annotation, request, grant,
token, job, sessions, a subject of a controlled dataset). Those not allowed are refused and change
nothing; then one who is allowed succeeds. A write route added later without an entry here fails."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from conftest import json_lines, run_cli
from databases import open_node
from slidebank.access.principal import operator
from slidebank.annotations.geojson import parse_document
from slidebank.api.frames import multipart_related
from slidebank.jobs import JobSpec
from slidebank.node import Node

ROLES = {"root": "administrator", "steward": "data_steward", "dac": "dac_member", "dac2": "dac_member",
         "ana": "researcher", "ben": "researcher"}
EVERYONE = (None, *ROLES)  # None: anonymous
REFUSED = {401, 403, 404}
SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 9], [0, 0]]]}


@dataclass
class World:
    node: Node
    client: TestClient
    tokens: dict[str, str]
    slide: str  # in the controlled dataset "closed": ana holds a grant, steward stewards it
    doomed: str  # another slide there, of its own subject: the one the erasure walk erases
    objects: dict[str, str] = field(default_factory=dict)

    def call(self, who: str | None, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        if isinstance(body, bytes):  # a STOW-RS body
            headers["Content-Type"] = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'
            return self.client.request(method, path, content=body, headers=headers)
        return self.client.request(method, path, json=body, headers=headers)


def fresh_objects(world: World) -> None:
    """Objects owned by ana (and a pending request of ben's), made anew before each route's walk."""
    node, me = world.node, operator()
    ana, ben = (node.identities.principal_for_user(n) for n in ("ana", "ben"))
    feature = node.annotations.add(world.slide, parse_document({"type": "Feature", "geometry": SQUARE,
                                                                 "properties": {}}), ana)[0]
    pending = node.governance.request_access(ben, "closed", "a pending study")
    granted = node.governance.request_access(ana, "closed", "another study")
    grant = node.governance.approve(granted, node.identities.principal_for_user("dac"), date.today() + timedelta(9))
    _, token = node.identities.create_token(me, "ana", "walk")
    job = node.jobs.create(JobSpec("qc", "1.0.0", {}, (world.slide,), "ana"))
    world.objects = {"feature": feature, "request": pending, "grant": grant, "token": token["id"], "job": job["id"]}


@dataclass(frozen=True)
class Write:
    method: str
    path: str
    allowed: frozenset[str]  # roles that may; everyone else is refused
    body: Callable[[World], Any] = lambda world: None
    unchanged: Callable[[World], Any] = lambda world: None  # a view of the state a refusal must leave as it is


STOW_BOUNDARY = "walkboundary"


def _smallest_level(world: World) -> bytes:
    """The smallest stored level of the walk's slide, decrypted: a one-level slide to store."""
    smallest = max(world.node.volume_files(world.slide), key=lambda f: f.level or 0)
    blob = world.node.open_blob(smallest)
    try:
        return blob.pread(0, blob.size)
    finally:
        blob.close()


def _stow_body(world: World) -> bytes:
    return multipart_related([(_smallest_level(world), "application/dicom")], STOW_BOUNDARY)


def _study(world: World) -> str:
    return str(pydicom.dcmread(io.BytesIO(_smallest_level(world)), stop_before_pixels=True).StudyInstanceUID)


def _slides(world: World) -> int:
    return len(world.node.catalog.list_slides())


def _feature(world: World) -> Any:
    rows = world.node.annotations.query(world.slide, limit=1000)[0]
    return next((f["geometry"], f["properties"]) for f in rows if f["id"] == world.objects["feature"])


WRITES = [
    Write("DELETE", "/api/users/ana/sessions", frozenset({"ana", "root"})),
    Write("DELETE", "/api/tokens/{token}", frozenset({"ana", "root"}),
          unchanged=lambda w: [t["revoked_at"] for t in w.node.identities.list_tokens(operator(), "ana")]),
    Write("POST", "/api/users/ana/disable", frozenset({"root"}),
          unchanged=lambda w: [u["disabled"] for u in w.node.identities.list_users() if u["name"] == "ana"]),
    Write("POST", "/api/users/ana/enable", frozenset({"root"})),
    Write("POST", "/api/access-requests/{request}/approve", frozenset({"dac", "dac2", "root"}),
          body=lambda w: {"expires": (date.today() + timedelta(9)).isoformat()},
          unchanged=lambda w: [r["status"] for r in w.node.governance.requests(operator())]),
    Write("POST", "/api/access-requests/{request}/reject", frozenset({"dac", "dac2", "root"}),
          body=lambda w: {"reason": "no"}, unchanged=lambda w: [r["status"] for r in w.node.governance.requests(operator())]),
    Write("POST", "/api/grants/{grant}/revoke", frozenset({"dac", "dac2", "root"}),
          unchanged=lambda w: sorted(w.node.identities.principal_for_user("ana").grants.values())),
    Write("PUT", "/api/slides/{slide}/annotations/{feature}", frozenset({"ana", "steward", "root"}),
          body=lambda w: {"properties": {"changed": True}}, unchanged=_feature),
    Write("DELETE", "/api/slides/{slide}/annotations/{feature}", frozenset({"ana", "steward", "root"}),
          unchanged=_feature),
    Write("POST", "/api/jobs/{job}/cancel", frozenset({"ana", "root"}),
          unchanged=lambda w: w.node.jobs.get(w.objects["job"], tasks=False)["state"]),
    Write("POST", "/api/slides/{slide}/annotations", frozenset({"ana", "steward", "root"}),
          body=lambda w: {"type": "Point", "coordinates": [5, 5]},
          unchanged=lambda w: w.node.annotations.query(w.slide, limit=0)[1]),
    Write("POST", "/api/jobs", frozenset({"ana", "steward", "root"}),
          body=lambda w: {"algorithm": "tissue", "slides": [w.slide]},
          unchanged=lambda w: len(w.node.jobs.list(limit=1000))),
    Write("POST", "/api/patch-exports", frozenset({"ana"}),  # a grant is needed: reading rights are not a purpose
          body=lambda w: {"slides": [w.slide], "parameters": {}},
          unchanged=lambda w: sum(e["action"] == "patches.export" for e in w.node.audit.entries())),
    Write("POST", "/api/erasures", frozenset({"steward", "root"}),
          body=lambda w: {"subject": w.node.catalog.get_slide(w.doomed)["subject"]},  # type: ignore[index]
          unchanged=lambda w: w.node.catalog.slide_exists(w.doomed)),
    # STOW-RS: stewards of the dataset and administrators store into it (a one-level slide here)
    Write("POST", "/dicomweb/studies?dataset=closed", frozenset({"steward", "root"}), body=_stow_body, unchanged=_slides),
    Write("POST", "/dicomweb/studies/{study}?dataset=closed", frozenset({"steward", "root"}), body=_stow_body,
          unchanged=_slides),
    Write("POST", "/dicomweb/datasets/closed/studies", frozenset({"steward", "root"}), body=_stow_body,
          unchanged=_slides),
    Write("POST", "/dicomweb/datasets/closed/studies/{study}", frozenset({"steward", "root"}), body=_stow_body,
          unchanged=_slides),
]
OWN = {  # writes on the caller's own things: any account may, nobody anonymous
    ("POST", "/api/tokens"), ("POST", "/api/access-requests"), ("POST", "/api/session"), ("DELETE", "/api/session"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, generic_slide, aperio_slide) -> Iterator[World]:  # noqa: ANN001
    from slidebank.api.app import create_app

    home = tmp_path_factory.mktemp("walk") / "node"
    sidecar = home.parent / "meta.csv"
    sidecar.write_text(f"file,subject\n{generic_slide.path.name},PATIENT-KEPT\n{aperio_slide.path.name},PATIENT-GONE\n")
    ingested = json_lines(run_cli("ingest", str(generic_slide.path), str(aperio_slide.path), "--dataset", "closed",
                                  "--metadata", str(sidecar), "--json", "--no-qc", home=home, check=True).stdout)
    by_file = {Path(i["path"]).name: i["slide_id"] for i in ingested}
    node = open_node(home)
    me = operator()
    for name, role in ROLES.items():
        node.identities.add_user(me, name, role)
    node.governance.set_policy(me, "closed", "apply to the DAC", ["DUO:0000007"])
    for member in ("dac", "dac2"):
        node.governance.add_committee_member(me, "closed", member)
    node.governance.add_steward(me, "closed", "steward")
    tokens = {name: node.identities.create_token(me, name)[0] for name in ROLES}
    with TestClient(create_app(node)) as client:
        yield World(node, client, tokens, by_file[generic_slide.path.name], by_file[aperio_slide.path.name])
    node.close()


def test_every_write_route_is_in_the_walk(world: World) -> None:
    documented = {(method.upper(), path) for path, operations in world.client.get("/openapi.json").json()["paths"].items()
                  for method in operations if method != "get"}
    walked = {(w.method, w.path.replace("{slide}", "{slide_id}").replace("{feature}", "{feature_id}")
               .replace("{request}", "{request_id}").replace("{grant}", "{grant_id}").replace("{token}", "{token_id}")
               .replace("{job}", "{job_id}").replace("/ana/", "/{name}/").replace("/closed/", "/{dataset}/")
               .partition("?")[0]) for w in WRITES}
    assert documented - walked - OWN == set(), "write routes missing from the walk"


@pytest.mark.parametrize("write", WRITES, ids=[f"{w.method} {w.path}" for w in WRITES])
def test_a_write_on_someone_elses_object_is_refused_and_changes_nothing(world: World, write: Write) -> None:
    fresh_objects(world)
    path = write.path.format(slide=world.slide, study=_study(world) if "{study}" in write.path else "",
                             **world.objects)
    before = write.unchanged(world)
    for who in EVERYONE:
        if who in write.allowed:
            continue
        answer = world.call(who, write.method, path, write.body(world))
        assert answer.status_code in REFUSED, (who, write.method, path, answer.status_code, answer.text[:200])
        assert write.unchanged(world) == before, (who, write.method, path, "changed state although refused")
    permitted = sorted(write.allowed)[0]
    answer = world.call(permitted, write.method, path, write.body(world))
    assert 200 <= answer.status_code < 300, (permitted, write.method, path, answer.status_code, answer.text[:200])
    restore(world)


def restore(world: World) -> None:
    """What the permitted call may have changed that the rest of the walk relies on: ana enabled, ben
    without a grant (an approval of his pending request gives him one)."""
    node = world.node
    node.identities.set_disabled(operator(), "ana", False)
    for grant in node.identities.principal_for_user("ben").grants.values():
        node.governance.revoke(grant, operator())


def test_the_callers_own_writes_need_an_account(world: World) -> None:
    assert world.call(None, "POST", "/api/tokens", {"label": "x"}).status_code == 401
    assert world.call(None, "POST", "/api/access-requests", {"dataset": "closed", "purpose": "x"}).status_code == 401
    assert world.call("ben", "POST", "/api/tokens", {"label": "x"}).status_code == 201
