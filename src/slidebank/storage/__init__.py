"""Where slide bytes live: a content-addressed blob store (local disk now, object stores later)."""

from slidebank.storage.blobstore import BlobRef, BlobStore, LocalBlobStore, sha256_file

__all__ = ["BlobRef", "BlobStore", "LocalBlobStore", "sha256_file"]
