"""The node's model registry: the only models an algorithm may load.

A caller names a model; it never hands the server a path (a path would let anyone probe which
files exist on the server and make it parse any file it can read). Operators install models with
`slidebank models add NAME FILE`: the file is checked as ONNX, copied into the node under its
SHA-256, and listed by name; algorithms get its bytes through their task context, digest verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slidebank.access.principal import Principal
from slidebank.audit import AuditLog

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_MODEL_BYTES = 2 * 2**30
INDEX = "index.json"


class ModelError(ValueError):
    """No such model, a bad name, or a file that is not a usable ONNX model."""


class ModelRegistry:
    def __init__(self, folder: Path, audit: AuditLog | None = None) -> None:
        self.folder = folder
        self._audit = audit

    def install(self, name: str, source: Path, actor: Principal) -> dict[str, Any]:
        """Check `source` is an ONNX model and install it as `name` (replacing an older one); only
        the node's operator or an administrator installs models."""
        if not actor.is_administrator:
            raise ModelError("only an administrator installs models")
        import onnx

        if not MODEL_NAME.fullmatch(name):
            raise ModelError("a model name is 1-64 lower-case letters, digits, '.', '_' or '-'")
        size = source.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelError(f"{source.name} is {size} bytes; models are at most {MAX_MODEL_BYTES}")
        data = source.read_bytes()
        try:
            onnx.checker.check_model(onnx.load_from_string(data))
        except Exception as error:  # noqa: BLE001 - onnx raises several kinds on hostile files
            raise ModelError(f"{source.name} is not a valid ONNX model ({type(error).__name__})") from None
        digest = hashlib.sha256(data).hexdigest()
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{digest}.onnx"
        if not target.exists():
            _write_atomically(target, data)
        index = self._index()
        index[name] = {"sha256": digest, "size": size, "installed_at": datetime.now(UTC).isoformat()}
        _write_atomically(self.folder / INDEX, json.dumps(index, indent=2).encode())
        if self._audit is not None:
            self._audit.record(actor.name, "model.install", detail={"model": name, "sha256": digest})
        return {"name": name, **index[name]}

    def list(self) -> list[dict[str, Any]]:
        return [{"name": name, **entry} for name, entry in sorted(self._index().items())]

    def read(self, name: str) -> bytes:
        """The bytes of the model installed as `name`, verified against the digest it was installed with."""
        entry = self._index().get(name) if MODEL_NAME.fullmatch(name) else None
        if entry is None:
            raise ModelError(f"no model named {name!r} is installed on this node (see `slidebank models list`)")
        data = (self.folder / f"{entry['sha256']}.onnx").read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ModelError(f"the installed model {name!r} was changed on disk; install it again")
        return data

    def _index(self) -> dict[str, dict[str, Any]]:
        path = self.folder / INDEX
        return json.loads(path.read_text()) if path.is_file() else {}


def _write_atomically(target: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".install-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
