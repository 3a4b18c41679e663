"""crypt4gh at rest: random access equals the plaintext; tampering, wrong keys and lost headers fail loudly."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from crypt4gh import lib as c4gh_lib
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from wsidicom import WsiDicom

from slidebank.ingest.runner import plan_ingest, run_ingest
from slidebank.node import Node
from slidebank.storage.crypt import (
    CIPHER_SEGMENT,
    SEGMENT,
    EncryptedFile,
    EncryptedFileError,
    NodeKeyError,
    NodeKeys,
    encrypt_file,
    generate_node_keys,
    load_node_keys,
    node_keys,
    seal,
    unseal,
)

MARKER = b"SLIDEBANK-PLAINTEXT-MARKER-32-B!"  # 32 distinctive bytes that must never reach the payload
FIVE_MB = 5 * 1024 * 1024 + 7


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> NodeKeys:
    folder = tmp_path_factory.mktemp("keys")
    made = node_keys(folder)
    assert (folder / "node-c4gh.sec").stat().st_mode & 0o077 == 0, "the node's secret key is owner-only"
    assert node_keys(folder) == made == load_node_keys(folder), "the pair is created once and then loaded"
    assert made.secret.hex() not in repr(made)
    return made


def encrypted(folder: Path, plaintext: bytes, keys: NodeKeys) -> tuple[Path, bytes]:
    """(payload path, header) of `plaintext` encrypted to the node."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plain").write_bytes(plaintext)
    header = encrypt_file(folder / "plain", folder / "payload", keys)
    return folder / "payload", header


@pytest.fixture(scope="module")
def five_mb(tmp_path_factory: pytest.TempPathFactory, keys: NodeKeys) -> Iterator[tuple[Path, EncryptedFile]]:
    """(plaintext file, its encrypted twin opened): shared by the property tests."""
    payload, header = encrypted(tmp_path_factory.mktemp("five-mb"), random.Random(5).randbytes(FIVE_MB), keys)
    with EncryptedFile(payload, header, keys) as opened:
        yield payload.with_name("plain"), opened


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 12345, FIVE_MB])
def test_random_reads_equal_the_plaintext(tmp_path: Path, keys: NodeKeys, size: int) -> None:
    rng = random.Random(size)
    plaintext = rng.randbytes(size)
    payload, header = encrypted(tmp_path, plaintext, keys)
    assert payload.stat().st_size == size + -(-size // SEGMENT) * (CIPHER_SEGMENT - SEGMENT)
    with EncryptedFile(payload, header, keys) as opened:
        assert opened.size == size
        for _ in range(200):
            offset, length = rng.randrange(size + 2), rng.randrange(3 * SEGMENT)
            assert opened.pread(offset, length) == plaintext[offset : offset + length]
        assert opened.pread(0, size) == plaintext
        with opened.stream() as stream:
            stream.seek(size // 2)
            assert stream.read() == plaintext[size // 2 :]


@settings(max_examples=300, deadline=None)
@given(offset=st.integers(0, FIVE_MB + 10), length=st.integers(0, 4 * SEGMENT))
def test_any_range_equals_the_plaintext(five_mb: tuple[Path, EncryptedFile], offset: int, length: int) -> None:
    plain, opened = five_mb
    with open(plain, "rb") as reference:
        reference.seek(offset)
        assert opened.pread(offset, length) == reference.read(length)


SEEK_STEPS = st.tuples(  # (whence, offset, bytes to read)
    st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END]),
    st.integers(-2 * SEGMENT, FIVE_MB),
    st.integers(-1, 3 * SEGMENT),
)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(SEEK_STEPS, max_size=20))
def test_the_stream_behaves_like_the_plaintext_file(
    five_mb: tuple[Path, EncryptedFile], steps: list[tuple[int, int, int]]
) -> None:
    plain, opened = five_mb
    with opened.stream() as stream, open(plain, "rb") as reference:
        for whence, offset, size in steps:
            try:
                expected = reference.seek(offset, whence)
            except (OSError, ValueError) as refused:
                with pytest.raises(type(refused)):
                    stream.seek(offset, whence)
                continue
            assert stream.seek(offset, whence) == expected
            assert stream.read(size) == reference.read(size)
            assert stream.tell() == reference.tell()


def test_concurrent_readers_share_one_file(five_mb: tuple[Path, EncryptedFile]) -> None:
    plain, opened = five_mb
    plaintext = plain.read_bytes()

    def reads(seed: int) -> bool:
        rng = random.Random(seed)
        ranges = [(rng.randrange(FIVE_MB), rng.randrange(2 * SEGMENT)) for _ in range(300)]
        return all(opened.pread(o, n) == plaintext[o : o + n] for o, n in ranges)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(reads, range(16)))


