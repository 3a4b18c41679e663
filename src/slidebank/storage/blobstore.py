"""Content-addressed blob storage with staging and atomic publish.

A slide's canonical files become blobs named by their SHA-256. Writers build files in a private
staging directory and then *publish* them; publishing is a rename on the same filesystem, so a
reader (or the catalog) never sees a half-written blob. Blobs that were published by an ingest
that crashed before the catalog committed are unreferenced and removed by `collect_garbage`.
The interface is small on purpose: `storage.s3` implements it over an S3 bucket.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Protocol

from slidebank.storage.crypt import EncryptedFile, NodeKeys, encrypt_file, fsync_path

CHUNK_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class BlobRef:
    sha256: str  # of the plaintext: the content address
    size: int  # plaintext bytes
    key_header: bytes | None = None  # crypt4gh header sealing this blob's key; None: stored in clear


class BlobFile(Protocol):
    """A stored blob opened for reading: random access and a file object, as plaintext."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...  # pragma: no cover

    def stream(self) -> BinaryIO: ...  # pragma: no cover

    def close(self) -> None: ...  # pragma: no cover


class PlainFile:
    """A blob stored in clear (nodes from before encryption at rest)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def stream(self) -> BinaryIO:
        return open(self.path, "rb")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BlobStore(Protocol):
    """What the rest of Slidebank may ask of a blob store (local disk, or S3 in `storage.s3`)."""

    def staging_dir(self) -> AbstractContextManager[Path]: ...  # pragma: no cover

    def publish(self, path: Path, keys: NodeKeys | None = None,
                intend: Callable[[str], None] | None = None) -> BlobRef: ...  # pragma: no cover

    def open_blob(self, sha256: str, key_header: bytes | None, keys: NodeKeys) -> BlobFile: ...  # pragma: no cover

    def exists(self, sha256: str) -> bool: ...  # pragma: no cover

    def delete(self, sha256: str) -> None: ...  # pragma: no cover

    def iter_blobs(self) -> Iterator[str]: ...  # pragma: no cover

    def delete_many(self, digests: Iterable[str]) -> None: ...  # pragma: no cover

    def collect_garbage(self, referenced: Referenced, min_age_s: float = 0) -> list[str]: ...  # pragma: no cover

    def clear_leftovers(self, min_age_s: float = 0) -> None: ...  # pragma: no cover


Referenced = Callable[[list[str]], set[str]]
"""Which of these digests the catalog references: asked a chunk at a time, so that a sweep of a
store of millions of blobs never holds the catalog's every digest in memory."""
SWEEP_CHUNK = 1_000


def unreferenced(digests: Iterable[str], referenced: Referenced) -> Iterator[list[str]]:
    """The digests nothing references, a chunk at a time."""
    iterator = iter(digests)
    while chunk := list(islice(iterator, SWEEP_CHUNK)):
        known = referenced(chunk)
        yield [digest for digest in chunk if digest not in known]


def sha256_file(path: Path, chunk_size: int = CHUNK_SIZE) -> BlobRef:
    """Streaming SHA-256, so multi-GB files hash in constant memory."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return BlobRef(digest.hexdigest(), size)


class LocalBlobStore:
    """Blobs on local disk under `root/objects/ab/cd/<sha256>`, staging under `root/staging`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.staging = root / "staging"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.objects / sha256[:2] / sha256[2:4] / sha256

    def staging_dir(self) -> AbstractContextManager[Path]:
        """A private scratch directory on the store's filesystem (so publishing is a rename)."""
        return private_staging(self.staging)

    def publish(self, path: Path, keys: NodeKeys | None = None,
                intend: Callable[[str], None] | None = None) -> BlobRef:
        """Move a finished staging file into the store under its digest (atomic, durable).

        With `keys`, the stored payload is encrypted and the returned ref carries its key header;
        a blob already stored keeps its payload, and its header comes from whoever stored it first
        (the ref's header is then None and the catalog copies the existing one). `intend` is told
        the digest before the blob appears (the catalog's pending-blob log, for recovery).
        """
        ref = sha256_file(path)
        target = self.blob_path(ref.sha256)
        if target.exists():
            path.unlink()
            return ref
        if intend is not None:
            intend(ref.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        header = None
        if keys is not None:
            encrypted = path.with_name(path.name + ".c4gh")
            header = encrypt_file(path, encrypted, keys)
            path.unlink()
            path = encrypted
        else:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(path, target)
        fsync_path(target.parent)
        return BlobRef(ref.sha256, ref.size, header)

    def open_blob(self, sha256: str, key_header: bytes | None, keys: NodeKeys) -> BlobFile:
        """Random access to a stored blob's plaintext, decrypting only what is read."""
        path = self.blob_path(sha256)
        return EncryptedFile(path, key_header, keys) if key_header is not None else PlainFile(path)

    def exists(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self.blob_path(sha256).unlink(missing_ok=True)

    def iter_blobs(self) -> Iterator[str]:
        for path in self.objects.glob("*/*/*"):
            if path.is_file() and len(path.name) == 64:
                yield path.name

    def delete_many(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self.delete(digest)

    def collect_garbage(self, referenced: Referenced, min_age_s: float = 0) -> list[str]:
        """Delete blobs nobody references (left by a crashed ingest) and stale staging dirs.

        `min_age_s` protects blobs that a concurrent ingest has published but not yet
        registered; callers holding the node's ingest lock may pass 0.
        """
        now = time.time()
        removed: list[str] = []
        for digests in unreferenced(self.iter_blobs(), referenced):
            for digest in digests:
                path = self.blob_path(digest)
                if now - path.stat().st_mtime >= min_age_s:
                    path.unlink(missing_ok=True)
                    removed.append(digest)
        self.clear_leftovers(min_age_s)
        return removed

    def clear_leftovers(self, min_age_s: float = 0) -> None:
        """Staging folders of writers that died (no blob is touched)."""
        clear_stale_staging(self.staging, min_age_s)


@contextmanager
def private_staging(root: Path) -> Iterator[Path]:
    """A scratch directory of this writer's own under `root`, removed on exit whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_digest(sha256: str) -> None:
    """Refuse anything but a SHA-256 hex digest before it becomes part of a path or an object key."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")


def clear_stale_staging(staging: Path, min_age_s: float) -> None:
    """Remove staging folders (and stray files) a crashed writer left, once older than `min_age_s`."""
    now = time.time()
    for leftover in staging.iterdir():
        if now - leftover.stat().st_mtime >= min_age_s:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
