"""Installed algorithms, found through the `slidebank.algorithms` entry-point group."""

from __future__ import annotations

import warnings
from functools import cache
from importlib.metadata import entry_points

from slidebank.algorithms.base import Algorithm

GROUP = "slidebank.algorithms"


class UnknownAlgorithm(LookupError):
    pass


@cache
def algorithms() -> dict[str, Algorithm]:
    """name -> algorithm, for every installed plug-in (a plug-in that fails to load is skipped)."""
    found: dict[str, Algorithm] = {}
    for entry in entry_points(group=GROUP):
        try:
            algorithm = entry.load()
        except Exception as error:  # noqa: BLE001 - a broken third-party plug-in must not take the others down
            warnings.warn(f"algorithm plug-in {entry.name!r} did not load: {error}", stacklevel=2)
            continue
        found[algorithm.name] = algorithm
    return dict(sorted(found.items()))


def get_algorithm(name: str) -> Algorithm:
    try:
        return algorithms()[name]
    except KeyError:
        raise UnknownAlgorithm(f"no algorithm {name!r}; installed: {', '.join(algorithms()) or 'none'}") from None
