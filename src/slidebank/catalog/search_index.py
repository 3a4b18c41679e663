"""The search index of one process: compressed bitmaps (Roaring) of the catalog's facet index.

Faceted search over millions of images is set algebra: every facet value is the set of images that
have it, a query is the intersection of the sets it names, and a facet count is the size of an
intersection. SQL answers that by reading every row of the facet each time (linear in the catalog);
Roaring bitmaps answer it in microseconds per value, whatever the size. The database stays the one
source of truth: the index is rebuilt from it when a process starts searching, and on every search
it re-reads just the images the change log (`catalog.changes`) lists since its version, so a
registration, a fact or an erasure shows in the very next search of every process.

Held here: images (id → live or not), per facet the set of each value's images and a display value,
slide-level facts (numbers as an array by image id, words as sets), and the slide ids and aliases in
lower case for text search. No pixel data, no personal data beyond what search shows.
"""

from __future__ import annotations

import array
import heapq
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyroaring import BitMap
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from slidebank.catalog import changes
from slidebank.catalog.query import FactCondition, chunks
from slidebank.db.models import Image, ImageFacet, SlideFact

REBUILD_ABOVE = 50_000  # changed images beyond which rebuilding beats applying the changes
SEPARATOR = "\n"  # never in a slide id or a cleaned alias
FETCH = 100_000


