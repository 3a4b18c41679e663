"""Encryption at rest with GA4GH crypt4gh, keys sealed to the node, headers kept apart for shredding.

Each stored file gets its own data key (crypt4gh's session key) inside a crypt4gh header sealed to
the node's X25519 public key. The header is kept in the catalog, not beside the payload: deleting
it destroys the only copy of the key (crypto-shredding on erasure). The payload is crypt4gh's
64 KiB ChaCha20-Poly1305 segments, so any byte range is read by decrypting only the segments it
touches — a tile costs one or two segment decryptions, not the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache
from crypt4gh import header as c4gh_header
from crypt4gh import lib as c4gh_lib
from crypt4gh.keys import c4gh as c4gh_keys
from crypt4gh.keys import get_private_key, get_public_key

SEGMENT = c4gh_lib.SEGMENT_SIZE  # plaintext bytes per segment
CIPHER_SEGMENT = c4gh_lib.CIPHER_SEGMENT_SIZE  # nonce + ciphertext + MAC
# Decrypted segments, shared by every open file of the process: neighbouring tiles share segments
# and viewers come back to the same region, so this saves most decryptions while panning.
SEGMENT_CACHE_BYTES = int(os.environ.get("SLIDEBANK_SEGMENT_CACHE_MB", "256")) * 1024 * 1024
_segment_cache: LRUCache[tuple[str, int], bytes] = LRUCache(SEGMENT_CACHE_BYTES, getsizeof=len)
_segment_lock = threading.Lock()


class EncryptedFileError(Exception):
    """A segment failed authentication (tampered or truncated payload) or the key is wrong."""


@dataclass(frozen=True)
class NodeKeys:
    secret: bytes
    public: bytes

    @property
    def sealing(self) -> list[tuple[int, bytes, bytes]]:
        return [(0, self.secret, self.public)]  # method 0, sender = the node, recipient = the node

    @property
    def opening(self) -> list[tuple[int, bytes, None]]:
        return [(0, self.secret, None)]


def node_keys(folder: Path) -> NodeKeys:
    """The node's crypt4gh key pair, created on first use (secret key file mode 0600)."""
    secret_path, public_path = folder / "node-c4gh.sec", folder / "node-c4gh.pub"
    if not public_path.exists():
        try:  # created empty with owner-only rights first, so the key is never readable by others
            os.close(os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:  # another process of this node is writing the pair right now
            for _ in range(100):
                if public_path.exists() and public_path.stat().st_size:
                    break
                time.sleep(0.05)
        else:
            c4gh_keys.generate(str(secret_path), str(public_path), passphrase=None, comment=b"slidebank node")
    # The key file has no passphrase (the node must start unattended; the file is mode 0400), which
    # crypt4gh announces on stderr every time it is read.
    with contextlib.redirect_stderr(io.StringIO()):
        secret = get_private_key(str(secret_path), lambda: "")
    return NodeKeys(secret, get_public_key(str(public_path)))


def encrypt_file(source: Path, target: Path, keys: NodeKeys) -> bytes:
    """Write `source` encrypted to `target` (segments only); return the detached crypt4gh header."""
    header = io.BytesIO()
    with open(source, "rb") as plain, open(target, "wb") as cipher:
        c4gh_lib.encrypt(keys.sealing, plain, cipher, headerfile=header)
        cipher.flush()
        os.fsync(cipher.fileno())
    return header.getvalue()


def plaintext_size(payload_size: int) -> int:
    full, rest = divmod(payload_size, CIPHER_SEGMENT)
    return full * SEGMENT + max(0, rest - (CIPHER_SEGMENT - SEGMENT))


class EncryptedFile:
    """Random access to the plaintext of an encrypted payload; thread-safe (pread, locked cache).

    Decrypted segments are cached in process memory, never on disk; the cache key includes the
    file's inode, so a blob deleted and stored again is never served from stale entries."""

    def __init__(self, payload: Path, header: bytes, keys: NodeKeys) -> None:
        try:
            self._session_keys, _ = c4gh_header.deconstruct(io.BytesIO(header), keys.opening)
        except Exception as error:  # noqa: BLE001 - crypt4gh raises ValueError and others
            raise EncryptedFileError(f"cannot open the key of {payload.name}: {error}") from error
        self.path = payload
        self._fd = os.open(payload, os.O_RDONLY)
        self.size = plaintext_size(os.fstat(self._fd).st_size)
        self._cache_key = f"{payload}:{os.fstat(self._fd).st_ino}"

    def pread(self, offset: int, length: int) -> bytes:
        """Plaintext bytes [offset, offset + length), decrypting only the segments they lie in."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        first, last = offset // SEGMENT, (end - 1) // SEGMENT
        data = b"".join(self._segment(index) for index in range(first, last + 1))
        start = offset - first * SEGMENT
        return data[start : start + (end - offset)]

    def _segment(self, index: int) -> bytes:
        key = (self._cache_key, index)
        with _segment_lock:
            cached = _segment_cache.get(key)
        if cached is not None:
            return cached
        cipher = os.pread(self._fd, CIPHER_SEGMENT, index * CIPHER_SEGMENT)
        plain = bytearray(SEGMENT)
        try:
            size = c4gh_lib.decrypt_block(plain, cipher, self._session_keys)
        except ValueError as error:
            raise EncryptedFileError(f"segment {index} of {self.path.name} failed authentication") from error
        segment = bytes(plain[:size])
        if SEGMENT_CACHE_BYTES:
            with _segment_lock:
                _segment_cache[key] = segment
        return segment

    def stream(self) -> io.BufferedReader:
        """A read-only, seekable file object over the plaintext (for pydicom and wsidicom)."""
        return io.BufferedReader(_PlaintextView(self), buffer_size=SEGMENT)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EncryptedFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _PlaintextView(io.RawIOBase):
    def __init__(self, source: EncryptedFile) -> None:
        self._source, self._position = source, 0

    @property
    def name(self) -> str:  # pydicom and wsidicom label datasets with it
        return str(self._source.path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._source.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.pread(self._position, len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
