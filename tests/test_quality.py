"""The code holds itself to its own rules: ruff's lint and mypy's type check run with the suite,
and every `noqa` or `type: ignore` that remains says why."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_database  # opens no node's catalog: the PostgreSQL pass leaves it out

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_finds_nothing() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "src", "tests", "bench"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    result = subprocess.run([str(BIN / "mypy"), "--cache-dir", str(REPO / ".mypy_cache")], cwd=REPO,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_suppression_says_why() -> None:
    """`# noqa: CODE - why` / `# noqa: CODE  (why)` and `# type: ignore[code]  (why)` or with a comment."""
    bare = []
    for path in sorted((REPO / "src").rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for marker in re.finditer(r"#\s*(noqa|type:\s*ignore)(\[[^\]]*\]|:\s*[A-Z0-9, ]+)?(.*)$", line):
                reason = marker.group(3).strip(" -#")
                if len(reason) < 4:
                    bare.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not bare, "suppressions without a reason:\n" + "\n".join(bare)
