"""Encryption at rest with GA4GH crypt4gh, keys sealed to the node, headers kept apart for shredding.

Each stored file gets its own data key (crypt4gh's session key) inside a crypt4gh header sealed to
the node's X25519 public key. The header is kept in the catalog, not beside the payload: deleting
it destroys the only copy of the key (crypto-shredding on erasure). The payload is crypt4gh's
64 KiB ChaCha20-Poly1305 segments, so any byte range is read by decrypting only the segments it
touches — a tile costs one or two segment decryptions, not the file.

Limits of the crypt4gh format that callers must cover: a segment's MAC does not bind its position,
so segments swapped or dropped whole (a payload cut at a segment boundary) are not detected here;
compare `EncryptedFile.size` with the size recorded at ingest, and the SHA-256 when reading it all.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache
from crypt4gh import header as c4gh_header
from crypt4gh import lib as c4gh_lib
from crypt4gh import sodium as c4gh_sodium
from crypt4gh.keys import c4gh as c4gh_keys
from crypt4gh.keys import get_private_key, get_public_key

from slidebank.storage.sources import RandomAccess, as_source

SEGMENT = c4gh_lib.SEGMENT_SIZE  # plaintext bytes per segment
CIPHER_SEGMENT = c4gh_lib.CIPHER_SEGMENT_SIZE  # nonce + ciphertext + MAC
SEGMENT_OVERHEAD = CIPHER_SEGMENT - SEGMENT
SECRET_KEY_FILE = "node-c4gh.sec"
PUBLIC_KEY_FILE = "node-c4gh.pub"
KEY_LOCK_FILE = "node-c4gh.lock"
# Decrypted segments, shared by every open file of the process: neighbouring tiles share segments
# and viewers come back to the same region, so this saves most decryptions while panning.
SEGMENT_CACHE_BYTES = int(os.environ.get("SLIDEBANK_SEGMENT_CACHE_MB", "256")) * 1024 * 1024
_segment_cache: LRUCache[tuple[bytes, int], bytes] = LRUCache(SEGMENT_CACHE_BYTES, getsizeof=len)
_segment_lock = threading.Lock()


class EncryptedFileError(Exception):
    """A segment failed authentication (tampered or truncated payload) or the key/header is wrong."""


class NodeKeyError(Exception):
    """The node's key files are damaged, or the passphrase is wrong or missing."""


@dataclass(frozen=True)
class NodeKeys:
    """The node's X25519 pair: the node seals every file key to itself and opens only its own."""

    secret: bytes
    public: bytes

    def __repr__(self) -> str:  # keeps the secret out of logs and tracebacks
        return f"NodeKeys(public={self.public.hex()})"

    @property
    def sealing(self) -> list[tuple[int, bytes, bytes]]:
        return [(0, self.secret, self.public)]  # method 0, sender = the node, recipient = the node

    @property
    def opening(self) -> list[tuple[int, bytes, None]]:
        return [(0, self.secret, None)]


def generate_node_keys(folder: Path, passphrase: str | None = None) -> NodeKeys:
    """Create the node's key pair; refuses to replace one, since that would shred every stored file.

    The files appear complete or not at all (written aside, fsynced, renamed: public key first, secret
    last, so a present secret key means a complete pair). Concurrent callers must serialise;
    `node_keys` does. The secret file is owner-only from creation (crypt4gh then makes it 0400).
    """
    secret_path, public_path = folder / SECRET_KEY_FILE, folder / PUBLIC_KEY_FILE
    if secret_path.exists():
        raise FileExistsError(f"{secret_path} exists: the node already has a key pair")
    folder.mkdir(parents=True, exist_ok=True)
    secret_fd, secret_tmp = tempfile.mkstemp(prefix=f".{SECRET_KEY_FILE}.", dir=folder)  # mode 0600
    os.close(secret_fd)
    public_tmp = Path(f"{secret_tmp}.pub")
    try:
        secret = passphrase.encode() if passphrase else None
        c4gh_keys.generate(secret_tmp, str(public_tmp), passphrase=secret, comment=b"slidebank node")
        for written in (secret_tmp, public_tmp):
            fsync_path(Path(written))
        os.replace(public_tmp, public_path)
        os.replace(secret_tmp, secret_path)
        fsync_path(folder)
    finally:
        for leftover in (Path(secret_tmp), public_tmp):
            leftover.unlink(missing_ok=True)
    return load_node_keys(folder, passphrase)


