"""crypt4gh at rest: random access equals the plaintext; tampering and wrong keys fail loudly."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from slidebank.storage.crypt import (
    SEGMENT,
    EncryptedFile,
    EncryptedFileError,
    encrypt_file,
    node_keys,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    folder = tmp_path_factory.mktemp("keys")
    made = node_keys(folder)
    assert (folder / "node-c4gh.sec").stat().st_mode & 0o077 == 0, "the node's secret key is owner-only"
    assert node_keys(folder) == made, "the pair is created once and then loaded"
    return made


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 12345])
def test_random_reads_equal_the_plaintext(tmp_path: Path, keys, size: int) -> None:  # noqa: ANN001
    plaintext = os.urandom(size)
    (tmp_path / "plain").write_bytes(plaintext)
    header = encrypt_file(tmp_path / "plain", tmp_path / "payload", keys)
    rng = random.Random(size)
    with EncryptedFile(tmp_path / "payload", header, keys) as encrypted:
        assert encrypted.size == size
        for _ in range(200):
            offset, length = rng.randrange(size + 1), rng.randrange(3 * SEGMENT)
            assert encrypted.pread(offset, length) == plaintext[offset : offset + length]
        with encrypted.stream() as stream:
            stream.seek(size // 2)
            assert stream.read() == plaintext[size // 2 :]
    if size >= 64:
        assert plaintext[size // 2 : size // 2 + 32] not in (tmp_path / "payload").read_bytes()


def test_tampering_and_wrong_keys_are_refused(tmp_path: Path, keys) -> None:  # noqa: ANN001
    plaintext = os.urandom(4 * SEGMENT)
    (tmp_path / "plain").write_bytes(plaintext)
    header = encrypt_file(tmp_path / "plain", tmp_path / "payload", keys)
    payload = bytearray((tmp_path / "payload").read_bytes())
    payload[len(payload) // 2] ^= 0x01  # one bit in the third segment
    (tmp_path / "payload").write_bytes(payload)
    with EncryptedFile(tmp_path / "payload", header, keys) as encrypted:
        assert encrypted.pread(0, SEGMENT) == plaintext[:SEGMENT]  # untouched segments still read
        with pytest.raises(EncryptedFileError):
            encrypted.pread(2 * SEGMENT + 10, 100)
    stranger = node_keys(tmp_path)
    with pytest.raises(EncryptedFileError):
        EncryptedFile(tmp_path / "payload", header, stranger)
    with pytest.raises(EncryptedFileError):  # without its header (shredded), nothing opens the payload
        EncryptedFile(tmp_path / "payload", b"", keys)