def test_bad_reads_are_refused(tmp_path: Path, keys: NodeKeys) -> None:
    payload, header = encrypted(tmp_path, os.urandom(SEGMENT), keys)
    opened = EncryptedFile(payload, header, keys)
    for offset, length in ((-1, 10), (0, -1)):
        with pytest.raises(ValueError):
            opened.pread(offset, length)
    assert opened.pread(100, 10)
    opened.close()
    with pytest.raises(ValueError, match="closed"):  # not even from the segment cache
        opened.pread(100, 10)


def test_the_payload_holds_no_plaintext(tmp_path: Path, keys: NodeKeys) -> None:
    plaintext = bytearray(os.urandom(4 * SEGMENT))
    for at in (0, 1000, SEGMENT - 16, 3 * SEGMENT + 5):  # the third one straddles a segment boundary
        plaintext[at : at + 32] = MARKER
    plaintext += MARKER * 1000  # long repeats leak patterns under a weak mode, not under a stream cipher
    payload, header = encrypted(tmp_path, bytes(plaintext), keys)
    stored = payload.read_bytes()
    assert MARKER not in stored and MARKER not in header
    assert MARKER[:16] not in stored and bytes(16) not in stored
    with EncryptedFile(payload, header, keys) as opened:
        assert opened.pread(SEGMENT - 16, 32) == MARKER


def test_every_file_gets_its_own_key(tmp_path: Path, keys: NodeKeys) -> None:
    plaintext = os.urandom(2 * SEGMENT)
    first, first_header = encrypted(tmp_path / "a", plaintext, keys)
    second, second_header = encrypted(tmp_path / "b", plaintext, keys)
    assert first_header != second_header and first.read_bytes() != second.read_bytes()
    with EncryptedFile(first, second_header, keys) as swapped, pytest.raises(EncryptedFileError):
        swapped.pread(0, 10)  # another file's header opens, but its key does not fit this payload


def test_a_flipped_byte_fails_only_the_segment_it_is_in(tmp_path: Path, keys: NodeKeys) -> None:
    plaintext = os.urandom(4 * SEGMENT + 100)
    payload, header = encrypted(tmp_path, plaintext, keys)
    original = payload.read_bytes()
    for where in (2 * CIPHER_SEGMENT, 2 * CIPHER_SEGMENT + 12 + 777, 3 * CIPHER_SEGMENT - 1):  # nonce, data, MAC
        tampered = bytearray(original)
        tampered[where] ^= 0x01
        payload.write_bytes(tampered)
        with EncryptedFile(payload, header, keys) as opened:
            assert opened.pread(0, 2 * SEGMENT) == plaintext[: 2 * SEGMENT]
            assert opened.pread(3 * SEGMENT, SEGMENT + 100) == plaintext[3 * SEGMENT :]
            for offset, length in ((2 * SEGMENT + 10, 100), (2 * SEGMENT - 5, 10), (0, opened.size)):
                with pytest.raises(EncryptedFileError, match="segment 2"):
                    opened.pread(offset, length)
            with opened.stream() as stream, pytest.raises(EncryptedFileError):
                stream.read()


def test_a_cut_payload_is_refused(tmp_path: Path, keys: NodeKeys) -> None:
    plaintext = os.urandom(2 * SEGMENT + 1000)
    payload, header = encrypted(tmp_path, plaintext, keys)
    original = payload.read_bytes()
    payload.write_bytes(original[:-500])  # inside the last segment: its MAC no longer matches
    with EncryptedFile(payload, header, keys) as opened, pytest.raises(EncryptedFileError):
        opened.pread(2 * SEGMENT, 10)
    payload.write_bytes(original[: 2 * CIPHER_SEGMENT + 20])  # too short to be a segment at all
    with pytest.raises(EncryptedFileError, match="truncated"):
        EncryptedFile(payload, header, keys)


def test_wrong_keys_and_foreign_headers_are_refused(tmp_path: Path, keys: NodeKeys) -> None:
    payload, header = encrypted(tmp_path, os.urandom(SEGMENT + 1), keys)
    stranger = node_keys(tmp_path / "stranger")
    with pytest.raises(EncryptedFileError):
        EncryptedFile(payload, header, stranger)
    # Someone who knows only the node's public key can seal a header to it; the node must not trust it.
    forged = io.BytesIO()
    with open(tmp_path / "plain", "rb") as plain, open(tmp_path / "forged", "wb") as out:
        c4gh_lib.encrypt([(0, stranger.secret, keys.public)], plain, out, headerfile=forged)
    with pytest.raises(EncryptedFileError):
        EncryptedFile(tmp_path / "forged", forged.getvalue(), keys)


def test_without_its_header_the_payload_is_unreadable(tmp_path: Path, keys: NodeKeys) -> None:
    """Crypto-shredding: the header is the only copy of the data key; the node key alone opens nothing."""
    payload, header = encrypted(tmp_path, os.urandom(3 * SEGMENT), keys)
    for shredded in (b"", header[:-1], bytes(len(header))):
        with pytest.raises(EncryptedFileError):
            EncryptedFile(payload, shredded, keys)
    with open(payload, "rb") as stored, pytest.raises(ValueError):  # not a crypt4gh file without its header
        c4gh_lib.decrypt(keys.opening, stored, io.BytesIO())