def load_node_keys(folder: Path, passphrase: str | None = None) -> NodeKeys:
    """The node's key pair from its crypt4gh key files; NodeKeyError if they do not belong together."""
    secret_path = folder / SECRET_KEY_FILE
    if not secret_path.exists():
        raise FileNotFoundError(f"{secret_path} is missing: the node has no key pair")
    try:
        secret = get_private_key(str(secret_path), lambda: passphrase or "")
        public = get_public_key(str(folder / PUBLIC_KEY_FILE))
    except SystemExit as error:  # crypt4gh exits the process on a bad key file or passphrase
        raise NodeKeyError(f"cannot read {secret_path}: wrong or missing passphrase, or a damaged file") from error
    except (ValueError, NotImplementedError) as error:
        raise NodeKeyError(f"cannot read the node key files in {folder}: {error}") from error
    if c4gh_sodium.derive_pk(secret) != public:  # files would be sealed to a key we cannot open
        raise NodeKeyError(f"{PUBLIC_KEY_FILE} in {folder} is not the public half of {SECRET_KEY_FILE}")
    return NodeKeys(secret, public)


def node_keys(folder: Path, passphrase: str | None = None) -> NodeKeys:
    """The node's key pair, created on first use; safe when several processes start at once."""
    if not (folder / SECRET_KEY_FILE).exists():
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(folder / KEY_LOCK_FILE):
            if not (folder / SECRET_KEY_FILE).exists():
                return generate_node_keys(folder, passphrase)
    return load_node_keys(folder, passphrase)


def encrypt_file(source: Path, target: Path, keys: NodeKeys) -> bytes:
    """Write `source` encrypted to `target` (segments only, fsynced); return the detached header.

    crypt4gh streams one segment at a time, so memory stays flat whatever the file size.
    """
    header = io.BytesIO()
    with open(source, "rb") as plain, open(target, "wb") as cipher:
        c4gh_lib.encrypt(keys.sealing, plain, cipher, headerfile=header)
        cipher.flush()
        os.fsync(cipher.fileno())
    return header.getvalue()


