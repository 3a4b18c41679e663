"""What an algorithm is to Slidebank: a named, versioned plug-in with typed parameters that reads a
stored slide through `SlideReader` and returns a `SlideResult` (slide-level values, annotations,
heatmaps). Plug-ins register under the `slidebank.algorithms` entry-point group:

    [project.entry-points."slidebank.algorithms"]
    my-algorithm = "my_package.module:ALGORITHM"

The job runner does everything else: grants, audit, Dask, retries, limits, storing results with
their provenance. An algorithm never sees a file path or a key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from slidebank.algorithms.reader import SlideReader

TRUE, FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


class ParameterError(ValueError):
    """A parameter the algorithm does not have, or a value of the wrong type or range."""


@dataclass(frozen=True)
class Parameter:
    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None  # a text parameter must match it (e.g. a name, never a path)

    def parse(self, value: Any) -> Any:
        """A value of this parameter's type, from a typed value or a command-line string."""
        try:
            if self.type is bool and not isinstance(value, bool):
                if str(value).lower() not in TRUE | FALSE:
                    raise ValueError(value)
                parsed: Any = str(value).lower() in TRUE
            elif self.type is bool:
                parsed = value
            elif self.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            else:
                parsed = self.type(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{self.name} is a {self.type.__name__}, not {value!r}") from None
        if isinstance(parsed, str) and self.pattern is not None and parsed and not re.fullmatch(self.pattern, parsed):
            raise ParameterError(f"{self.name} must match {self.pattern}")
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            if not np.isfinite(parsed):
                raise ParameterError(f"{self.name} must be finite")
            if self.minimum is not None and parsed < self.minimum:
                raise ParameterError(f"{self.name} must be at least {self.minimum}")
            if self.maximum is not None and parsed > self.maximum:
                raise ParameterError(f"{self.name} must be at most {self.maximum}")
        return parsed

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type.__name__, "default": self.default, "help": self.help,
                "minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True)
class Reads:
    """What an algorithm reads: 'overview' (the whole slide at a coarse µm/px) and/or 'tissue tiles'."""

    what: str
    mpp: float | None = None  # µm per pixel it works at
    tile_size: int | None = None


@dataclass
class HeatmapRaster:
    """Scores in [0, 1] on a grid from the slide's top-left corner; NaN where nothing was measured.

    `extent` is the level-0 width and height the grid covers: a grid of whole tiles reaches past
    the slide's right and bottom edges, and the viewer must stretch it over exactly this much.
    """

    values: np.ndarray
    extent: tuple[float, float]
    colormap: str = "inferno"
    legend: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlideResult:
    values: dict[str, float | str] = field(default_factory=dict)  # facts, e.g. "qc.blur_fraction"
    features: list[dict[str, Any]] = field(default_factory=list)  # GeoJSON, level-0 pixels
    heatmaps: dict[str, HeatmapRaster] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # why a slide fails, for the data steward
    log: list[str] = field(default_factory=list)


class TaskContext(Protocol):
    """What the runner lends an algorithm while it runs on one slide."""

    def check(self) -> None:
        """Raise if the job was cancelled or went over its time or memory limit (call it per tile)."""

    def log(self, message: str) -> None: ...

    def model(self, name: str) -> bytes:
        """The bytes of a model installed on the node (`slidebank models add`); ModelError if none."""
        ...


class Algorithm(Protocol):
    name: str
    version: str
    description: str
    parameters: tuple[Parameter, ...]
    reads: Reads
    writes: tuple[str, ...]

    def run(self, slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult: ...


def parse_parameters(algorithm: Algorithm, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the given values, each checked against its declared type and range."""
    known = {p.name: p for p in algorithm.parameters}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ParameterError(
            f"{algorithm.name} has no parameter {', '.join(unknown)}; it has {', '.join(sorted(known)) or 'none'}"
        )
    return {name: (p.parse(given[name]) if name in given else p.default) for name, p in known.items()}


def describe(algorithm: Algorithm) -> dict[str, Any]:
    return {
        "name": algorithm.name, "version": algorithm.version, "description": algorithm.description,
        "parameters": [p.describe() for p in algorithm.parameters],
        "reads": {"what": algorithm.reads.what, "mpp": algorithm.reads.mpp, "tile_size": algorithm.reads.tile_size},
        "writes": list(algorithm.writes),
    }


@dataclass(frozen=True)
class SimpleAlgorithm:
    """An algorithm made of metadata and one function: how the built-ins are written."""

    name: str
    version: str
    description: str
    parameters: tuple[Parameter, ...]
    reads: Reads
    writes: tuple[str, ...]
    function: Callable[[SlideReader, Mapping[str, Any], TaskContext], SlideResult]

    def run(self, slide: SlideReader, params: Mapping[str, Any], context: TaskContext) -> SlideResult:
        return self.function(slide, params, context)
