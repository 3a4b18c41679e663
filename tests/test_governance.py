"""Governance takes effect on the very next request, in every worker process of a running server:
grants, revocations, policy changes, disabled accounts, revoked tokens, ended sessions, erasure.
Also what a server owes every request: HEAD, brief caching of controlled pixels, a log-in rate limit,
bounded IIIF renders, and caches that stay whole under the server's threads."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import json_lines, run_cli, running_server
from databases import open_node

ROLES = {"dac": "dac_member", "dac2": "dac_member", "bob": "researcher", "carl": "researcher",
         "steward": "data_steward", "root": "administrator"}
TRIES = 12  # requests in a row after a change: with two workers, both answer some of them


@dataclass
class Live:
    base: str
    home: Path
    restricted: str
    public: str
    tokens: dict[str, str]

    def get(self, path: str, who: str | None = None, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.get(f"{self.base}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, who: str, **kwargs: object) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", headers={"Authorization": f"Bearer {self.tokens[who]}"},
                          timeout=30, **kwargs)  # type: ignore[arg-type]

    def statuses(self, path: str, who: str | None) -> set[int]:
        return {self.get(path, who).status_code for _ in range(TRIES)}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, aperio_slide, generic_slide) -> Iterator[Live]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("governance") / "node"
    run_cli("init", home=home, check=True)
    for name, role in ROLES.items():
        run_cli("users", "add", name, "--role", role, home=home, check=True)
    run_cli("datasets", "create", "restricted", "--policy", "apply to the DAC", "--committee", "dac",
            "--committee", "dac2", "--steward", "steward", home=home, check=True)
    run_cli("datasets", "create", "public", "--policy", "open", "--duo", "DUO:0000004", home=home, check=True)
    [restricted] = json_lines(run_cli("ingest", str(aperio_slide.path), "--dataset", "restricted", "--json",
                                      "--no-qc", home=home, check=True).stdout)
    [public] = json_lines(run_cli("ingest", str(generic_slide.path), "--dataset", "public", "--json", "--no-qc",
                                  home=home, check=True).stdout)
    tokens = {name: run_cli("tokens", "create", name, home=home, check=True).stdout.strip().splitlines()[-1]
              for name in ROLES}
    with running_server(home, "--workers", "2", "--no-jobs") as base:
        yield Live(base, home, restricted["slide_id"], public["slide_id"], tokens)


def test_a_grant_opens_and_a_revocation_closes_access_on_the_next_request(live: Live) -> None:
    slide, tile = f"/api/slides/{live.restricted}", f"/slides/{live.restricted}_files/12/0_0.jpeg"
    assert live.statuses(slide, "bob") == {404}
    request = live.post("/api/access-requests", "bob", json={"dataset": "restricted", "purpose": "QC study"})
    until = (date.today() + timedelta(days=30)).isoformat()
    approved = live.post(f"/api/access-requests/{request.json()['id']}/approve", "dac", json={"expires": until})
    assert approved.status_code == 200
    assert live.statuses(slide, "bob") == {200} and live.statuses(tile, "bob") == {200}  # no waiting
    assert live.post(f"/api/grants/{approved.json()['grant']}/revoke", "dac").status_code == 200
    assert live.statuses(slide, "bob") == {404} and live.statuses(tile, "bob") == {404}


def test_a_policy_change_takes_effect_on_the_next_request(live: Live) -> None:
    slide = f"/api/slides/{live.restricted}"
    assert live.statuses(slide, None) == {404}
    run_cli("datasets", "policy", "restricted", "--duo", "DUO:0000004", home=live.home, check=True)
    assert live.statuses(slide, None) == {200}
    run_cli("datasets", "policy", "restricted", "--duo", "DUO:0000007", home=live.home, check=True)
    assert live.statuses(slide, None) == {404}


def test_a_disabled_account_and_a_revoked_token_stop_at_once(live: Live) -> None:
    assert live.statuses("/api/me", "carl") == {200}
    run_cli("users", "disable", "carl", home=live.home, check=True)
    assert live.statuses("/api/me", "carl") == {401}
    run_cli("users", "enable", "carl", home=live.home, check=True)
    assert live.statuses("/api/me", "carl") == {200}
    spare = run_cli("tokens", "create", "carl", "--label", "spare", home=live.home, check=True).stdout.strip()
    listed = json_lines(run_cli("tokens", "list", "--user", "carl", "--json", home=live.home, check=True).stdout)[0]
    assert {t["label"] for t in listed} == {"cli", "spare"} and all("token" not in t for t in listed)
    spare_id = next(t["id"] for t in listed if t["label"] == "spare")
    assert {httpx.get(f"{live.base}/api/me", headers={"Authorization": f"Bearer {spare}"}).status_code
            for _ in range(TRIES)} == {200}
    run_cli("tokens", "revoke", spare_id, home=live.home, check=True)
    assert {httpx.get(f"{live.base}/api/me", headers={"Authorization": f"Bearer {spare}"}).status_code
            for _ in range(TRIES)} == {401}


def test_tokens_last_at_most_a_year() -> None:
    from slidebank.access.identity import MAX_TOKEN_DAYS

    assert MAX_TOKEN_DAYS == 365


def test_log_out_ends_the_session_everywhere_and_sessions_can_be_ended_for_a_user(live: Live) -> None:
    run_cli("users", "add", "dora", "--role", "researcher", "--password-stdin", home=live.home, check=True,
            stdin="a long passphrase\n")
    cookies = []
    for _ in range(3):
        with httpx.Client(base_url=live.base) as browser:
            assert browser.post("/api/session", json={"name": "dora", "password": "a long passphrase"}).status_code == 200
            cookies.append((browser.cookies["slidebank_session"], browser.cookies["slidebank_csrf"]))

    def me(cookie: str) -> set[int]:
        return {httpx.get(f"{live.base}/api/me", cookies={"slidebank_session": cookie}).status_code
                for _ in range(TRIES)}

    assert me(cookies[0][0]) == {200}
    ended = httpx.delete(f"{live.base}/api/session", cookies={"slidebank_session": cookies[0][0]},
                         headers={"X-CSRF-Token": cookies[0][1]})
    assert ended.status_code == 200
    assert me(cookies[0][0]) == {401} and me(cookies[1][0]) == {200}  # the old cookie is dead, others live
    run_cli("users", "logout", "dora", home=live.home, check=True)  # log out everywhere (the operator)
    assert me(cookies[1][0]) == {401} and me(cookies[2][0]) == {401}
    with httpx.Client(base_url=live.base) as browser:
        browser.post("/api/session", json={"name": "dora", "password": "a long passphrase"})
        cookie = browser.cookies["slidebank_session"]
    assert httpx.delete(f"{live.base}/api/users/dora/sessions",
                        headers={"Authorization": f"Bearer {live.tokens['bob']}"}).status_code == 403
    assert httpx.delete(f"{live.base}/api/users/dora/sessions",
                        headers={"Authorization": f"Bearer {live.tokens['root']}"}).status_code == 200
    assert me(cookie) == {401}


def test_log_in_is_rate_limited_per_account_and_per_address(live: Live) -> None:
    run_cli("users", "add", "eve", "--role", "researcher", "--password-stdin", home=live.home, check=True,
            stdin="the right one\n")
    attempt = {"name": "eve", "password": "wrong"}
    answers = [httpx.post(f"{live.base}/api/session", json=attempt).status_code for _ in range(5)]
    assert answers == [401] * 5
    locked = httpx.post(f"{live.base}/api/session", json={"name": "eve", "password": "the right one"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0  # even the right password waits
    for index in range(15):  # guessing other names from the same address
        httpx.post(f"{live.base}/api/session", json={"name": f"nobody-{index}", "password": "x"})
    refused = httpx.post(f"{live.base}/api/session", json={"name": "dac", "password": "x"})
    assert refused.status_code == 429  # the address is over its limit too
    entries = json_lines(run_cli("audit", "show", "--json", home=live.home, check=True).stdout)
    assert not any(e["actor"].startswith("nobody-") for e in entries)  # unknown names write no audit rows


def test_head_answers_wherever_get_does(live: Live) -> None:
    paths = [
        "/healthz", "/api/datasets", f"/api/slides/{live.public}", f"/api/slides/{live.public}/thumbnail.jpg",
        f"/slides/{live.public}.dzi", f"/slides/{live.public}_files/0/0_0.jpeg",
        f"/slides/{live.public}_files/11/0_0.jpeg", f"/iiif/3/{live.public}/info.json",
        f"/iiif/3/{live.public}/full/256,/0/default.jpg", "/", f"/view/{live.public}",
        f"/api/slides/{live.restricted}",
    ]
    for path in paths:
        for _ in range(3):  # both workers, fast path included
            got, head = live.get(path), httpx.head(f"{live.base}{path}", timeout=30)
            assert head.status_code == got.status_code, path
            assert head.content == b"", path
            assert head.headers.get("content-length") == got.headers.get("content-length"), path
            assert head.headers.get("etag") == got.headers.get("etag"), path


def test_controlled_pixels_are_cached_briefly_and_revalidated_through_the_gatekeeper(live: Live) -> None:
    tile = f"/slides/{live.restricted}_files/12/0_0.jpeg"
    answer = live.get(tile, "steward")
    assert answer.headers["cache-control"] == "private, max-age=60, must-revalidate"
    assert live.get(f"/slides/{live.public}_files/0/0_0.jpeg").headers["cache-control"] == "public, max-age=3600"
    etag = {"If-None-Match": answer.headers["etag"]}
    assert httpx.get(f"{live.base}{tile}", headers={**etag, "Authorization": f"Bearer {live.tokens['steward']}"}
                     ).status_code == 304
    assert httpx.get(f"{live.base}{tile}", headers={**etag, "Authorization": f"Bearer {live.tokens['bob']}"}
                     ).status_code == 404  # a revalidation by someone without access is refused, not 304


def test_iiif_renders_are_bounded_before_they_start(live: Live) -> None:
    server = _server_processes(live.base)
    before = sum(p.memory_info().rss for p in server)
    for size in ("8000,1", "1,8000", "!8000,8000", "max"):
        answer = live.get(f"/iiif/3/{live.public}/full/{size}/0/default.jpg")
        assert answer.status_code in (200, 400), (size, answer.status_code)
    grown = sum(p.memory_info().rss for p in server) - before
    assert grown < 300 * 2**20, f"rendering tiny or huge sizes grew the server by {grown / 2**20:.0f} MiB"
    for bad in ("full/max/NaN/default.jpg", "full/max/inf/default.jpg", "full/4096,4096/45/default.jpg"):
        assert live.get(f"/iiif/3/{live.public}/{bad}").status_code == 400, bad
    assert live.get(f"/api/slides/{live.public}/annotations/density",
                    params={"bbox": "-inf,0,10,10"}).status_code == 400


def test_erasure_reaches_every_worker_and_releases_the_files(live: Live, tmp_path: Path, generic_slide) -> None:  # noqa: ANN001
    copy = tmp_path / "to-erase.tiff"
    shutil.copy(generic_slide.path, copy)
    with open(copy, "ab") as handle:
        handle.write(b"\0" * 32)  # other bytes: not a duplicate
    sidecar = tmp_path / "meta.csv"
    sidecar.write_text(f"file,subject,dataset\n{copy.name},PATIENT-ERASE,public\n")
    [slide] = json_lines(run_cli("ingest", str(copy), "--metadata", str(sidecar), "--json", "--no-qc",
                                 home=live.home, check=True).stdout)
    tiles = [f"/slides/{slide['slide_id']}_files/{level}/0_0.jpeg" for level in (8, 9, 10, 11)]
    for _ in range(4):  # every worker opens the slide
        assert {live.get(t).status_code for t in tiles} == {200}
    subject = live.get(f"/api/slides/{slide['slide_id']}").json()["subject"]
    erased = httpx.post(f"{live.base}/api/erasures", json={"subject": subject},
                        headers={"Authorization": f"Bearer {live.tokens['root']}"})
    assert erased.status_code == 200
    assert live.statuses(tiles[-1], None) == {404}
    objects = str(live.home / "store" / "objects")
    deadline = time.monotonic() + 5
    while True:  # every worker lets go within a second or two, asked or not
        held = [link for process in _server_processes(live.base) for link in _open_files(process)
                if link.startswith(objects) and "(deleted)" in link]
        if not held or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert held == []


def test_the_gatekeeper_caches_stay_whole_under_threads(tmp_path: Path) -> None:
    """Many threads resolve principals and read slides while grants come and go (each a new version)."""
    from slidebank.access.principal import operator
    from slidebank.api.security import Gatekeeper

    node = open_node(tmp_path / "node")
    try:
        node.identities.add_user(operator(), "t", "researcher")
        token, _ = node.identities.create_token(operator(), "t")
        node.governance.create_dataset(operator(), "d", "x")
        gatekeeper = Gatekeeper(node.identities, node.catalog, node.audit, node.governance_watch)
        errors: list[BaseException] = []
        stop = threading.Event()

        def resolve() -> None:
            try:
                while not stop.is_set():
                    assert gatekeeper.principal_from_header(f"Bearer {token}").name == "t"
                    assert gatekeeper.principal_from_header(None).name == "anonymous"
            except BaseException as error:  # noqa: BLE001 - collected for the assertion below
                errors.append(error)

        def record() -> None:
            try:
                for index in range(300):
                    node.audit.record_tile_read("t", "d", f"s{index % 7}", "deepzoom level 1", None)
            except BaseException as error:  # noqa: BLE001
                errors.append(error)

        threads = [threading.Thread(target=resolve) for _ in range(6)] + [threading.Thread(target=record) for _ in range(4)]
        for thread in threads:
            thread.start()
        for index in range(20):  # governance changes while they run
            node.governance.add_steward(operator(), "d", "t") if index == 0 else node.identities.end_sessions(operator(), "t")
        for thread in threads[6:]:
            thread.join()
        stop.set()
        for thread in threads[:6]:
            thread.join()
        assert errors == []
        reads = [e for e in node.audit.entries() if e["action"] == "tiles.read"]
        assert len(reads) == 7  # one entry per slide and place within the window, however many threads
    finally:
        node.close()


def _server_processes(base: str) -> list[psutil.Process]:
    port = int(base.rsplit(":", 1)[1])
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = process.info["cmdline"] or []
            if "serve" in cmdline and str(port) in cmdline:
                found.append(process)
                found.extend(process.children(recursive=True))
        except psutil.Error:
            continue
    return found


def _open_files(process: psutil.Process) -> list[str]:
    try:
        folder = f"/proc/{process.pid}/fd"
        return [os.readlink(os.path.join(folder, fd)) for fd in os.listdir(folder)]
    except OSError:
        return []
