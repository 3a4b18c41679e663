"""Slidebank as a DICOMweb client of a hospital archive (PACS, VNA): pull slides in, push them out.

`fetch` retrieves a study, a series, or what a QIDO-RS query names (`dicomweb+http://host/root/studies/
UID`, `…/studies/UID/series/UID`, `…/studies?PatientID=…`) into a local folder, one sub-folder per
series, streaming each answer part by part to disk; `slidebank ingest` then stores it through the
normal pipeline, as any folder of DICOM files. `push` sends a stored slide's canonical (de-identified)
instances to an archive's STOW-RS, decrypted as they stream. Searches use dicomweb-client; the bulk
transfers use httpx directly, for time limits and streaming. Credentials: `user:password@` in the URL
(HTTP basic) or a bearer token in SLIDEBANK_DICOMWEB_TOKEN.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
from dicomweb_client.api import DICOMwebClient

from slidebank.access.principal import Principal
from slidebank.ingest.multipart import PartsToFiles, boundary_of
from slidebank.node import Node

SCHEME = "dicomweb+"
INSTANCES = 'multipart/related; type="application/dicom"'
TIMEOUT = httpx.Timeout(60.0, read=600.0)
_RESOURCE = re.compile(r"^(?P<root>.*?)/studies/(?P<study>[0-9.]{1,64})(?:/series/(?P<series>[0-9.]{1,64}))?/?$")
_QUERY = re.compile(r"^(?P<root>.*?)/(?P<level>studies|series|instances)/?$")


class ArchiveError(RuntimeError):
    """The archive refused, could not be reached, or the URL names nothing it can retrieve."""


@dataclass(frozen=True)
class Archive:
    """A DICOMweb service root and how to authenticate to it."""

    root: str
    auth: tuple[str, str] | None = None
    token: str | None = None

    @classmethod
    def from_url(cls, url: str) -> tuple[Archive, str, dict[str, str]]:
        """(archive, path after the root, query) of a `dicomweb+http(s)://…` or plain http(s) URL."""
        plain = url[len(SCHEME):] if url.startswith(SCHEME) else url
        parts = urlsplit(plain)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ArchiveError(f"not a DICOMweb URL: {url!r} (dicomweb+http://host/root/studies/UID…)")
        auth = (parts.username or "", parts.password or "") if parts.username else None
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        path = parts.path.rstrip("/")
        for pattern in (_RESOURCE, _QUERY):
            found = pattern.match(path)
            if found:
                root = urlunsplit((parts.scheme, netloc, found["root"], "", ""))
                archive = cls(root, auth, os.environ.get("SLIDEBANK_DICOMWEB_TOKEN"))
                return archive, path[len(found["root"]):], dict(parse_qsl(parts.query))
        root = urlunsplit((parts.scheme, netloc, path, "", ""))  # a service root alone (push)
        return cls(root, auth, os.environ.get("SLIDEBANK_DICOMWEB_TOKEN")), "", {}

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def http(self) -> httpx.Client:
        return httpx.Client(auth=self.auth, headers=self.headers(), timeout=TIMEOUT, follow_redirects=False)

    def search(self) -> DICOMwebClient:
        import requests

        session = requests.Session()
        session.headers.update(self.headers())
        if self.auth:
            session.auth = self.auth
        return DICOMwebClient(self.root, session=session)


def is_archive_url(text: str) -> bool:
    return text.startswith((SCHEME + "http://", SCHEME + "https://"))


def fetch(url: str, folder: Path) -> list[Path]:
    """Retrieve what `url` names into `folder` (one sub-folder per series); the series folders."""
    archive, path, query = Archive.from_url(url)
    resource = _RESOURCE.match(path)
    if resource:
        targets = [(resource["study"], resource["series"])]
    else:
        targets = _search(archive, path.strip("/"), query)
    folders = []
    with archive.http() as client:
        for study, series in dict.fromkeys(targets):
            target = folder / f"retrieved-{secrets.token_hex(4)}"
            target.mkdir(parents=True)
            _retrieve(client, archive.root + f"/studies/{study}" + (f"/series/{series}" if series else ""), target)
            folders.append(target)
    return folders


def _search(archive: Archive, level: str, query: dict[str, str]) -> list[tuple[str, str | None]]:
    """The (study, series) a QIDO-RS query names; studies are retrieved whole."""
    client = archive.search()
    try:
        if level == "studies":
            found = client.search_for_studies(search_filters=query)
            return [(_value(r, "0020000D"), None) for r in found]
        search = client.search_for_series if level == "series" else client.search_for_instances
        found = search(search_filters=query)
        return [(_value(r, "0020000D"), _value(r, "0020000E")) for r in found]
    except Exception as error:  # noqa: BLE001 - requests' errors, the archive's answers
        raise ArchiveError(f"the archive's search failed: {error}") from error


def _value(result: dict, tag: str) -> str:
    try:
        return str(result[tag]["Value"][0])
    except (KeyError, IndexError) as error:
        raise ArchiveError(f"the archive's answer lacks {tag}") from error


def _retrieve(client: httpx.Client, url: str, folder: Path) -> list[Path]:
    """A study or series as stored at the archive (`transfer-syntax=*`; else its default), part by part."""
    for accept in (f"{INSTANCES}; transfer-syntax=*", INSTANCES):
        try:
            with client.stream("GET", url, headers={"Accept": accept}) as answer:
                if answer.status_code in (400, 406) and accept != INSTANCES:
                    continue  # an archive that does not know `*`: ask for its default
                if answer.status_code != 200:
                    raise ArchiveError(f"GET {url}: {answer.status_code} {answer.read()[:200]!r}")
                writer = PartsToFiles(boundary_of(answer.headers.get("content-type", "")), folder)
                for chunk in answer.iter_bytes(1024 * 1024):
                    writer.feed(chunk)
                return writer.close()
        except httpx.HTTPError as error:
            raise ArchiveError(f"GET {url}: {error}") from error
    raise AssertionError("unreachable")


def push(node: Node, slide_ids: list[str], url: str, actor: Principal) -> dict[str, int]:
    """STOW-RS each slide's canonical instances to the archive; instances sent per slide. Audited per
    slide (`slide.push`, with where to) once the archive has accepted it."""
    from slidebank.slides.stored import volume_files

    archive, _, _ = Archive.from_url(url)
    sent: dict[str, int] = {}
    with archive.http() as client:
        for slide_id in slide_ids:
            dataset = node.catalog.slide_dataset(slide_id)
            if dataset is None or not actor.can_read(dataset):
                raise ArchiveError(f"no slide {slide_id!r}")
            files = volume_files(node.catalog.stored_files(slide_id), slide_id)
            boundary = secrets.token_hex(16)
            answer = client.post(archive.root + "/studies", content=_stow_body(node, files, boundary),
                                 headers={"Content-Type": f"{INSTANCES}; boundary={boundary}",
                                          "Accept": "application/dicom+json"})
            if answer.status_code not in (200, 202):
                raise ArchiveError(f"the archive refused {slide_id}: {answer.status_code} {answer.text[:300]}")
            failed = answer.json().get("00081198", {}).get("Value", []) if answer.content else []
            if failed:
                raise ArchiveError(f"the archive refused {len(failed)} instance(s) of {slide_id}")
            node.audit.record(actor.name, "slide.push", dataset=dataset, slide_id=slide_id,
                              grant=actor.grants.get(dataset), detail={"to": archive.root, "instances": len(files)})
            sent[slide_id] = len(files)
    return sent


def _stow_body(node: Node, files: list, boundary: str) -> Iterator[bytes]:
    for stored in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {stored.size}\r\n\r\n".encode()
        blob = node.open_blob(stored)
        try:
            with blob.stream() as handle:
                while chunk := handle.read(1024 * 1024):
                    yield chunk
        finally:
            blob.close()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