def test_sealed_data_opens_only_with_the_node_that_sealed_it(tmp_path: Path, keys: NodeKeys) -> None:
    sealed = seal(MARKER, keys)
    assert MARKER not in sealed and unseal(sealed, keys) == MARKER
    stranger = node_keys(tmp_path / "stranger")
    with pytest.raises(EncryptedFileError):
        unseal(sealed, stranger)
    forged = io.BytesIO()  # sealed to the node by someone who knows only its public key
    c4gh_lib.encrypt([(0, stranger.secret, keys.public)], io.BytesIO(MARKER), forged)
    with pytest.raises(EncryptedFileError):
        unseal(forged.getvalue(), keys)
    tampered = bytearray(sealed)
    tampered[-1] ^= 0x01
    with pytest.raises(EncryptedFileError):
        unseal(bytes(tampered), keys)


def test_node_keys_are_protected(tmp_path: Path) -> None:
    locked = generate_node_keys(tmp_path / "locked", passphrase="correct horse")
    assert load_node_keys(tmp_path / "locked", passphrase="correct horse") == locked
    for wrong in ("battery staple", None):
        with pytest.raises(NodeKeyError):
            load_node_keys(tmp_path / "locked", passphrase=wrong)
    with pytest.raises(FileExistsError):  # a new pair would shred every stored file
        generate_node_keys(tmp_path / "locked")
    with pytest.raises(FileNotFoundError):
        load_node_keys(tmp_path / "nothing-here")
    other = node_keys(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "node-c4gh.pub", tmp_path / "locked" / "node-c4gh.pub")
    with pytest.raises(NodeKeyError, match="not the public half"):
        load_node_keys(tmp_path / "locked", passphrase="correct horse")
    assert other != locked


def test_processes_starting_together_agree_on_one_key_pair(tmp_path: Path) -> None:
    with ProcessPoolExecutor(6) as pool:
        pairs = list(pool.map(node_keys, [tmp_path] * 12))
    assert all(pair == pairs[0] for pair in pairs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-c4gh.lock", "node-c4gh.pub", "node-c4gh.sec"]


def test_pydicom_reads_an_encrypted_dicom_through_the_stream(tmp_path: Path, keys: NodeKeys) -> None:
    pixels = random.Random(1).randbytes(300 * 400 * 3)  # 360 KB: six segments
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientID, dataset.Modality = "PSEUDO-1", "SM"
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = 300, 400, 3
    dataset.PhotometricInterpretation, dataset.PlanarConfiguration = "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = pixels
    dataset.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    header = encrypt_file(tmp_path / "plain.dcm", tmp_path / "payload", keys)
    with EncryptedFile(tmp_path / "payload", header, keys) as opened, opened.stream() as stream:
        read = pydicom.dcmread(stream)
        assert read.PatientID == "PSEUDO-1" and read.SOPInstanceUID == meta.MediaStorageSOPInstanceUID
        assert read.PixelData == pixels


def test_wsidicom_reads_stored_tiles_through_the_streams(node: Node, aperio_slide, tmp_path: Path) -> None:  # noqa: ANN001
    """A slide as ingest stores it: wsidicom through the decrypting streams reads what it reads from files."""
    [outcome] = run_ingest(node, plan_ingest([aperio_slide.path]))
    assert outcome.status == "ingested"
    stored = [f for f in node.catalog.stored_files(outcome.slide_id) if f.role == "volume"]
    assert stored and all(f.key_header for f in stored)
    files = [EncryptedFile(node.store.blob_path(f.sha256), f.key_header, node.keys) for f in stored]
    try:
        for index, (opened, record) in enumerate(zip(files, stored, strict=True)):
            with opened.stream() as stream, open(tmp_path / f"{index}.dcm", "wb") as plain:
                digest = hashlib.sha256()
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    plain.write(chunk)
            assert (digest.hexdigest(), opened.size) == (record.sha256, record.size), "the content address holds"
        streams = [opened.stream() for opened in files]
        with WsiDicom.open_streams(streams) as through_streams, WsiDicom.open(sorted(tmp_path.glob("*.dcm"))) as plain:
            assert len(through_streams.levels) == len(plain.levels) > 1
            for level_index, level in enumerate(plain.levels):
                cols = -(-level.size.width // level.tile_size.width)
                rows = -(-level.size.height // level.tile_size.height)
                for row in range(rows):
                    for col in range(cols):
                        assert through_streams.read_encoded_tile(level_index, (col, row)) == plain.read_encoded_tile(
                            level_index, (col, row)
                        )
        for stream in streams:  # wsidicom leaves the streams it was given open
            assert not stream.closed
            stream.close()
    finally:
        for opened in files:
            opened.close()
