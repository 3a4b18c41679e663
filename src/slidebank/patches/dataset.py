"""Training patches as PyTorch datasets, read through the SDK under the reader's grants.

    from slidebank.client import Client
    from slidebank.patches import PatchDataset, Sampling

    bank = Client(url, token)
    data = PatchDataset(bank, bank.slides(dataset="camelyon"), Sampling(size=224, mpp=0.5, random=500, seed=1),
                        classes=["Tumor", "Stroma"])
    loader = torch.utils.data.DataLoader(data, batch_size=64, num_workers=4, shuffle=True)

The index (which patches, with which labels) is built once, in the constructing process, from the
slides' geometry, their QC tissue masks and their annotations: it is the same for the same
parameters and seed. Pixels are read when a patch is asked for, in whichever process asks: each
DataLoader worker opens its own connection to the node (`ClientSpec`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from slidebank.client import Client, ClientSpec, RemoteSlide
from slidebank.patches.labels import AnnotationLabeler
from slidebank.patches.sampling import Patch, Sampling, SamplingError, SlideGeometry, TissueMask, place_patches

MAX_FEATURES = 50_000  # per slide and request: more and the labels would be built on part of them
TISSUE_HEATMAP = "tissue"
STREAM_BATCH = 32  # patches a stream fetches at once
Transform = Callable[[np.ndarray], Any]


def slide_ids(slides: Iterable[str | dict[str, Any]]) -> list[str]:
    """Slide ids from ids or from summaries (`Client.slides`, `Client.search(...)["items"]`)."""
    return [s if isinstance(s, str) else str(s["slide_id"]) for s in slides]


def tissue_mask(client: Client, slide_id: str) -> TissueMask:
    """The slide's QC tissue mask (the `tissue` heatmap): True where QC found tissue."""
    described = {h["name"]: h for h in client.heatmaps(slide_id)}
    heatmap = described.get(TISSUE_HEATMAP)
    if heatmap is None or not heatmap.get("extent"):
        raise SamplingError(f"{slide_id} has no QC tissue mask: run `slidebank run qc` on it, "
                            "or sample without one (tissue=None)")
    mask = np.asarray(client.heatmap(slide_id, TISSUE_HEATMAP))[..., 3] > 0
    width, height = heatmap["extent"]
    return TissueMask(mask, width / mask.shape[1], height / mask.shape[0])


def build_index(client: Client, slides: Sequence[str], sampling: Sampling, classes: Sequence[str] | None,
                min_overlap: float) -> tuple[list[Patch], list[str | None]]:
    """Every patch of the slides with its annotation label (None: no class covers enough of it)."""
    patches: list[Patch] = []
    labels: list[str | None] = []
    for slide_id in slides:
        slide = client.open(slide_id)
        geometry = SlideGeometry(slide_id, slide.dimensions, slide.level_dimensions, slide.level_downsamples,
                                 slide.mpp[0] if slide.mpp else None)
        mask = tissue_mask(client, slide_id) if sampling.tissue is not None else None
        placed = place_patches(geometry, sampling, mask)
        if classes is not None:
            found = client.annotations(slide_id, classes=list(classes), limit=MAX_FEATURES)
            if found.get("truncated"):
                raise SamplingError(f"{slide_id} has more than {MAX_FEATURES} features of these classes")
            labeler = AnnotationLabeler(found["features"], classes, min_overlap)
            labels += [labeler.label(patch.box()) for patch in placed]
        else:
            labels += [None] * len(placed)
        patches += placed
    return patches, labels


