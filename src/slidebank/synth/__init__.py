"""Synthetic whole-slide images with real vendor layouts, tissue-like pixels and fake PHI.

Modules: `generator` writes a painted slide from `tissue` (shape, mask, stains, painter, defocus,
on the hashing and waves of `noise`), `pyramid` (levels, tile streaming), `phi` (fake identity,
label and macro photos) and `layout` (vendor TIFF pages); `large` repeats one precompressed tile
for big-file tests; `demo` writes a small collection with a sidecar.  `modalities` (grey,
fluorescence, JPEG 2000, DICOM) stands apart.
"""

from slidebank.synth.generator import write_synthetic_slide
from slidebank.synth.large import write_large_slide_from_tile
from slidebank.synth.layout import SyntheticSlide
from slidebank.synth.phi import default_label_text
from slidebank.synth.tissue import tissue_mask

__all__ = [
    "SyntheticSlide",
    "default_label_text",
    "tissue_mask",
    "write_large_slide_from_tile",
    "write_synthetic_slide",
]