@dataclass
class TextColumn:
    """Lower-cased slide ids and aliases, one string per batch of images, for substring search.

    `str.find` over one joined string runs at memory speed; match positions map back to image ids
    through the start offsets. An image re-read after a change is appended again; its old entry is
    masked by the live-image set and dropped at the next rebuild.
    """

    texts: list[str] = field(default_factory=list)
    starts: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)

    def add(self, rows: Sequence[tuple[int, str]]) -> None:
        if not rows:
            return
        parts = [text.lower().replace(SEPARATOR, " ") for _, text in rows]
        lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
        starts = np.zeros(len(parts), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        self.texts.append(SEPARATOR.join(parts) + SEPARATOR)
        self.starts.append(starts)
        self.ids.append(np.fromiter((i for i, _ in rows), dtype=np.uint32, count=len(rows)))

    def containing(self, needle: str) -> BitMap:
        found = BitMap()
        if not needle or SEPARATOR in needle:
            return found
        for text, starts, ids in zip(self.texts, self.starts, self.ids, strict=True):
            positions = []
            at = text.find(needle)
            while at >= 0:
                positions.append(at)
                at = text.find(needle, text.index(SEPARATOR, at) + 1)  # one hit per entry is enough
            if positions:
                entries = np.searchsorted(starts, np.asarray(positions, dtype=np.int64), side="right") - 1
                found |= bitmap_of(ids[entries])
        return found


def bitmap_of(ids: Sequence[int] | np.ndarray) -> BitMap:
    """A bitmap from many ids at C speed (pyroaring reads a uint32 buffer without a Python loop)."""
    if isinstance(ids, np.ndarray):
        return BitMap(array.array("I", ids.astype(np.uint32, copy=False).tobytes()))
    return BitMap(array.array("I", ids))


class NumericFact:
    """A fact's numbers: an array by image id (NaN: not measured) and the ids binned by value.

    A range condition is the union of the bins wholly inside the range (bitmap operations) plus the
    ids of the one bin the bound falls in, compared exactly: work grows with a bin, not the catalog.
    Bin edges are quantiles taken when the index is built; later values go to the bin they fall in.
    """

    BINS = 256

    def __init__(self) -> None:
        self.values = np.full(0, np.nan)
        self.edges = np.array([-np.inf])
        self.bins: list[BitMap] = [BitMap()]

    def set(self, image_ids: np.ndarray, numbers: np.ndarray) -> None:
        if len(image_ids) == 0:
            return
        needed = int(image_ids.max()) + 1
        if needed > len(self.values):
            grown = np.full(max(needed, 2 * len(self.values)), np.nan)
            grown[: len(self.values)] = self.values
            self.values = grown
        self.forget(image_ids)
        self.values[image_ids] = numbers
        self._place(image_ids)

    def forget(self, image_ids: np.ndarray) -> None:
        image_ids = image_ids[image_ids < len(self.values)]
        self.values[image_ids] = np.nan
        gone = bitmap_of(image_ids)
        for members in self.bins:
            members.difference_update(gone)

    def rebin(self) -> None:
        """Quantile edges over the values held now, and every id placed again."""
        present = np.flatnonzero(~np.isnan(self.values))
        quantiles = np.quantile(self.values[present], np.linspace(0, 1, self.BINS + 1)[1:-1]) if len(present) else []
        self.edges = np.concatenate(([-np.inf], np.unique(quantiles)))
        self.bins = [BitMap() for _ in self.edges]
        self._place(present)

    def _place(self, image_ids: np.ndarray) -> None:
        bins = np.searchsorted(self.edges, self.values[image_ids], side="right") - 1
        order = np.argsort(bins, kind="stable")
        ids, bins = image_ids[order], bins[order]
        bounds = np.flatnonzero(np.diff(bins)) + 1
        for group, which in zip(np.split(ids, bounds), np.split(bins, bounds), strict=True):
            if len(group):
                self.bins[int(which[0])] |= bitmap_of(group)

    def matching(self, op: str, number: float) -> BitMap:
        at = int(np.searchsorted(self.edges, number, side="right")) - 1
        whole = self.bins[:at] if op in ("<", "<=") else self.bins[at + 1 :] if op in (">", ">=") else []
        candidates = np.frombuffer(self.bins[at].to_array(), dtype=np.uint32).astype(np.int64)
        values = self.values[candidates]
        exact = {"<": values < number, "<=": values <= number, "=": values == number, "!=": values == number,
                 ">=": values >= number, ">": values > number}[op]
        found = BitMap.union(bitmap_of(candidates[exact]), *whole)
        if op == "!=":
            return BitMap.union(BitMap(), *self.bins) - found
        return found


class SearchIndex:
    """Bitmaps of the catalog for faceted search; `sync` brings it to the database's version."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.version = -1
        self._clear()

    def _clear(self) -> None:
        self.images = BitMap()
        self.facets: dict[str, dict[str, BitMap]] = defaultdict(dict)
        self.display: dict[str, dict[str, str]] = defaultdict(dict)
        self.numbers: dict[str, NumericFact] = defaultdict(NumericFact)
        self.words: dict[str, dict[str, BitMap]] = defaultdict(dict)
        self.names = TextColumn()

    # --- keeping current ------------------------------------------------------------------------

    def sync(self, session: Session) -> None:
        """Catch up with the catalog as this session sees it. Call with `lock` held. If reading
        fails half-way the index is marked unbuilt, so that the next search rebuilds it."""
        state = changes.current(session)
        if state.version == self.version:
            return
        try:
            if self.version < 0 or self.version < state.rebuild_below:
                self.rebuild(session, state.version)
                return
            changed = changes.changed_since(session, self.version)
            if len(changed) > REBUILD_ABOVE:
                self.rebuild(session, state.version)
                return
            self._reread(session, changed)
            self.version = state.version
        except BaseException:
            self.version = -1
            raise

    def rebuild(self, session: Session, version: int) -> None:
        self._clear()
        self._load(session, None)
        self.version = version

    def _reread(self, session: Session, image_ids: Sequence[int]) -> None:
        if not image_ids:
            return
        gone = bitmap_of(image_ids)
        self.images -= gone
        for values in (*self.facets.values(), *self.words.values()):
            for bitmap in values.values():
                bitmap -= gone
        ids = np.asarray(sorted(gone), dtype=np.int64)
        for fact in self.numbers.values():
            fact.forget(ids)
        for chunk in chunks(list(gone)):
            self._load(session, chunk)

    def _load(self, session: Session, image_ids: Sequence[int] | None) -> None:
        """Read images, facets and facts (all of them, or these) into the bitmaps."""
        connection = session.connection()

        def rows(statement: Any) -> Iterable[Sequence[Any]]:
            if image_ids is not None:
                yield from connection.execute(statement)
                return
            result = connection.execution_options(stream_results=True, yield_per=FETCH).execute(statement)
            for batch in result.partitions(FETCH):
                yield from batch

        mine = (lambda column: column.in_(image_ids)) if image_ids is not None else (lambda column: column.is_not(None))
        names: list[tuple[int, str]] = []
        for image_id, slide_id, alias in rows(select(Image.id, Image.slide_id, Image.alias).where(mine(Image.id))
                                               .order_by(Image.id)):
            self.images.add(image_id)
            names.append((image_id, slide_id if alias == slide_id else f"{slide_id} {alias}"))
            if len(names) >= FETCH:
                self.names.add(names)
                names = []
        self.names.add(names)

        if image_ids is None:
            self._load_all_facets(connection)
        else:
            members: dict[tuple[str, str], list[int]] = defaultdict(list)
            for facet, key, image_id, value in rows(
                select(ImageFacet.facet, ImageFacet.key, ImageFacet.image_id, ImageFacet.value)
                .where(mine(ImageFacet.image_id))
            ):
                members[(facet, key)].append(image_id)
                shown = self.display[facet].get(key)
                if shown is None or value < shown:
                    self.display[facet][key] = value
            for (facet, key), ids in members.items():
                bitmap = self.facets[facet].get(key)
                if bitmap is None:
                    self.facets[facet][key] = bitmap_of(ids)
                else:
                    bitmap |= bitmap_of(ids)

        numbers: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        words: dict[tuple[str, str], list[int]] = defaultdict(list)
        for name, image_id, number, text in rows(
            select(SlideFact.name, SlideFact.image_id, SlideFact.value, SlideFact.text).where(mine(SlideFact.image_id))
        ):
            if number is not None:
                numbers[name][0].append(image_id)
                numbers[name][1].append(float(number))
            elif text is not None:
                words[(name, text)].append(image_id)
        for name, (ids, values) in numbers.items():
            self.numbers[name].set(np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float64))
            if image_ids is None:
                self.numbers[name].rebin()
        for (name, text), ids in words.items():
            bitmap = self.words[name].get(text)
            if bitmap is None:
                self.words[name][text] = bitmap_of(ids)
            else:
                bitmap |= bitmap_of(ids)

    def _load_all_facets(self, connection: Any) -> None:
        """Every facet value's images, streamed in index order (facet, key, image id) so that one
        value's ids are in memory at a time, as 4-byte integers."""
        for facet, key, value in connection.execute(
            select(ImageFacet.facet, ImageFacet.key, func.min(ImageFacet.value)).group_by(ImageFacet.facet, ImageFacet.key)
        ):
            self.display[facet][key] = value
        current: tuple[str, str] | None = None
        ids = array.array("I")
        result = connection.execution_options(stream_results=True, yield_per=FETCH).execute(
            select(ImageFacet.facet, ImageFacet.key, ImageFacet.image_id)
            .order_by(ImageFacet.facet, ImageFacet.key, ImageFacet.image_id))
        for batch in result.partitions(FETCH):
            for facet, key, image_id in batch:
                if (facet, key) != current:
                    if current is not None:
                        self.facets[current[0]][current[1]] = BitMap(ids)
                    current, ids = (facet, key), array.array("I")
                ids.append(image_id)
        if current is not None:
            self.facets[current[0]][current[1]] = BitMap(ids)

    # --- reading (with `lock` held) ---------------------------------------------------------------

    def facet_union(self, facet: str, keys: Iterable[str]) -> BitMap:
        values = self.facets.get(facet, {})
        return BitMap.union(BitMap(), *(values[k] for k in keys if k in values))

    def condition(self, condition: FactCondition) -> BitMap:
        if isinstance(condition.value, str):
            values = self.words.get(condition.name, {})
            if condition.op == "=":
                return BitMap(values.get(condition.value, BitMap()))
            return BitMap.union(BitMap(), *(ids for text, ids in values.items() if text != condition.value))
        fact = self.numbers.get(condition.name)
        return fact.matching(condition.op, condition.value) if fact is not None else BitMap()

    def text(self, needle: str, diagnosis_key: str) -> BitMap:
        """Images whose slide id or alias contains `needle` (lower-cased), or a diagnosis containing the key."""
        found = self.names.containing(needle.lower())
        if diagnosis_key:
            found |= self.facet_union("diagnosis", (k for k in self.facets.get("diagnosis", {}) if diagnosis_key in k))
        return found

    def counts(self, facet: str, within: BitMap | None, limit: int | None = None) -> tuple[list[tuple[str, int]], int]:
        """The (display value, images) pairs of `facet` in `within` (None: all images), most first —
        the first `limit` of them (None: all) — and how many values have any image there."""
        values = self.facets.get(facet, {})
        if within is None:
            found = [(key, len(ids)) for key, ids in values.items()]
        else:
            found = [(key, ids.intersection_cardinality(within)) for key, ids in values.items()]
        shown = self.display.get(facet, {})
        present = [(shown.get(key, key), count) for key, count in found if count]
        if limit is None or limit >= len(present):
            return sorted(present, key=_most_first), len(present)
        return heapq.nsmallest(limit, present, key=_most_first), len(present)


def _most_first(pair: tuple[str, int]) -> tuple[int, str]:
    return -pair[1], pair[0]
