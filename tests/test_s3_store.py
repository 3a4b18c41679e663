"""The S3 blob store against a real S3 server (Ceph's radosgw, started by the tests).

Multipart upload, ranged reads of only the segments a read spans, erasure that deletes objects,
garbage collection of what a crashed ingest left, and a whole node (ingest, tiles, export, erasure)
whose blobs live in the bucket and nowhere on disk.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import json_lines, run_cli, running_server
from slidebank.storage.crypt import CIPHER_SEGMENT, SEGMENT, generate_node_keys
from slidebank.storage.s3 import PART_BYTES, S3BlobStore, s3_client


def bucket_url() -> str:
    return f"s3://t-{uuid.uuid4().hex[:12]}/site-a"


def record_ranges(store: S3BlobStore) -> list[str]:
    """The Range header of every GET the store's client sends from now on."""
    ranges: list[str] = []

    def seen(request: Any, **_: Any) -> None:
        if request.method == "GET" and "Range" in request.headers:
            ranges.append(request.headers["Range"].decode() if isinstance(request.headers["Range"], bytes)
                          else request.headers["Range"])

    store.client.meta.events.register("before-send.s3.GetObject", seen)
    return ranges


def test_publish_is_multipart_reads_are_ranged_and_delete_removes_the_object(
    tmp_path: Path, s3_environment: dict[str, str]
) -> None:
    keys = generate_node_keys(tmp_path / "keys")
    store = S3BlobStore(bucket_url(), tmp_path / "staging")
    plaintext = os.urandom(2 * PART_BYTES + 12345)  # three parts
    with store.staging_dir() as staging:
        (staging / "blob").write_bytes(plaintext)
        ref = store.publish(staging / "blob", keys)
    assert ref.size == len(plaintext) and ref.key_header
    head = store.client.head_object(Bucket=store.bucket, Key=store.key(ref.sha256))
    assert head["ETag"].strip('"').endswith("-3"), "uploaded in three parts"
    assert plaintext[:4096] not in store.client.get_object(Bucket=store.bucket, Key=store.key(ref.sha256))["Body"].read()
    assert not any((tmp_path / "staging").iterdir()), "nothing staged is left behind"

    blob = store.open_blob(ref.sha256, ref.key_header, keys)
    ranges = record_ranges(store)
    offset = 5 * SEGMENT + 100
    assert blob.pread(offset, 1000) == plaintext[offset : offset + 1000]
    assert ranges == [f"bytes={5 * CIPHER_SEGMENT}-{6 * CIPHER_SEGMENT - 1}"], "one segment, one request"
    ranges.clear()
    assert blob.pread(offset, 3 * SEGMENT) == plaintext[offset : offset + 3 * SEGMENT]
    assert ranges == [f"bytes={6 * CIPHER_SEGMENT}-{9 * CIPHER_SEGMENT - 1}"], "only the segments not cached, in one GET"
    with blob.stream() as stream:  # what wsidicom and exports read through
        stream.seek(len(plaintext) - 10)
        assert stream.read() == plaintext[-10:]
    blob.close()

    with store.staging_dir() as staging:  # the same content again: stored once, its header stays the first one
        (staging / "again").write_bytes(plaintext)
        assert store.publish(staging / "again", keys).key_header is None
    assert list(store.iter_blobs()) == [ref.sha256]

    store.delete(ref.sha256)
    assert not store.exists(ref.sha256)
    with pytest.raises(FileNotFoundError):
        store.open_blob(ref.sha256, ref.key_header, keys)


def test_garbage_collection_removes_unreferenced_objects_and_abandoned_uploads(
    tmp_path: Path, s3_environment: dict[str, str]
) -> None:
    keys = generate_node_keys(tmp_path / "keys")
    store = S3BlobStore(bucket_url(), tmp_path / "staging")
    digests = []
    for index in range(3):
        with store.staging_dir() as staging:
            (staging / "b").write_bytes(os.urandom(1000 + index))
            digests.append(store.publish(staging / "b", keys).sha256)
    abandoned = store.client.create_multipart_upload(Bucket=store.bucket, Key=store.key("0" * 64))
    store.client.upload_part(Bucket=store.bucket, Key=store.key("0" * 64), UploadId=abandoned["UploadId"],
                             PartNumber=1, Body=b"x" * 100)
    (tmp_path / "staging" / "123-crashed").mkdir()

    def referenced(chunk: list[str]) -> set[str]:  # what the catalog answers, a chunk at a time
        return {digests[0]} & set(chunk)

    assert store.collect_garbage(referenced, min_age_s=3600) == []  # too young to be a crash's leftovers
    removed = store.collect_garbage(referenced)
    assert sorted(removed) == sorted(digests[1:])
    assert list(store.iter_blobs()) == [digests[0]]
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert not (tmp_path / "staging" / "123-crashed").exists()


def test_a_node_on_s3_ingests_serves_exports_and_erases_with_nothing_on_disk(
    tmp_path: Path, s3_environment: dict[str, str], generic_slide  # noqa: ANN001
) -> None:
    url = bucket_url()
    env = {**s3_environment, "SLIDEBANK_STORE_URL": url}
    home, disk_home = tmp_path / "node", tmp_path / "disk"
    for where, extra in ((home, env), (disk_home, {})):
        run_cli("init", home=where, check=True, env=extra)
        run_cli("datasets", "create", "study", "--policy", "open", "--duo", "DUO:0000004", home=where, check=True,
                env=extra)
    source = tmp_path / "in" / "P1.tiff"
    source.parent.mkdir()
    shutil.copy(generic_slide.path, source)
    sidecar = tmp_path / "in" / "meta.csv"
    sidecar.write_text(f"file,subject,species,stain\n{source.name},SUBJ-1,human,H&E\n")
    ingested = {}
    for where, extra in ((home, env), (disk_home, {})):
        [line] = json_lines(run_cli("ingest", str(source), "--dataset", "study", "--metadata", str(sidecar), "--json",
                                    home=where, check=True, env=extra).stdout)
        ingested[where] = line["slide_id"]
    assert not (home / "store").exists() or not any((home / "store").rglob("*.*")), "no blob on local disk"
    slide = json_lines(run_cli("slides", "show", ingested[home], "--json", home=home, check=True, env=env).stdout)[0]
    client = s3_client()
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    listed = {o["Key"].rsplit("/", 1)[-1] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert {f["sha256"] for f in slide["files"]} <= listed

    with running_server(home, env=env) as s3_base, running_server(disk_home) as disk_base:
        for path in ("_files/11/1_1.jpeg", "_files/9/0_0.jpeg"):  # tiles decoded from the bucket's bytes
            from_s3 = httpx.get(f"{s3_base}/slides/{ingested[home]}{path}")
            from_disk = httpx.get(f"{disk_base}/slides/{ingested[disk_home]}{path}")
            assert from_s3.status_code == from_disk.status_code == 200
            assert from_s3.content == from_disk.content
    run_cli("export", ingested[home], "--to", str(tmp_path / "out"), home=home, check=True, env=env)
    assert sorted(p.stat().st_size for p in (tmp_path / "out").rglob("*.dcm")) == \
        sorted(f["size"] for f in slide["files"] if f["role"] != "thumbnail")

    report = json_lines(run_cli("erase", "--subject", slide["subject"], "--json", home=home, check=True,
                                env=env).stdout)[0]
    assert report["blobs_deleted"] == len(slide["files"])
    assert client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []) == []
