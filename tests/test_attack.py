"""What an attack pass against a running server found, each closed as a class (issue 11): the API is
driven in-process (what is under test is the decision, not HTTP), the command line as a user runs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import json_lines, run_cli
from databases import open_node
from slidebank.access.principal import operator
from slidebank.node import Node


@dataclass
class Attack:
    node: Node
    client: TestClient
    tokens: dict[str, str]
    slide: str

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory, generic_slide) -> Iterator[Attack]:  # noqa: ANN001
    from slidebank.api.app import create_app

    home = tmp_path_factory.mktemp("attack") / "node"
    [slide] = json_lines(run_cli("ingest", str(generic_slide.path), "--dataset", "study", "--json", "--no-qc",
                                 home=home, check=True).stdout)
    node = open_node(home)
    me = operator()
    for name, role in (("dac", "dac_member"), ("dac2", "dac_member"), ("ana", "researcher"), ("ben", "researcher")):
        node.identities.add_user(me, name, role)
    node.governance.set_policy(me, "study", "open for the test", ["DUO:0000004"], max_grant_days=30)
    node.governance.create_dataset(me, "closed", "apply", max_grant_days=30)
    for member in ("dac", "dac2"):
        node.governance.add_committee_member(me, "closed", member)
    tokens = {name: node.identities.create_token(me, name)[0] for name in ("dac", "dac2", "ana", "ben")}
    with TestClient(create_app(node)) as client:
        yield Attack(node, client, tokens, slide["slide_id"])
    node.close()


def test_a_create_never_touches_someone_elses_annotation(attack: Attack) -> None:
    path = f"/api/slides/{attack.slide}/annotations"
    square = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    mine = attack.client.post(path, json={"type": "Feature", "geometry": square, "properties": {}},
                              headers=attack.as_("ana")).json()["ids"][0]
    hijack = {"type": "Feature", "id": mine, "properties": {"name": "pwned"},
              "geometry": {"type": "Point", "coordinates": [1, 1]}}
    refused = attack.client.post(path, json=hijack, headers=attack.as_("ben"))
    assert refused.status_code == 403
    stored = attack.client.get(path, headers=attack.as_("ana")).json()["features"]
    [feature] = [f for f in stored if f["id"] == mine]
    assert feature["geometry"] == square and feature["slidebank"]["author"] == "ana"
    again = attack.client.post(path, json={**hijack, "properties": {}}, headers=attack.as_("ana"))
    assert again.status_code == 201 and again.json()["ids"] == [mine]  # the author's re-import replaces it


def test_annotation_properties_are_bounded_at_the_door(attack: Attack) -> None:
    path = f"/api/slides/{attack.slide}/annotations"
    deep: dict = {}
    cursor = deep
    for _ in range(300):
        cursor["x"] = {}
        cursor = cursor["x"]
    before = attack.client.get(path).json()["total"]
    answer = attack.client.post(path, json={"type": "Feature", "properties": deep,
                                            "geometry": {"type": "Point", "coordinates": [3, 3]}},
                                headers=attack.as_("ana"))
    assert answer.status_code in (400, 413, 422) and "nest" in answer.text
    listed = attack.client.get(path)
    assert listed.status_code == 200 and listed.json()["total"] == before  # nothing stored, the list still works


def test_committee_members_do_not_approve_their_own_requests_nor_beyond_the_policy(attack: Attack) -> None:
    dac, dac2 = (attack.node.identities.principal_for_user(n) for n in ("dac", "dac2"))
    own = attack.node.governance.request_access(dac, "closed", "my own study")
    denied = attack.client.post(f"/api/access-requests/{own}/approve", json={"expires": str(date.today() + timedelta(5))},
                                headers=attack.as_("dac"))
    assert denied.status_code == 403 and "four eyes" in denied.json()["detail"]
    too_long = attack.client.post(f"/api/access-requests/{own}/approve", json={"expires": "9999-12-31"},
                                  headers=attack.as_("dac2"))
    assert too_long.status_code == 400 and "30 days" in too_long.json()["detail"]
    fine = attack.client.post(f"/api/access-requests/{own}/approve",
                              json={"expires": str(date.today() + timedelta(30))}, headers=attack.as_("dac2"))
    assert fine.status_code == 200
    [decided] = [r for r in attack.node.governance.requests(dac2) if r["id"] == own]
    assert decided["status"] == "approved"  # another member decided


def test_revoking_reveals_nothing_about_grants_one_does_not_decide(attack: Attack) -> None:
    ana = attack.node.identities.principal_for_user("ana")
    request = attack.node.governance.request_access(ana, "closed", "study")
    grant = attack.client.post(f"/api/access-requests/{request}/approve",
                               json={"expires": str(date.today() + timedelta(10))}, headers=attack.as_("dac")).json()["grant"]
    real = attack.client.post(f"/api/grants/{grant}/revoke", headers=attack.as_("ben"))
    unknown = attack.client.post("/api/grants/00000000-0000-0000-0000-000000000000/revoke", headers=attack.as_("ben"))
    assert real.status_code == unknown.status_code == 404
    assert real.json()["detail"].replace(grant, "X") == unknown.json()["detail"].replace(
        "00000000-0000-0000-0000-000000000000", "X")


def test_non_finite_numbers_are_refused_everywhere(attack: Attack) -> None:
    for path, params in ((f"/api/slides/{attack.slide}/annotations", {"bbox": "nan,0,10,10"}),
                         (f"/api/slides/{attack.slide}/annotations/density", {"bbox": "0,0,inf,10"}),
                         ("/api/search", {"where": "qc.blur_fraction < 1e999"})):
        assert attack.client.get(path, params=params).status_code == 400, (path, params)
    assert attack.client.get(f"/iiif/3/{attack.slide}/full/max/nan/default.jpg").status_code == 400
    point = {"type": "Feature", "properties": {"score": float("nan")}, "geometry": {"type": "Point", "coordinates": [1, 1]}}
    sent = attack.client.post(f"/api/slides/{attack.slide}/annotations", content=json.dumps(point),
                              headers={**attack.as_("ana"), "Content-Type": "application/json"})
    assert sent.status_code in (400, 422)


def test_the_audit_is_shown_escaped(attack: Attack, tmp_path: Path) -> None:
    forged = "mallory\n     99 2026-01-01T00:00:00 operator         subject.erase\x1b[2J"
    attack.node.audit.record(forged, "login.failed")
    shown = run_cli("audit", "show", home=attack.node.settings.home, check=True).stdout + \
        run_cli("audit", "show", home=attack.node.settings.home, check=True).stderr
    assert "\x1b" not in shown and "mallory\\n" in shown
    assert not any(line.lstrip().startswith("99 2026-01-01") for line in shown.splitlines())


def test_a_controlled_datasets_public_page_tells_nothing_about_its_slides(attack: Attack) -> None:
    """Counts per diagnosis, organ or species of a controlled dataset, compared before and after an
    erasure, would tell the erased person's; a non-reader sees the terms and a rounded size only."""
    me = operator()
    attack.node.governance.set_policy(me, "study", duo_codes=["DUO:0000007"])  # controlled now
    try:
        outsider = attack.client.get("/api/datasets/study", headers=attack.as_("ben")).json()
        anonymous = attack.client.get("/api/datasets/study").json()
        for seen in (outsider, anonymous):
            assert seen["facets"] == {} and seen["images_exact"] is False and seen["images"] % 10 == 0
        listed = {d["name"]: d for d in attack.client.get("/api/datasets").json()}
        assert listed["study"]["images_exact"] is False
        attack.node.governance.add_steward(me, "study", "ana")
        insider = attack.client.get("/api/datasets/study", headers=attack.as_("ana")).json()
        assert insider["images_exact"] is True and insider["images"] == 1 and insider["facets"]["vendor"]
    finally:
        attack.node.governance.set_policy(me, "study", duo_codes=["DUO:0000004"])


