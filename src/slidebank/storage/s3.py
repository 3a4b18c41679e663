"""Blobs in an S3-compatible object store: `SLIDEBANK_STORE_URL=s3://bucket/prefix`.

Same contract as the local store (content addresses, encrypted payloads, publish-then-register,
garbage collection of what a crash left) over S3's own guarantees: an object, single-part or
multipart, becomes visible whole when its upload completes, so publishing needs no rename. Reads
are ranged GETs of only the encrypted segments a tile or frame spans. The endpoint, region and
credentials come from boto3's own environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, or a profile), so every process and worker host
configures it the way it configures any S3 client. Staging stays on local disk: converters
write files, and only finished payloads travel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from slidebank.storage.blobstore import (
    BlobFile,
    BlobRef,
    Referenced,
    check_digest,
    clear_stale_staging,
    private_staging,
    sha256_file,
    unreferenced,
)
from slidebank.storage.crypt import EncryptedFile, EncryptedFileError, NodeKeys, encrypt_file

MIB = 1024 * 1024
# Parts of 16 MiB (S3 allows 5 MiB to 5 GiB, at most 10,000 parts: 160 GB per blob) sent 4 at a time.
PART_BYTES = int(float(os.environ.get("SLIDEBANK_S3_PART_MB", "16")) * MIB)
DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes


class S3StoreError(Exception):
    """The object store refused or failed a request, or its URL is not usable."""


def s3_client() -> Any:
    """A client with bounded connect and read timeouts and standard retries (nothing may hang)."""
    config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"},
                    max_pool_connections=64, s3={"addressing_style": "path"})
    return boto3.client("s3", config=config)


class S3Object:
    """One object read by ranged GETs; its size from one HEAD at open."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self.name = f"s3://{bucket}/{key}"
        try:
            self.size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as error:
            if _status(error) == 404:
                raise FileNotFoundError(f"{self.name} is missing from the object store") from error
            raise S3StoreError(f"cannot open {self.name}: {error}") from error

    def pread(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        response = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={offset}-{end - 1}")
        with response["Body"] as body:
            return bytes(body.read())

    def close(self) -> None:
        pass  # the client's connection pool is shared by every open object


class S3BlobStore:
    """Blobs under `s3://bucket/prefix/objects/ab/cd/<sha256>`, staging on local disk."""

    def __init__(self, url: str, staging: Path, client: Any | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise S3StoreError(f"not an s3://bucket/prefix URL: {url!r}")
        self.url, self.bucket = url, parts.netloc
        self.prefix = "/".join(p for p in parts.path.split("/") if p)
        self.staging = staging
        self.staging.mkdir(parents=True, exist_ok=True)
        self.client = client or s3_client()
        self._transfer = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                                        max_concurrency=4)
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if _status(error) != 404:
                raise S3StoreError(f"cannot reach bucket {self.bucket!r}: {error}") from error
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as create_error:  # another process created it first, or no right to
                if _code(create_error) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise S3StoreError(f"cannot create bucket {self.bucket!r}: {create_error}") from create_error

    def key(self, sha256: str) -> str:
        check_digest(sha256)
        return "/".join(filter(None, (self.prefix, "objects", sha256[:2], sha256[2:4], sha256)))

    def staging_dir(self) -> AbstractContextManager[Path]:
        return private_staging(self.staging)

    def publish(self, path: Path, keys: NodeKeys | None = None,
                intend: Callable[[str], None] | None = None) -> BlobRef:
        """Upload a finished staging file under its digest (multipart above one part), encrypted.

        As in the local store, a blob already stored keeps its payload and the ref's header is None,
        and `intend` is told the digest before the upload starts.
        """
        if keys is None:
            raise S3StoreError("blobs in an object store are always encrypted: publish needs the node keys")
        ref = sha256_file(path)
        if self.exists(ref.sha256):
            path.unlink()
            return ref
        if intend is not None:
            intend(ref.sha256)
        encrypted = path.with_name(path.name + ".c4gh")
        try:
            header = encrypt_file(path, encrypted, keys)
            path.unlink()
            self.client.upload_file(str(encrypted), self.bucket, self.key(ref.sha256), Config=self._transfer)
        except ClientError as error:
            raise S3StoreError(f"cannot upload {ref.sha256[:12]} to {self.url}: {error}") from error
        finally:
            encrypted.unlink(missing_ok=True)
        return BlobRef(ref.sha256, ref.size, header)

    def open_blob(self, sha256: str, key_header: bytes | None, keys: NodeKeys) -> BlobFile:
        if key_header is None:
            raise EncryptedFileError(f"blob {sha256[:12]} has no key header: object-store blobs are always encrypted")
        return EncryptedFile(S3Object(self.client, self.bucket, self.key(sha256)), key_header, keys)

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as error:
            if _status(error) == 404:
                return False
            raise S3StoreError(f"cannot look up {sha256[:12]}: {error}") from error
        return True

    def delete(self, sha256: str) -> None:
        self.delete_many([sha256])

    def delete_many(self, digests: Iterable[str]) -> None:
        """Delete objects, a thousand per request; deleting an absent object is not an error."""
        keys = [self.key(digest) for digest in digests]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise S3StoreError(f"could not delete {len(answer['Errors'])} objects, e.g. {first['Key']}: "
                                   f"{first.get('Code')} {first.get('Message')}")

    def _objects(self) -> Iterator[tuple[str, datetime]]:
        paginator = self.client.get_paginator("list_objects_v2")
        root = "/".join(filter(None, (self.prefix, "objects"))) + "/"
        for page in paginator.paginate(Bucket=self.bucket, Prefix=root):
            for entry in page.get("Contents", []):
                name = entry["Key"].rsplit("/", 1)[-1]
                if len(name) == 64:
                    yield name, entry["LastModified"]

    def iter_blobs(self) -> Iterator[str]:
        for name, _ in self._objects():
            yield name

    def collect_garbage(self, referenced: Referenced, min_age_s: float = 0) -> list[str]:
        """Delete unreferenced objects, multipart uploads a crashed process left open, and stale
        local staging folders, each older than `min_age_s`."""
        now = datetime.now(UTC)
        old = (name for name, modified in self._objects() if (now - modified).total_seconds() >= min_age_s)
        doomed: list[str] = []
        for digests in unreferenced(old, referenced):
            self.delete_many(digests)
            doomed += digests
        self.clear_leftovers(min_age_s)
        return doomed

    def clear_leftovers(self, min_age_s: float = 0) -> None:
        """Multipart uploads a crashed process left open, and stale local staging folders (no
        object is touched; the bucket is not listed, only its uploads in progress)."""
        now = datetime.now(UTC)
        root = "/".join(filter(None, (self.prefix, "objects"))) + "/"
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=root):
            for upload in page.get("Uploads", []):
                if (now - upload["Initiated"]).total_seconds() >= min_age_s:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
        clear_stale_staging(self.staging, min_age_s)


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