class EncryptedFile:
    """Random access to the plaintext of an encrypted payload; thread-safe (pread, locked cache).

    Decrypted segments are cached in process memory, never on disk, keyed by the header's digest:
    a header names one data key and so one payload, whatever path or inode it is read through.
    """

    def __init__(self, payload: Path | RandomAccess, header: bytes, keys: NodeKeys) -> None:
        self._source = as_source(payload)
        self.name = self._source.name
        try:
            self._data_key = _open_header(header, keys, self.name)
            self._cache_id = hashlib.sha256(header).digest()
            self.size = _plaintext_size(self._source.size, self.name)
        except EncryptedFileError:
            self.close()
            raise
        self._closed = False

    def pread(self, offset: int, length: int) -> bytes:
        """Plaintext bytes [offset, offset + length), decrypting only the segments they lie in."""
        if length < 0:
            raise ValueError(f"negative length {length}")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        pieces = list(self._pieces(offset, end))
        return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)

    def preadinto(self, offset: int, buffer: memoryview) -> int:
        """Fill `buffer` from `offset` without an intermediate copy; returns the bytes written."""
        written, end = 0, min(offset + len(buffer), self.size)
        if offset >= end:
            return 0
        for piece in self._pieces(offset, end):
            buffer[written : written + len(piece)] = piece
            written += len(piece)
        return written

    def _pieces(self, offset: int, end: int) -> Iterator[memoryview]:
        """The parts of each segment that fall within [offset, end), offset < end."""
        if offset < 0 or self._closed:  # a closed file must not go on answering from the cache
            raise ValueError(f"read at {offset} of {self.name}: negative offset or closed file")
        first, last = offset // SEGMENT, (end - 1) // SEGMENT
        segments = self._segments(first, last)
        for index in range(first, last + 1):
            start = index * SEGMENT
            yield memoryview(segments[index - first])[max(offset - start, 0) : min(end - start, SEGMENT)]

    def _segments(self, first: int, last: int) -> list[bytes]:
        """Plaintext of segments first..last; those not cached are read in one request (one
        ranged GET on S3 rather than one per segment)."""
        with _segment_lock:
            found = [_segment_cache.get((self._cache_id, index)) for index in range(first, last + 1)]
        missing = [first + i for i, segment in enumerate(found) if segment is None]
        if missing:
            lo, hi = missing[0], missing[-1]
            cipher = self._source.pread(lo * CIPHER_SEGMENT, (hi - lo + 1) * CIPHER_SEGMENT)
            for index in missing:
                found[index - first] = self._decrypt(index, cipher, (index - lo) * CIPHER_SEGMENT)
        return found  # type: ignore[return-value]  # every None was filled above

    def _decrypt(self, index: int, cipher: bytes, at: int) -> bytes:
        plain = bytearray(SEGMENT)
        try:
            size = c4gh_lib.decrypt_block(plain, memoryview(cipher)[at : at + CIPHER_SEGMENT], [self._data_key])
        except ValueError as error:
            raise EncryptedFileError(f"segment {index} of {self.name} failed authentication") from error
        segment = bytes(memoryview(plain)[:size])
        if SEGMENT_CACHE_BYTES:
            with _segment_lock:
                _segment_cache[(self._cache_id, index)] = segment
        return segment

    def stream(self) -> io.BufferedReader:
        """A read-only, seekable file object over the plaintext (for pydicom and wsidicom).

        Each call gets its own position; all share this file's descriptor, which the stream never
        closes (close the EncryptedFile after its streams).
        """
        return io.BufferedReader(_PlaintextView(self), buffer_size=SEGMENT)

    def close(self) -> None:
        self._closed = True
        self._source.close()

    def forget(self) -> None:
        """Close, and drop this file's decrypted segments from the process's cache (after an erasure:
        no plaintext of an erased slide may stay in a server's memory)."""
        self.close()
        with _segment_lock:
            for key in [k for k in _segment_cache if k[0] == self._cache_id]:
                del _segment_cache[key]

    def __enter__(self) -> EncryptedFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _PlaintextView(io.RawIOBase):
    """File-object face of an EncryptedFile, for libraries that only take streams."""

    def __init__(self, source: EncryptedFile) -> None:
        self._source, self._position = source, 0

    @property
    def name(self) -> str:  # pydicom and wsidicom label datasets with it
        return self._source.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._source.size}
        if whence not in bases:
            raise ValueError(f"invalid whence {whence}")
        if bases[whence] + offset < 0:  # as a real file answers
            raise OSError(errno.EINVAL, f"negative seek position {bases[whence] + offset}")
        self._position = bases[whence] + offset
        return self._position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # RawIOBase takes any buffer
        count = self._source.preadinto(self._position, memoryview(buffer).cast("B"))
        self._position += count
        return count

    def readall(self) -> bytes:
        data = self._source.pread(self._position, max(self._source.size - self._position, 0))
        self._position += len(data)
        return data


def _open_header(header: bytes, keys: NodeKeys, name: str) -> bytes:
    """The data key in a header that this node wrote; anything else is refused."""
    try:
        # Requiring the node as the sender means only the holder of the node's secret can have made
        # it: a header sealed by anyone who merely knows the public key is refused.
        data_keys, edit_list = c4gh_header.deconstruct(io.BytesIO(header), keys.opening, sender_pubkey=keys.public)
    except ValueError as error:
        raise EncryptedFileError(f"cannot open the key of {name}: {error}") from error
    if edit_list is not None or len(data_keys) != 1 or len(data_keys[0]) != 32:
        raise EncryptedFileError(f"the header of {name} was not written by Slidebank (edit list or several keys)")
    return bytes(data_keys[0])


def _plaintext_size(payload_size: int, name: str) -> int:
    full, rest = divmod(payload_size, CIPHER_SEGMENT)
    if 0 < rest <= SEGMENT_OVERHEAD:  # crypt4gh never writes an empty segment: bytes were cut off
        raise EncryptedFileError(f"{name} is truncated ({rest} bytes after the last whole segment)")
    return full * SEGMENT + max(0, rest - SEGMENT_OVERHEAD)


def fsync_path(path: Path) -> None:
    """Make a file's (or a directory's entries') writes durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def seal(data: bytes, keys: NodeKeys) -> bytes:
    """A small crypt4gh message (header + one segment) only the node key opens."""
    out = io.BytesIO()
    c4gh_lib.encrypt(keys.sealing, io.BytesIO(data), out)
    return out.getvalue()


def unseal(message: bytes, keys: NodeKeys) -> bytes:
    out = io.BytesIO()
    try:
        c4gh_lib.decrypt(keys.opening, io.BytesIO(message), out, sender_pubkey=keys.public)  # sealed by this node
    except Exception as error:  # noqa: BLE001 - crypt4gh raises several kinds
        raise EncryptedFileError(f"cannot open sealed data: {error}") from error
    return out.getvalue()
