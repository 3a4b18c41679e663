"""Where slide bytes live: a content-addressed blob store on local disk or in an S3 bucket."""

from __future__ import annotations

from pathlib import Path

from slidebank.storage.blobstore import BlobRef, BlobStore, LocalBlobStore, sha256_file

__all__ = ["BlobRef", "BlobStore", "LocalBlobStore", "open_blob_store", "sha256_file"]


def open_blob_store(url: str | None, home: Path) -> BlobStore:
    """The store a node's settings name: `s3://bucket/prefix`, a folder, or (None) `home/store`.

    An object store still stages on local disk, under `home/staging`.
    """
    if url and url.startswith("s3://"):
        from slidebank.storage.s3 import S3BlobStore  # boto3 only where an object store is used

        return S3BlobStore(url, home / "staging")
    if url and "://" in url and not url.startswith("file://"):
        raise ValueError(f"unsupported store URL {url!r}: use s3://bucket/prefix or a folder")
    return LocalBlobStore(Path(url.removeprefix("file://")) if url else home / "store")
