"""The package graph: layers point one way, there are no cycles, and only front ends and runners
open the node (the composition root). Read from the source with `ast`, so it fails on the commit
that adds an upward import, whether at module level or inside a function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_database  # opens no node's catalog: the PostgreSQL pass leaves it out

SOURCE = Path(__file__).resolve().parents[1] / "src" / "slidebank"

# Top to bottom. A package may import only packages of layers below its own.
LAYERS: list[set[str]] = [
    {"cli"},  # the command line (it runs exports through the SDK)
    {"federated"},  # federated training (Flower): nodes train on their own patches through the SDK
    {"patches"},  # training data: sampling, labels, PyTorch datasets, export
    {"client"},  # the SDK: over HTTP, or on a local node through the API app
    {"api"},  # the HTTP front end
    {"web"},  # pages the API serves
    {"bundles"},  # BIGPICTURE submission bundles: export, and import through the ingest pipeline
    {"ingest", "processing"},  # runners: batch ingest and job workers open the node themselves
    {"node"},  # the composition root
    {"erasure", "dicomweb"},  # use cases spanning several services
    {"tiles", "algorithms"},
    {"slides", "annotations", "jobs"},
    {"access", "catalog"},  # domain services
    {"audit", "qc", "synth", "storage"},
    {"db"},  # engines, tables, migrations, the unit of work
]
MAY_OPEN_THE_NODE = {"client", "cli", "api", "ingest", "processing", "bundles"}


def package_imports() -> dict[str, set[tuple[str, str]]]:
    """package -> {(imported package, importing module)} for every import of another package."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE)
        if len(relative.parts) < 2:
            continue
        package = relative.parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "slidebank" and len(parts) > 1 and parts[1] != package:
                    edges[package].add((parts[1], str(relative)))
    return edges


def layer_of(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"package {package!r} is in no layer: add it to LAYERS in {__file__}")


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SOURCE.iterdir() if (p / "__init__.py").exists()}
    for package in packages:
        layer_of(package)


def test_imports_only_point_down() -> None:
    upward = [
        f"{module} imports slidebank.{target} ({source_package} is not above {target})"
        for source_package, targets in package_imports().items()
        for target, module in targets
        if layer_of(target) <= layer_of(source_package)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_package_cycles() -> None:
    graph = {package: {target for target, _ in targets} for package, targets in package_imports().items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(package: str) -> None:
        if package in visiting:
            cycle = visiting[visiting.index(package):] + [package]
            raise AssertionError("package cycle: " + " -> ".join(cycle))
        if package in done:
            return
        visiting.append(package)
        for target in sorted(graph.get(package, ())):
            visit(target)
        visiting.pop()
        done.add(package)

    for package in sorted(graph):
        visit(package)


def test_only_front_ends_and_runners_open_the_node() -> None:
    openers = {package for package, targets in package_imports().items() if any(t == "node" for t, _ in targets)}
    assert openers <= MAY_OPEN_THE_NODE, f"{sorted(openers - MAY_OPEN_THE_NODE)} import slidebank.node"


def test_the_checks_would_catch_an_upward_import(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The check itself can fail: a db module importing the catalog is reported."""
    fake = tmp_path / "slidebank"
    for package, body in (("db", "from slidebank.catalog import Catalog\n"), ("catalog", "")):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text(body)
    monkeypatch.setattr(__import__(__name__), "SOURCE", fake)
    try:
        test_imports_only_point_down()
    except AssertionError as error:
        assert "db/__init__.py imports slidebank.catalog" in str(error)
    else:
        raise AssertionError("an upward import went unnoticed")