def test_lists_and_searches_of_controlled_data_are_audited(attack: Attack) -> None:
    me = operator()
    attack.node.governance.set_policy(me, "study", duo_codes=["DUO:0000007"])
    try:
        attack.node.governance.add_steward(me, "study", "ana")
        before = len(list(attack.node.audit.entries(dataset="study")))
        headers = attack.as_("ana")
        assert attack.client.get("/api/search", params={"text": "sb"}, headers=headers).json()["total"] == 1
        assert len(attack.client.get("/api/slides", headers=headers).json()) == 1
        attack.client.get(f"/api/slides/{attack.slide}/annotations/classes", headers=headers)
        attack.client.get(f"/api/slides/{attack.slide}/heatmaps", headers=headers)
        actions = [e["action"] for e in attack.node.audit.entries(dataset="study")][before:]
        assert {"catalog.search", "slides.list"} <= set(actions)
        assert any(e["action"] == "tiles.read" and e["detail"]["where"] == "heatmaps"
                   for e in attack.node.audit.entries(dataset="study"))
        search = next(e for e in attack.node.audit.entries(dataset="study") if e["action"] == "catalog.search")
        assert search["actor"] == "ana" and search["detail"]["query"] == {"text": "sb"}
    finally:
        attack.node.governance.set_policy(me, "study", duo_codes=["DUO:0000004"])


def test_tokens_and_accounts_over_the_api(attack: Attack) -> None:
    created = attack.client.post("/api/tokens", json={"label": "notebook", "expires_days": 30},
                                 headers=attack.as_("ben"))
    assert created.status_code == 201
    token, token_id = created.json()["token"], created.json()["id"]
    listed = attack.client.get("/api/tokens", headers={"Authorization": f"Bearer {token}"}).json()
    assert {t["label"] for t in listed} >= {"notebook"} and all("token" not in t for t in listed)
    assert attack.client.post("/api/tokens", json={"expires_days": 3650}, headers=attack.as_("ben")).status_code == 400
    assert attack.client.delete(f"/api/tokens/{token_id}", headers=attack.as_("ana")).status_code == 404  # not hers
    assert attack.client.delete(f"/api/tokens/{token_id}", headers=attack.as_("ben")).status_code == 200
    assert attack.client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert attack.client.post("/api/users/ben/disable", headers=attack.as_("ana")).status_code == 403
    attack.node.identities.add_user(operator(), "root", "administrator")
    root = {"Authorization": f"Bearer {attack.node.identities.create_token(operator(), 'root')[0]}"}
    assert attack.client.post("/api/users/ben/disable", headers=root).json()["disabled"] is True
    assert attack.client.get("/api/me", headers=attack.as_("ben")).status_code == 401
    assert attack.client.post("/api/users/ben/enable", headers=root).json()["disabled"] is False
    assert attack.client.get("/api/me", headers=attack.as_("ben")).status_code == 200


def test_session_cookies_are_secure_behind_an_https_proxy(attack: Attack, monkeypatch: pytest.MonkeyPatch) -> None:
    attack.node.identities.add_user(operator(), "cleo", "researcher", password="a long passphrase")
    body = {"name": "cleo", "password": "a long passphrase"}
    plain = attack.client.post("/api/session", json=body)
    assert "secure" not in plain.headers["set-cookie"].lower()
    monkeypatch.setenv("SLIDEBANK_TRUST_FORWARDED_PROTO", "1")
    proxied = attack.client.post("/api/session", json=body, headers={"X-Forwarded-Proto": "https"})
    assert all("secure" in c.lower() for c in proxied.headers.get_list("set-cookie"))