class _Reader:
    """Per process: a client and the slides it has opened (a forked worker connects anew)."""

    def __init__(self, spec: ClientSpec, client: Client | None) -> None:
        self.spec = spec
        self._pid = os.getpid() if client is not None else -1
        self._client = client
        self._slides: dict[str, RemoteSlide] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], None)  # type: ignore[misc]  # unpickled in a worker: connect lazily

    def slide(self, slide_id: str) -> RemoteSlide:
        if self._client is None or self._pid != os.getpid():
            self._client, self._pid, self._slides = self.spec.connect(), os.getpid(), {}
        slide = self._slides.get(slide_id)
        if slide is None:
            slide = self._slides[slide_id] = self._client.open(slide_id)
        return slide

    def pixels(self, patches: Sequence[Patch]) -> list[np.ndarray]:
        """The patches' pixels, fetched together slide by slide."""
        by_slide: dict[str, list[int]] = {}
        for index, patch in enumerate(patches):
            by_slide.setdefault(patch.slide_id, []).append(index)
        images: list[np.ndarray] = [np.empty(0)] * len(patches)
        for slide_id, indices in by_slide.items():
            regions = [((patches[i].x, patches[i].y), patches[i].level, (patches[i].read, patches[i].read)) for i in indices]
            for index, pixels in zip(indices, self.slide(slide_id).read_regions_array(regions), strict=True):
                patch = patches[index]
                if patch.read != patch.size:
                    pixels = np.asarray(Image.fromarray(pixels).resize((patch.size, patch.size), Image.Resampling.BILINEAR))
                images[index] = pixels
        return images


class PatchDataset(Dataset):
    """Patches of slides as (image, target): image a uint8 tensor (3, size, size), or what `transform`
    makes of the (size, size, 3) RGB array; target the index of the patch's class in `classes`, else
    its slide's label from `slide_labels`, else -1. With `classes`, unlabelled patches are left out
    unless `keep_unlabelled` (their target is then -1). `patches` and `labels` tell what each is."""

    def __init__(self, client: Client, slides: Iterable[str | dict[str, Any]], sampling: Sampling, *,
                 classes: Sequence[str] | None = None, min_overlap: float = 0.5, keep_unlabelled: bool = False,
                 slide_labels: dict[str, Any] | None = None, transform: Transform | None = None) -> None:
        self.sampling = sampling
        self.slides = slide_ids(slides)
        self.classes = list(classes) if classes is not None else None
        self.slide_labels = slide_labels
        self.transform = transform
        patches, labels = build_index(client, self.slides, sampling, self.classes, min_overlap)
        keep = [i for i, label in enumerate(labels) if self.classes is None or keep_unlabelled or label is not None]
        self.patches: list[Patch] = [patches[i] for i in keep]
        self.labels: list[str | None] = [labels[i] for i in keep]
        self._reader = _Reader(client.spec(), client)

    def __len__(self) -> int:
        return len(self.patches)

    def target(self, index: int) -> Any:
        label = self.labels[index]
        if self.classes is not None:
            return self.classes.index(label) if label is not None else -1
        if self.slide_labels is not None:
            return self.slide_labels.get(self.patches[index].slide_id, -1)
        return -1

    def image(self, index: int) -> np.ndarray:
        """The patch's RGB pixels, (size, size, 3) uint8: the stored pixels (resized only for `mpp`)."""
        return self._reader.pixels([self.patches[index]])[0]

    def images(self, indices: Sequence[int]) -> list[np.ndarray]:
        """`image` of several patches, their frames fetched together."""
        return self._reader.pixels([self.patches[i] for i in indices])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, Any]]:
        """A batch at once (PyTorch's DataLoader asks this way): its frames in a request or two."""
        return [(self._as_sample(pixels), self.target(i)) for pixels, i in zip(self.images(indices), indices, strict=True)]

    def _as_sample(self, pixels: np.ndarray) -> Any:
        if self.transform is not None:
            return self.transform(pixels)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class PatchStream(IterableDataset):
    """A PatchDataset read as a stream: each DataLoader worker takes its share (every n-th patch),
    in an order shuffled per `epoch` with the sampling's seed, or slide by slide (`shuffle=False`,
    what export and inference want: neighbouring patches share stored frames)."""

    def __init__(self, patches: PatchDataset, *, shuffle: bool = True, epoch: int = 0) -> None:
        self.patches = patches
        self.shuffle = shuffle
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.patches)

    def order(self) -> list[int]:
        indices = list(range(len(self.patches)))
        if self.shuffle:
            np.random.default_rng([self.patches.sampling.seed, self.epoch]).shuffle(indices)
        return indices

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        worker = get_worker_info()
        share = self.order()
        if worker is not None:
            share = share[worker.id :: worker.num_workers]
        for start in range(0, len(share), STREAM_BATCH):  # fetched together, yielded one by one
            yield from self.patches.__getitems__(share[start:start + STREAM_BATCH])
