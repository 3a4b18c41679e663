"""The node: the composition root that opens one Slidebank node and wires its services together.

Everything lives under one folder, `SLIDEBANK_HOME` (default ./slidebank-data); the same code serves
a data centre by pointing `SLIDEBANK_DATABASE_URL` at PostgreSQL, `SLIDEBANK_STORE_URL` at an S3
bucket and `SLIDEBANK_KEYS_DIR` at the node's key files (a secret mounted on every host): then the
folder holds only scratch space, and any number of processes on any number of hosts are one node.
Only front ends (api, cli) and runners (batch ingest, job workers) open a node; services never
import it, they are handed what they need here.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from slidebank.access.governance import Governance
from slidebank.access.identity import Identities
from slidebank.access.notifications import Notifications
from slidebank.access.pseudonyms import Pseudonyms
from slidebank.access.version import GovernanceWatch
from slidebank.annotations.service import Annotations
from slidebank.audit import AuditLog
from slidebank.catalog import Catalog
from slidebank.catalog.records import StoredFile
from slidebank.db import UnitOfWork, create_database_engine, upgrade_schema
from slidebank.db.locks import site_lock
from slidebank.erasure import Erasures
from slidebank.jobs import Jobs
from slidebank.slides.inspect import Limits
from slidebank.slides.stored import volume_files
from slidebank.storage import open_blob_store
from slidebank.storage.blobstore import BlobFile
from slidebank.storage.crypt import EncryptedFileError, NodeKeys, load_node_keys, node_keys

INGEST_LOCK = "ingest"


@dataclass(frozen=True)
class NodeSettings:
    """Where a node keeps its state; picklable so worker processes can open the same node."""

    home: Path
    database_url: str
    keep_pseudonym_map: bool = False  # keep submitters' identifiers, sealed to the node key
    store_url: str | None = None  # s3://bucket/prefix or a folder; None: home/store
    keys_dir: Path | None = None  # the node's key files; None: home
    create_keys: bool = True  # False where keys must already exist (worker hosts)

    @classmethod
    def from_environment(cls, home: Path | None = None) -> NodeSettings:
        home = Path(home or os.environ.get("SLIDEBANK_HOME", "slidebank-data")).absolute()
        url = os.environ.get("SLIDEBANK_DATABASE_URL") or f"sqlite:///{home / 'catalog.sqlite'}"
        keep = os.environ.get("SLIDEBANK_KEEP_PSEUDONYM_MAP", "").lower() in ("1", "true", "yes")
        keys = os.environ.get("SLIDEBANK_KEYS_DIR")
        return cls(home=home, database_url=url, keep_pseudonym_map=keep,
                   store_url=os.environ.get("SLIDEBANK_STORE_URL") or None,
                   keys_dir=Path(keys).absolute() if keys else None)

    @property
    def shares_nothing_local(self) -> bool:
        """True when database and blobs are reachable from any host (PostgreSQL and S3)."""
        return bool(self.store_url and self.store_url.startswith("s3://")) and \
            not self.database_url.startswith("sqlite")

    def for_worker(self) -> NodeSettings:
        """The settings a worker process opens the node with, on whatever host it runs.

        With PostgreSQL and S3 a worker needs none of the node's folder: its own `SLIDEBANK_HOME`
        (or a temporary folder) for scratch, the key files where its own `SLIDEBANK_KEYS_DIR` says
        (never created there), and the database and store as the node names them unless its own
        environment names them (another host may reach them by other addresses). Otherwise the
        worker shares the node's folder, as before.
        """
        if not self.shares_nothing_local:
            return self
        env = os.environ
        home = Path(env.get("SLIDEBANK_HOME") or Path(tempfile.gettempdir()) / "slidebank-worker")
        keys = env.get("SLIDEBANK_KEYS_DIR")
        return replace(self, home=home.absolute(), keys_dir=Path(keys).absolute() if keys else self.key_folder,
                       database_url=env.get("SLIDEBANK_DATABASE_URL") or self.database_url,
                       store_url=env.get("SLIDEBANK_STORE_URL") or self.store_url, create_keys=False)

    @property
    def key_folder(self) -> Path:
        return self.keys_dir or self.home


class Node:
    """An opened node: the database (schema migrated on open), the blob store, the node's keys and
    secret, and the services over them."""

    def __init__(self, settings: NodeSettings, *, migrate: bool = True) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.engine = create_database_engine(settings.database_url)
        if migrate:
            upgrade_schema(self.engine)
        self.uow = UnitOfWork(self.engine)
        self.audit = AuditLog(self.uow)
        self.catalog = Catalog(self.uow)
        self.identities = Identities(self.uow, self.audit)
        self.governance = Governance(self.uow, self.audit)
        self.notifications = Notifications(self.uow)
        self.annotations = Annotations(self.uow, self.audit)
        self.jobs = Jobs(self.uow, self.audit)
        self.store = open_blob_store(settings.store_url, settings.home)
        self.erasures = Erasures(self.uow, self.audit, self.store, self.ingest_lock)
        self.limits = Limits()

    @classmethod
    def open(cls, home: Path | None = None) -> Node:
        return cls(NodeSettings.from_environment(home))

    @property
    def secret(self) -> bytes:
        """Per-node key for pseudonyms, beside the crypt4gh keys; created once, owner-only."""
        path = self.settings.key_folder / "node.key"
        if not path.exists() and self.settings.create_keys:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it first
                return path.read_bytes()
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        return path.read_bytes()

    @cached_property
    def keys(self) -> NodeKeys:
        """The node's crypt4gh key pair: every stored blob's key is sealed to it."""
        folder = self.settings.key_folder
        return node_keys(folder) if self.settings.create_keys else load_node_keys(folder)

    @cached_property
    def pseudonyms(self) -> Pseudonyms:
        return Pseudonyms(self.uow, self.audit, self.keys)

    @cached_property
    def governance_watch(self) -> GovernanceWatch:
        """The per-request check of the governance version (servers only)."""
        return GovernanceWatch(self.engine)

    def open_blob(self, stored: StoredFile) -> BlobFile:
        """A stored file's plaintext, decrypted on read.

        Segments authenticate their own bytes, not their place: a payload cut at a segment boundary
        would still decrypt, so its size is checked against the catalog's.
        """
        blob = self.store.open_blob(stored.sha256, stored.key_header, self.keys)
        if blob.size != stored.size:
            blob.close()
            raise EncryptedFileError(f"stored file {stored.sha256[:12]} is {blob.size} bytes, expected {stored.size}")
        return blob

    def volume_files(self, slide_id: str) -> list[StoredFile]:
        """The stored DICOM files of a slide; SlideNotFound if there is no such slide."""
        return volume_files(self.catalog.stored_files(slide_id), slide_id)

    @contextmanager
    def ingest_lock(self) -> Iterator[None]:
        """One ingest (or erasure) per node at a time, so recovery after a crash cannot race a live
        one: a lock in the database on PostgreSQL (every host of the node), a file lock otherwise."""
        with site_lock(self.engine, INGEST_LOCK, self.settings.home / "ingest.lock"):
            yield

    def recover(self) -> list[str]:
        """Remove what a crashed ingest left behind: the blobs it published that nothing references
        (from the catalog's pending-blob log, so the cost follows the crash, not the store's size),
        its staging folders and unfinished uploads. Callers hold the ingest lock."""
        deleted = self.catalog.settle_pending_blobs(self.store.delete_many)
        self.store.clear_leftovers()
        return deleted

    def sweep_store(self) -> list[str]:
        """Delete every blob of the store that nothing in the catalog references, whatever left it
        (a crash before the pending-blob log existed, a hand-made copy); returns their digests.
        It lists the whole store, so it is an operator's occasional command (`slidebank store
        sweep`), not part of each ingest. Holds the ingest lock: nothing is being published meanwhile."""
        with self.ingest_lock():
            return self.recover() + self.store.collect_garbage(self.catalog.referenced_blobs)

    def close(self) -> None:
        if "governance_watch" in self.__dict__:
            self.governance_watch.close()
        self.engine.dispose()
