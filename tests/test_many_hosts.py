"""Many processes, many hosts: one site made of servers and Dask workers sharing only PostgreSQL,
an S3 bucket (Ceph's radosgw) and the node's key files.

Each server has a local folder of its own; the Dask worker runs in a mount namespace where the
node's folders are empty, so it can only read pixels through the bucket and the catalog.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import boto3
import httpx
import pytest

from conftest import SLIDEBANK_BIN, json_lines, run_cli, running_server
from postgres import create_database, free_port
from radosgw import S3Server

TILE = "_files/11/1_1.jpeg"


@dataclass(frozen=True)
class SharedSite:
    homes: tuple[Path, Path]
    keys: Path
    env: dict[str, str]  # what every host of the site is configured with
    bucket: str
    slide_id: str
    subject: str
    tokens: dict[str, str]
    blobs: frozenset[str]  # the slide's stored files and thumbnail


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, postgres_server: str, s3_server: S3Server,
         generic_slide) -> SharedSite:  # noqa: ANN001
    root = tmp_path_factory.mktemp("site")
    bucket = f"site-{uuid.uuid4().hex[:10]}"
    env = {**s3_server.environment(), "SLIDEBANK_DATABASE_URL": create_database(postgres_server),
           "SLIDEBANK_STORE_URL": f"s3://{bucket}/slides", "SLIDEBANK_KEYS_DIR": str(root / "keys")}
    homes = (root / "host-a", root / "host-b")
    first = homes[0]
    homes[1].mkdir(parents=True)
    run_cli("init", home=first, check=True, env=env)
    for name, role in (("alice", "researcher"), ("dac", "dac_member"), ("steward", "data_steward")):
        run_cli("users", "add", name, "--role", role, home=first, check=True, env=env)
    run_cli("datasets", "create", "study", "--policy", "Cancer research; apply to the DAC", "--duo", "DUO:0000007",
            "--committee", "dac", "--steward", "steward", home=first, check=True, env=env)
    source = root / "in" / "S-1.tiff"
    source.parent.mkdir()
    shutil.copy(generic_slide.path, source)
    (root / "in" / "meta.csv").write_text(f"file,subject,species,stain\n{source.name},PATIENT-1,human,H&E\n")
    [line] = json_lines(run_cli("ingest", str(source), "--dataset", "study", "--metadata", str(root / "in" / "meta.csv"),
                                "--no-qc", "--json", home=first, check=True, env=env).stdout)
    shown = json_lines(run_cli("slides", "show", line["slide_id"], "--json", home=first, check=True, env=env).stdout)[0]
    tokens = {name: run_cli("tokens", "create", name, home=first, check=True, env=env).stdout.strip().splitlines()[-1]
              for name in ("alice", "dac", "steward")}
    assert not any(p.is_file() and len(p.name) == 64 for p in first.rglob("*")), "no blob in the host's folder"
    blobs = frozenset({f["sha256"] for f in shown["files"]} | {shown["thumbnail_sha256"]})
    return SharedSite(homes, root / "keys", env, bucket, line["slide_id"], shown["subject"], tokens, blobs)


def s3_objects(site: SharedSite) -> list[str]:
    env = site.env
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    return [o["Key"] for o in client.list_objects_v2(Bucket=site.bucket).get("Contents", [])]


def stored_digests(site: SharedSite) -> set[str]:
    return {key.rsplit("/", 1)[-1] for key in s3_objects(site)}


@pytest.mark.postgres
def test_ingest_and_a_job_run_on_a_dask_worker_that_has_no_node_folder(site: SharedSite, tmp_path: Path,
                                                                       generic_slide) -> None:  # noqa: ANN001
    port = free_port()
    scheduler = subprocess.Popen([str(SLIDEBANK_BIN.parent / "dask"), "scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worker_keys = tmp_path / "mounted-secret"  # the key files, as a secret mounted on the worker's host
    shutil.copytree(site.keys, worker_keys)
    worker_env = {"PATH": os.environ["PATH"], "SLIDEBANK_HOME": str(tmp_path / "scratch"),
                  "DASK_DISTRIBUTED__WORKER__DAEMON": "False",  # a task starts the process its slide is converted in
                  "SLIDEBANK_KEYS_DIR": str(worker_keys), **{k: v for k, v in site.env.items()
                                                             if k != "SLIDEBANK_KEYS_DIR"}}
    worker = [str(SLIDEBANK_BIN.parent / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1",
              "--no-dashboard", "--name", "far-host"]
    hidden = [*site.homes, site.keys]
    if os.geteuid() == 0 and shutil.which("unshare"):  # the node's folders are empty in the worker's view
        mounts = " && ".join(f"mount -t tmpfs none {folder}" for folder in hidden)
        worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{mounts} && exec {' '.join(worker)}"]
    far = subprocess.Popen(worker, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        time.sleep(1)
        assert far.poll() is None, far.stderr.read() if far.stderr else ""
        incoming = tmp_path / "incoming"  # a shared mount of the scanners' folder, seen at the same path
        incoming.mkdir()
        for name in ("S-2", "S-3"):
            with open(incoming / f"{name}.tiff", "wb") as copy:  # other bytes each, so not duplicates
                copy.write(generic_slide.path.read_bytes() + name.encode())
        (incoming / "S-4.tiff").write_bytes(generic_slide.path.read_bytes()[:5000])  # truncated
        ingested = run_cli("ingest", str(incoming), "--dataset", "study", "--scheduler", f"tcp://127.0.0.1:{port}",
                           "--no-qc", "--json", home=site.homes[1], env=site.env, timeout=300)
        outcomes = {Path(o["path"]).name: o for o in json_lines(ingested.stdout)}
        assert {name: o["status"] for name, o in outcomes.items()} == \
            {"S-2.tiff": "ingested", "S-3.tiff": "ingested", "S-4.tiff": "rejected"}, ingested.stderr
        assert (tmp_path / "scratch").is_dir()  # made by the worker's node: the slides were prepared there
        with running_server(site.homes[0], env=site.env) as base:  # served by the other host
            for name in ("S-2.tiff", "S-3.tiff"):
                tile = httpx.get(f"{base}/slides/{outcomes[name]['slide_id']}{TILE}",
                                 headers={"Authorization": f"Bearer {site.tokens['steward']}"})
                assert tile.status_code == 200 and tile.content[:2] == b"\xff\xd8"
        ran = run_cli("run", "tissue", "--slide", site.slide_id, "--wait", "--scheduler", f"tcp://127.0.0.1:{port}",
                      "--json", home=site.homes[1], env=site.env, timeout=300)
        assert ran.returncode == 0, ran.stderr
        [job] = json_lines(ran.stdout)
        assert job["state"] == "done"
        shown = json_lines(run_cli("jobs", "show", job["id"], "--json", home=site.homes[0], check=True,
                                   env=site.env).stdout)[0]
        [task] = shown["tasks"]
        assert task["state"] == "done" and task["summary"]["tiles_read"] > 0  # pixels read from the bucket
    finally:
        for process in (far, scheduler):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
    for folder in hidden:  # and it left nothing in them
        assert not any(p.name.startswith("slidebank-worker") for p in folder.iterdir())


@pytest.mark.postgres
def test_two_servers_with_their_own_folders_behave_as_one_site(site: SharedSite) -> None:
    with running_server(site.homes[0], env=site.env) as a, running_server(site.homes[1], env=site.env) as b:
        def call(base: str, who: str, method: str, path: str, **options: object) -> httpx.Response:
            return httpx.request(method, f"{base}{path}", headers={"Authorization": f"Bearer {site.tokens[who]}"},
                                 timeout=60, **options)  # type: ignore[arg-type]

        slide, tile = f"/api/slides/{site.slide_id}", f"/slides/{site.slide_id}{TILE}"
        assert site.blobs <= stored_digests(site)
        assert call(b, "alice", "GET", tile).status_code == 404  # controlled dataset, no grant yet
        assert call(b, "steward", "GET", tile).status_code == 200  # ingested through host A, served by B
        filed = call(b, "alice", "POST", "/api/access-requests", json={"dataset": "study", "purpose": "Train"})
        until = (date.today() + timedelta(days=30)).isoformat()
        approved = call(a, "dac", "POST", f"/api/access-requests/{filed.json()['id']}/approve", json={"expires": until})
        assert approved.status_code == 200
        from_b = call(b, "alice", "GET", tile)  # the grant made on A holds on B at the next request
        assert from_b.status_code == 200 and from_b.content == call(a, "alice", "GET", tile).content

        def annotate(base: str, count: int) -> None:  # audited writes from both hosts at once
            for index in range(count):
                drawn = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [index, index]},
                         "properties": {}}
                assert call(base, "alice", "POST", f"{slide}/annotations", json=drawn).status_code == 201

        writers = [threading.Thread(target=annotate, args=(base, 8)) for base in (a, b, a, b)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        assert len(call(a, "alice", "GET", f"{slide}/annotations").json()["features"]) == 32

        assert call(b, "dac", "POST", f"/api/grants/{approved.json()['grant']}/revoke").status_code == 200
        assert call(a, "alice", "GET", tile).status_code == 404  # revoked on B: refused on A at once
        assert call(a, "alice", "GET", slide).status_code == 404

        erased = call(b, "steward", "POST", "/api/erasures", json={"subject": site.subject})
        assert erased.status_code == 200 and erased.json()["images"] == 1
        assert call(a, "steward", "GET", slide).status_code == 404
        assert call(a, "steward", "GET", tile).status_code == 404  # A had it open and cached: gone too
    shared = set()  # blobs the erased slide shared with slides that stay (the Dask test ingests copies)
    for listed in json_lines(run_cli("slides", "list", "--json", home=site.homes[0], check=True, env=site.env).stdout)[0]:
        shown = json_lines(run_cli("slides", "show", listed["slide_id"], "--json", home=site.homes[0], check=True,
                                   env=site.env).stdout)[0]
        shared |= site.blobs & ({f["sha256"] for f in shown["files"]} | {shown["thumbnail_sha256"]})
    assert site.blobs & stored_digests(site) == shared  # the erased slide's own objects are gone
    assert run_cli("audit", "verify", home=site.homes[1], env=site.env).returncode == 0  # one chain, not forked
    actions = [e["action"] for e in json_lines(run_cli("audit", "show", "--json", home=site.homes[0], check=True,
                                                       env=site.env).stdout)]
    assert {"access.approve", "access.revoke", "subject.erase"} <= set(actions), actions
    assert actions.count("annotations.create") == 32  # the concurrent writes of both hosts, in the one chain

